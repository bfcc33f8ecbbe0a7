"""The LoRAs loaded onto a model: checked before anything changes, stacked in order, with runtime
strengths, per-step enable states (§3.8) and an exact unload."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from torch import Tensor, nn
from torch.nn.utils import parametrize

from .adapter import Adapter, attach, detach_all, materialize
from .files import ADAPTER_TYPES, LoraError, LoraFile, listing, read_lora_file, read_svd_bases, svd_bases_from_weight
from .patterns import layer_filter_patterns

log = logging.getLogger(__name__)


class LoraIndexError(LoraError, IndexError):
    """A lora_index that names no loaded LoRA (an IndexError too, as it always was)."""

DIT_NAMESPACE = "model."  # the file namespace of the DiT: the only adapters a request switches per step
State = tuple[bool, ...]


def _distinct(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """Each module once, in first-seen order (a module may carry several adapters)."""
    return list({id(module): module for module in modules}.values())


class LoraSet:
    """The LoRAs loaded onto a model, in stacking order (LoRA index = position in `files`).

    `targets` maps each file-key namespace to the module it addresses, e.g.
    `{"model.": dit, "": conditioner}`. Every `nn.Linear` / `nn.Conv1d` in them can be targeted,
    except modules under `skip_prefixes` (names in the file namespace, e.g. the T5 text encoder
    inside the conditioner, which the reference hides from LoRA).
    """

    def __init__(self, targets: Mapping[str, nn.Module], skip_prefixes: Sequence[str] = ()):
        self.targets = dict(targets)
        self.skip_prefixes = tuple(p.rstrip(".") for p in skip_prefixes)
        self.files: list[LoraFile] = []
        self._adapters: list[Adapter] = []
        self._owners: list[nn.Module] = []  # the module each adapter updates

    def __len__(self) -> int:
        return len(self.files)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.files]

    @property
    def strengths(self) -> list[float]:
        """Each LoRA's strength: that of its adapters, which `set_lora_strength` keeps equal."""
        first: dict[int, float] = {}
        for adapter in self._adapters:
            first.setdefault(adapter.lora_index, adapter.strength)
        return [first.get(i, 1.0) for i in range(len(self.files))]

    def _find(self, name: str, index: dict[str, dict[str, nn.Module]]) -> tuple[nn.Module | None, str, str]:
        """(module, namespace, problem) for a module name of the file namespace."""
        namespaces = [ns for ns in self.targets if name.startswith(ns)]
        if not namespaces:
            return None, "", f"matches none of the namespaces {sorted(self.targets)}"
        namespace = max(namespaces, key=len)
        if any(name == p or name.startswith(p + ".") for p in self.skip_prefixes):
            return None, namespace, "is inside a module that is never a LoRA target (e.g. the T5 text encoder)"
        module = index[namespace].get(name[len(namespace) :])
        if module is None:
            return None, namespace, "names no module of this model"
        if not isinstance(module, (nn.Linear, nn.Conv1d)):
            return None, namespace, f"is a {type(module).__name__}, not a Linear or Conv1d"
        if parametrize.is_parametrized(module) or not isinstance(module._parameters.get("weight"), nn.Parameter):
            return None, namespace, "has no plain 'weight' parameter"
        return module, namespace, ""

    def load(self, files: Sequence[LoraFile | str | Path], svd_bases_path: str | Path | None = None) -> list[int]:
        """Checks every file against the model, then stacks them after the LoRAs already loaded.

        Nothing is changed unless every tensor of every file fits a target module. Returns the new
        LoRA indices (enabled, strength 1). `svd_bases_path` (the model config's) is read only if an
        -XS file is given.
        """
        files = [f if isinstance(f, LoraFile) else read_lora_file(f) for f in files]
        index = {ns: dict(root.named_modules()) for ns, root in self.targets.items()}
        svd_bases = read_svd_bases(svd_bases_path) if svd_bases_path and any(f.is_xs for f in files) else {}

        plans, problems = [], []
        for file in files:
            plan, lines = [], []
            for name, params in file.modules.items():
                module, namespace, why = self._find(name, index)
                keys = ", ".join(f"{name}.parametrizations.weight.0.{p}" for p in params)
                if module is None:
                    lines.append(f"{keys}: '{name}' {why}")
                    continue
                lines += self._shape_problems(file, name, module, params, svd_bases.get(name))
                plan.append((name, namespace, module))
            if lines:
                problems.append(f"LoRA file {file.path} does not fit this model:\n{listing(lines)}")
            plans.append(plan)
        if problems:
            raise LoraError("\n".join(problems) + "\nNothing was loaded; the model is unchanged.")

        new_adapters = []
        full_svd: dict[int, tuple[Tensor, Tensor]] = {}
        for offset, (file, plan) in enumerate(zip(files, plans, strict=True)):
            for name, namespace, module in plan:
                tensors = dict(file.modules[name])
                if file.is_xs:
                    tensors["U"], tensors["V"] = self._xs_bases(file.rank, module, svd_bases.get(name), full_svd)
                new_adapters.append((module, Adapter(file, len(self.files) + offset, name, namespace, tensors)))
        if full_svd:
            log.warning(
                "LoRA-XS bases recomputed from the current weights for %d layers (no svd_bases_path entry): "
                "a LoRA-XS trained on a -base model gets other bases than in training",
                len(full_svd),
            )
        self._warn_reference_differences(files, plans)

        first = len(self.files)
        self.files += files
        for module, adapter in new_adapters:
            attach(module, adapter)
            self._adapters.append(adapter)
            self._owners.append(module)
        for module in _distinct(module for module, _ in new_adapters):
            materialize(module)
        return list(range(first, len(self.files)))

    @staticmethod
    def _shape_problems(file: LoraFile, name: str, module: nn.Module, params: dict, bases: dict | None) -> list[str]:
        weight = module._parameters["weight"]
        fan_out, fan_in = weight.shape[0], weight[0].numel()
        r = file.rank
        expected = {"lora_A": (r, fan_in), "lora_B": (fan_out, r), "M_xs": (r, r), "magnitude_r": (fan_out,)}
        expected["magnitude_c"] = (fan_in,)
        expected["magnitude"] = (fan_out,) if ADAPTER_TYPES[file.adapter_type][1] == "rows" else (fan_in,)
        lines = [
            f"{name}.parametrizations.weight.0.{p}: shape {tuple(t.shape)}, but the weight "
            f"{tuple(weight.shape)} needs {expected[p]}"
            for p, t in params.items()
            if tuple(t.shape) != expected[p]
        ]
        if file.is_xs:
            if bases is not None:
                u, v = bases["U"], bases["V"]
                fits = u.dim() == v.dim() == 2 and u.shape[0] == fan_out and v.shape[0] == fan_in
                if not fits or min(u.shape[1], v.shape[1]) < r:
                    lines.append(f"{name}: SVD bases U {tuple(u.shape)} / V {tuple(v.shape)} do not fit rank {r}")
            elif r > min(fan_out, fan_in):
                lines.append(f"{name}: rank {r} exceeds the weight's rank bound {min(fan_out, fan_in)}")
        return lines

    @staticmethod
    def _xs_bases(rank: int, module: nn.Module, given: dict | None, full_svd: dict) -> tuple[Tensor, Tensor]:
        if given is not None:
            return given["U"][:, :rank].contiguous(), given["V"][:, :rank].contiguous()
        if id(module) not in full_svd:  # computed from the current (post-trained) base weight
            full_svd[id(module)] = svd_bases_from_weight(module._parameters["weight"])
        u, v = full_svd[id(module)]
        return u[:, :rank].contiguous(), v[:, :rank].contiguous()

    def _warn_reference_differences(self, files: list[LoraFile], plans: list[list]) -> None:
        """We use every tensor; say where the reference would silently ignore some (spec §6 "Quirk")."""
        earlier = list(self.files)
        notes = []
        for file, plan in zip(files, plans, strict=True):
            index = len(earlier)
            own = sum(not file.selects(name) for name, _, _ in plan)
            stacked = sum(file.selects(name) and not all(f.selects(name) for f in earlier) for name, _, _ in plan)
            if own:
                notes.append(f"{file.path} (LoRA {index}): {own} modules outside its own include/exclude filter")
            if stacked:  # the reference puts these at the wrong list position, so their keys do not load
                notes.append(
                    f"{file.path} (LoRA {index}): {stacked} modules that an earlier LoRA's include filter skips"
                )
            earlier.append(file)
        if notes:
            log.warning(
                "LoRA tensors that the reference implementation silently ignores are applied here, so "
                "results differ from the reference:\n%s",
                listing(notes),
            )

    def _check_index(self, lora_index: int | None) -> None:
        if lora_index is None:
            return
        if isinstance(lora_index, bool) or not isinstance(lora_index, numbers.Integral):
            raise LoraError(f"lora_index={lora_index!r} is invalid; an integer (0 = the first LoRA loaded) or None "
                            "(all of them) is required")
        if not 0 <= lora_index < len(self.files):
            allowed = f"an integer in [0, {len(self.files) - 1}]" if self.files else "nothing: load a LoRA first"
            raise LoraIndexError(f"lora_index {lora_index} out of range: {len(self.files)} LoRA(s) loaded; "
                                 f"allowed: {allowed}")

    def set_lora_strength(self, strength: float, lora_index: int | None = None) -> None:
        """Sets the strength of one LoRA (or all); the next forward uses it. 0 gives the base weights.
        A strength must be a finite real number (NaN or infinity would make every sample NaN)."""
        if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(strength):
            raise LoraError(f"strength={strength!r} is invalid; a finite number is required (1 = as trained, "
                            "0 = off)")
        self._check_index(lora_index)
        stale = []
        for adapter, module in zip(self._adapters, self._owners, strict=True):
            if lora_index is None or adapter.lora_index == lora_index:
                adapter.set_strength(strength)
                if adapter.enabled:
                    stale.append(module)
        for module in _distinct(stale):
            materialize(module)

    # -- per-step enable states (§3.8) ----------------------------------------------------------

    @property
    def state(self) -> State:
        """The enable flag of every adapter, in adapter order (load order, then file order)."""
        return tuple(adapter.enabled for adapter in self._adapters)

    @property
    def all_enabled_state(self) -> State:
        """Every adapter enabled: the state after `load`, and the one to restore after a run."""
        return (True,) * len(self._adapters)

    def step_states(
        self, lora_configs: Sequence[Mapping] | None, sigmas: Sequence[float]
    ) -> tuple[list[int], list[State]]:
        """The enable state of each sampling step, for a request's `lora_configs`: (per step the index
        of its state, the distinct states in order of first use). Computed once, before sampling, so
        that the loop only switches between a few states (`apply_state`).

        LoRA i listed in `lora_configs` is enabled on the DiT iff low <= sigma <= high (`interval`,
        default (0, 1)), and disabled on the DiT layers whose name relative to the DiT contains a
        `layer_filter` part (comma-separated, lower-cased, ranges allowed); a later entry for the same
        LoRA wins. Unlisted LoRAs, and every conditioner adapter, stay enabled.
        """
        configs, n = list(lora_configs or []), len(self.files)
        for k, config in enumerate(configs):
            index = config["lora_index"]
            if not 0 <= index < n:
                raise ValueError(f"lora_configs[{k}].lora_index={index} is out of range: {n} LoRA(s) loaded")
        last = {config["lora_index"]: config for config in configs}  # a later entry for the same LoRA wins
        intervals = {i: tuple(float(x) for x in c.get("interval", (0.0, 1.0))) for i, c in last.items()}
        filters = {i: layer_filter_patterns(c.get("layer_filter", "")) for i, c in last.items()}
        # Per adapter, once: None if no entry switches it (always on), -1 if the layer filter hits it
        # (always off), else the index of the LoRA whose interval decides.
        rules: list[int | None] = []
        for adapter in self._adapters:
            i = adapter.lora_index
            if adapter.namespace != DIT_NAMESPACE or i not in last:
                rules.append(None)
            else:
                name = adapter.module_name[len(DIT_NAMESPACE) :]
                rules.append(-1 if any(p in name for p in filters[i]) else i)
        # A step's state depends only on which intervals hold its sigma: built once per such pattern.
        states: dict[State, int] = {}
        by_pattern: dict[tuple[bool, ...], int] = {}
        steps = []
        for sigma in sigmas:
            sigma = float(sigma)
            pattern = tuple(low <= sigma <= high for low, high in intervals.values())
            if pattern not in by_pattern:
                active = dict(zip(intervals, pattern, strict=True))
                state = tuple(rule is None or (rule >= 0 and active[rule]) for rule in rules)
                by_pattern[pattern] = states.setdefault(state, len(states))
            steps.append(by_pattern[pattern])
        return steps, list(states)

    def apply_state(self, state: Sequence[bool]) -> None:
        """Sets every adapter's enable flag (a state from `step_states`) and re-materializes only the
        modules whose effective weight changes; nothing is done when the state is the current one.

        Contract: a run applies its steps' states, then `apply_state(loras.all_enabled_state)`, also
        when it fails or is cancelled, so that outside a run every LoRA is enabled. The materialized
        weights keep their tensor identity across calls.
        """
        if len(state) != len(self._adapters):
            raise ValueError(f"a LoRA state has {len(self._adapters)} flags, got {len(state)}")
        stale = []
        for adapter, module, enabled in zip(self._adapters, self._owners, state, strict=True):
            if adapter.enabled != bool(enabled):
                adapter.enabled = bool(enabled)
                if adapter.strength != 0.0:  # a LoRA at strength 0 changes nothing either way
                    stale.append(module)
        for module in _distinct(stale):
            materialize(module)

    def unload_loras(self) -> None:
        """Removes every LoRA; the modules are again exactly the base ones (same class, same tensors)."""
        for module in _distinct(self._owners):
            detach_all(module)
        self._adapters.clear()
        self._owners.clear()
        self.files.clear()
