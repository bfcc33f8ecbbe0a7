"""LoRA adapters at inference time (spec §6 and §3.8).

A LoRA file holds low-rank updates for `nn.Linear` / `nn.Conv1d` weights of the DiT and of the
conditioner. We never write into the base weights and we do not use `torch.nn.utils.parametrize`
(it renames `weight` to `parametrizations.weight.original` in the state dict). Instead each targeted
module is given a subclass whose `weight` is a property: it reads the untouched parameter W0 and
returns p_n(...p_1(p_0(W0))) on every access. So:

- `state_dict()` keys and values stay exactly those of the base model while LoRAs are loaded;
- unloading only restores the class, which is bitwise exact;
- a strength change is seen by the next forward, without a reload;
- no second copy of the weights is kept. The effective weight of one module exists only while that
  module runs. Rebuilding it costs about r/tokens of the layer's own matmul. DoRA/BoRA norms, the
  one extra reduction, are cached until a strength or enable flag changes.

File keys are relative to the reference's DiT wrapper (`model.<dit name>...`) and to the
MultiConditioner (`conditioners.<name>...`). The caller maps these namespaces to its own modules:
`LoraSet({"model.": dit, "": conditioner}, skip_prefixes=(...T5 encoder...,))`.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn
from torch.nn.utils import parametrize

log = logging.getLogger(__name__)

DORA_EPS = 1e-12  # added to every DoRA/BoRA norm, as in the reference

# adapter type -> (low-rank core, how magnitudes renormalise the weight)
ADAPTER_TYPES: dict[str, tuple[str, str | None]] = {
    "lora": ("AB", None),
    "dora-rows": ("AB", "rows"),
    "dora-cols": ("AB", "cols"),
    "bora": ("AB", "both"),
    "lora-xs": ("XS", None),
    "dora-rows-xs": ("XS", "rows"),
    "dora-cols-xs": ("XS", "cols"),
    "bora-xs": ("XS", "both"),
}
_CORE_TENSORS = {"AB": ("lora_A", "lora_B"), "XS": ("M_xs",)}
_MAGNITUDE_TENSORS = {None: (), "rows": ("magnitude",), "cols": ("magnitude",), "both": ("magnitude_r", "magnitude_c")}
_KEY = re.compile(r"^(.+)\.parametrizations\.weight\.0\.(lora_A|lora_B|M_xs|magnitude|magnitude_r|magnitude_c)$")
_MAX_LISTED = 12


class LoraError(ValueError):
    """A LoRA file that cannot be read, or that does not fit the model it is loaded onto."""


def _listing(lines: list[str]) -> str:
    shown = [f"  {line}" for line in lines[:_MAX_LISTED]]
    if len(lines) > _MAX_LISTED:
        shown.append(f"  ... and {len(lines) - _MAX_LISTED} more")
    return "\n".join(shown)


# ----------------------------------------------------------------------------------------------
# Reading files


@dataclass
class LoraFile:
    """One LoRA file, read and checked: fp32 tensors grouped by the module they update."""

    path: Path
    config: dict  # the file's `lora_config`, as stored
    adapter_type: str  # resolved: a legacy "dora" becomes "dora-rows" or "dora-cols"
    rank: int
    alpha: float
    modules: dict[str, dict[str, Tensor]]  # module name in the file's namespace -> {param: tensor}

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @property
    def num_tensors(self) -> int:
        return sum(len(params) for params in self.modules.values())

    @property
    def is_xs(self) -> bool:
        return ADAPTER_TYPES[self.adapter_type][0] == "XS"

    def selects(self, module_name: str) -> bool:
        """Whether the file's own include/exclude filter picks this module (the reference's rule)."""
        include, exclude = _as_patterns(self.config.get("include")), _as_patterns(self.config.get("exclude"))
        if include is not None and not matches_any(module_name, include):
            return False
        return not (exclude is not None and matches_any(module_name, exclude))


def read_lora_file(path: str | Path) -> LoraFile:
    """Reads a `.safetensors` (with `lora_config` metadata) or a `.ckpt`/`.pt` LoRA file.

    Tensors are upcast to float32. Checkpoints are read with `torch.load(weights_only=True)` only.
    """
    path = Path(path)
    if not path.is_file():
        raise LoraError(f"LoRA file {path} does not exist")
    if path.suffix == ".safetensors":
        tensors, config = _read_safetensors(path)
    elif path.suffix in (".ckpt", ".pt", ".pth"):
        tensors, config = _read_checkpoint(path)
    else:
        raise LoraError(f"LoRA file {path}: unsupported extension {path.suffix!r} (use .safetensors, .ckpt or .pt)")
    return _parse(path, tensors, config)


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # safetensors raises its own error type for bad headers and truncation
        raise LoraError(f"LoRA file {path} is not a readable safetensors file ({e})") from e
    if "lora_config" not in metadata:
        raise LoraError(
            f"LoRA file {path} has no 'lora_config' metadata, so it is not a Stable Audio LoRA "
            f"(found {len(tensors)} tensors, metadata keys {sorted(metadata)})"
        )
    try:
        config = json.loads(metadata["lora_config"])
    except json.JSONDecodeError as e:
        raise LoraError(f"LoRA file {path}: its 'lora_config' metadata is not valid JSON ({e})") from e
    return tensors, config


def torch_load_weights_only(path: str | Path) -> object:
    """`torch.load` restricted to tensors and plain containers; anything needing code is refused."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e)
        detail = reason[reason.find("WeightsUnpickler error") :].split("\n")[0] if "WeightsUnpickler" in reason else ""
        if "Unsupported global" in reason:
            raise LoraError(
                f"refusing to load {path}: it needs pickled code ({detail}). Only tensors and plain containers "
                "are accepted; convert it to .safetensors with a tool you trust"
            ) from e
        raise LoraError(f"{path} is not a readable torch checkpoint ({detail or reason[:200]})") from e
    except Exception as e:  # corrupt zip, truncated file, ...
        raise LoraError(f"{path} is not a readable torch checkpoint ({str(e).splitlines()[0][:200]})") from e


def _read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict]:
    ckpt = torch_load_weights_only(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise LoraError(f"LoRA checkpoint {path} has no 'state_dict' dict (expected {{'state_dict', 'lora_config'}})")
    if not isinstance(ckpt.get("lora_config"), dict):
        raise LoraError(f"LoRA checkpoint {path} has no 'lora_config' dict, so it is not a Stable Audio LoRA")
    return ckpt["state_dict"], ckpt["lora_config"]


def _parse(path: Path, tensors: Mapping[str, object], config: object) -> LoraFile:
    if not isinstance(config, dict):
        raise LoraError(f"LoRA file {path}: 'lora_config' must be a JSON object, got {type(config).__name__}")
    foreign = [k for k in tensors if not _KEY.match(k)]
    if foreign:
        raise LoraError(
            f"LoRA file {path} holds tensors that are not LoRA parameters "
            f"(expected '<module>.parametrizations.weight.0.<lora_A|lora_B|M_xs|magnitude...>'):\n{_listing(foreign)}"
        )
    if not tensors:
        raise LoraError(f"LoRA file {path} contains no LoRA tensors")
    not_float = [k for k, t in tensors.items() if not (isinstance(t, Tensor) and t.is_floating_point())]
    if not_float:
        raise LoraError(f"LoRA file {path}: these entries are not floating-point tensors:\n{_listing(not_float)}")
    tensors = {k: t.float() for k, t in tensors.items()}  # files store fp16; we compute in fp32

    raw_type = config.get("adapter_type") or "lora"
    adapter_type = _resolve_legacy_dora(raw_type, tensors)
    if adapter_type not in ADAPTER_TYPES:
        raise LoraError(f"LoRA file {path}: unknown adapter_type {raw_type!r} (known: {', '.join(ADAPTER_TYPES)})")
    if adapter_type != raw_type:
        log.info("LoRA file %s: legacy adapter_type %r read as %r", path, raw_type, adapter_type)

    # Old DoRA files stored magnitudes as (1, in) or (out, 1).
    tensors = {k: t.squeeze() if k.endswith(".magnitude") and t.dim() == 2 else t for k, t in tensors.items()}

    modules: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        module_name, param = _KEY.match(key).groups()
        modules.setdefault(module_name, {})[param] = tensor

    core, norm = ADAPTER_TYPES[adapter_type]
    wanted = set(_CORE_TENSORS[core] + _MAGNITUDE_TENSORS[norm])
    wrong = [
        f"{name}: has {sorted(params)}, needs {sorted(wanted)}"
        for name, params in modules.items()
        if set(params) != wanted
    ]
    if wrong:
        raise LoraError(f"LoRA file {path}: tensors do not match adapter_type {adapter_type!r}:\n{_listing(wrong)}")

    rank = config.get("rank")
    rank = _infer_rank(path, tensors) if rank is None else rank
    if not (isinstance(rank, (int, float)) and rank == int(rank) and rank > 0):
        raise LoraError(f"LoRA file {path}: rank must be a positive integer, got {rank!r}")
    rank = int(rank)
    alpha = config.get("alpha")
    alpha = float(rank if alpha is None else alpha)

    bad = []
    for name, params in modules.items():
        expected = {"lora_A": (rank, None), "lora_B": (None, rank), "M_xs": (rank, rank)}
        for param, t in params.items():
            if param in expected:
                ok = t.dim() == 2 and all(e is None or e == s for e, s in zip(expected[param], t.shape, strict=True))
            else:
                ok = t.dim() == 1
            if not ok:
                bad.append(f"{name}.parametrizations.weight.0.{param}: shape {tuple(t.shape)} does not fit rank {rank}")
    if bad:
        raise LoraError(f"LoRA file {path}: mis-shaped tensors:\n{_listing(bad)}")
    return LoraFile(path, config, adapter_type, rank, alpha, modules)


def _resolve_legacy_dora(adapter_type: str, tensors: Mapping[str, Tensor]) -> str:
    """Legacy "dora": the first magnitude's 2-D shape tells the variant, (1, in) cols, (out, 1) rows."""
    if adapter_type != "dora":
        return adapter_type
    first = next((t for k, t in tensors.items() if k.endswith(".magnitude")), None)
    if first is not None and first.dim() == 2 and first.shape[0] == 1:
        return "dora-cols"
    return "dora-rows"


def _infer_rank(path: Path, tensors: Mapping[str, Tensor]) -> int:
    """The reference's rule: the first lora_A (dim 0), lora_B (dim 1) or M_xs (dim 0) in file order."""
    for key, t in tensors.items():
        param = key.rsplit(".", 1)[1]
        if param in ("lora_A", "M_xs", "lora_B") and t.dim() == 2:
            return t.shape[1] if param == "lora_B" else t.shape[0]
    raise LoraError(f"LoRA file {path}: no rank in lora_config and no lora_A/lora_B/M_xs tensor to infer it from")


def read_svd_bases(path: str | Path) -> dict[str, dict[str, Tensor]]:
    """Reads a `svd_bases_path` file for the -XS adapters.

    The file maps checkpoint weight names (`model.model.<dit name>.weight`,
    `conditioner.conditioners.<name>.weight`) to {"U": (out, R), "V": (in, R), ...}. We return the
    bases keyed by module name in the LoRA-file namespace (`model.<dit name>`, `conditioners.<name>`).
    Other keys are ignored, as in the reference.
    """
    raw = torch_load_weights_only(path)
    if not isinstance(raw, dict):
        raise LoraError(f"SVD bases file {path}: expected a dict of {{weight name: {{'U', 'V'}}}}")
    bases = {}
    for key, entry in raw.items():
        head, _, rest = str(key).partition(".")
        if head not in ("model", "conditioner") or not rest.endswith(".weight"):
            continue
        if not (isinstance(entry, dict) and isinstance(entry.get("U"), Tensor) and isinstance(entry.get("V"), Tensor)):
            raise LoraError(f"SVD bases file {path}: entry {key!r} lacks 'U' and 'V' tensors")
        bases[rest[: -len(".weight")]] = {"U": entry["U"].float(), "V": entry["V"].float()}
    return bases


def svd_bases_from_weight(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Full-rank U (out, R) and V (in, R) of W viewed 2-D, as the reference recomputes them.

    The SVD runs on CPU in float32; each U column's largest-magnitude entry is made positive (and the
    matching V column flipped) so that the bases are reproducible.
    """
    w2d = weight.detach().reshape(weight.shape[0], -1).cpu().float()
    u, _, vh = torch.linalg.svd(w2d, full_matrices=False)
    signs = u[u.abs().argmax(dim=0), torch.arange(u.shape[1])].sign()
    signs[signs == 0] = 1
    return u * signs.unsqueeze(0), (vh * signs.unsqueeze(1)).T


# ----------------------------------------------------------------------------------------------
# Layer-name patterns


def expand_ranges(pattern: str) -> list[str]:
    """'layers[0-2]' -> ['layers0', 'layers1', 'layers2'] (literal concatenation; ranges may descend)."""
    parts = re.split(r"\[(\d+)-(\d+)\]", pattern)
    literals, starts, ends = parts[0::3], parts[1::3], parts[2::3]
    pools = []
    for a, b in zip(starts, ends, strict=True):
        a, b = int(a), int(b)
        step = 1 if b >= a else -1
        pools.append([str(n) for n in range(a, b + step, step)])
    expanded = []
    for numbers in product(*pools):
        pieces = [literals[0]]
        for number, literal in zip(numbers, literals[1:], strict=True):
            pieces += [number, literal]
        expanded.append("".join(pieces))
    return expanded


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """True if any (range-expanded, stripped) pattern is a substring of `name`."""
    return any(p in name for pattern in patterns for p in expand_ranges(pattern.strip()))


def _as_patterns(value: object) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _layer_filter_hits(name: str, layer_filter: str) -> bool:
    """The Gradio per-LoRA layer filter: comma-separated, lower-cased substrings (§3.8)."""
    filters = [part.lower().strip() for part in (layer_filter or "").strip().split(",") if len(part)]
    return any(p in name for f in filters for p in expand_ranges(f))


# ----------------------------------------------------------------------------------------------
# One adapter on one weight


class _Adapter:
    """LoRA number `lora_index`'s update of one weight: W -> p(W), computed as the reference does."""

    def __init__(self, file: LoraFile, lora_index: int, module_name: str, namespace: str, tensors: dict):
        self.core, self.norm = ADAPTER_TYPES[file.adapter_type]
        self.scaling = file.scaling
        self.lora_index = lora_index
        self.module_name, self.namespace = module_name, namespace
        self.tensors = dict(tensors)  # fp32; moved to the weight's device on first use
        self.enabled = True
        self.set_strength(1.0)

    def set_strength(self, strength: float) -> None:
        self.strength = float(strength)
        self.strength_t = torch.tensor(self.strength, dtype=torch.float32)  # the reference's fp32 buffer
        self._norm_cache = None

    def _low_rank(self, device: torch.device) -> Tensor:
        if next(iter(self.tensors.values())).device != device:
            self.tensors = {k: v.to(device) for k, v in self.tensors.items()}
        t = self.tensors
        return t["lora_B"] @ t["lora_A"] if self.core == "AB" else t["U"] @ t["M_xs"] @ t["V"].T

    def __call__(self, weight: Tensor, cache_key: tuple | None) -> Tensor:
        if self.strength == 0.0:  # also the reference's DoRA/BoRA short-circuit
            return weight
        delta = self._low_rank(weight.device)
        coef = self.scaling * self.strength_t  # grouped (alpha/r * s) * delta, as in the reference
        if self.norm is None:
            return weight + (coef * delta.view(weight.shape)).to(weight.dtype)
        v = weight.reshape(weight.shape[0], -1).to(delta.dtype) + coef * delta
        return self._renormalize(v, cache_key).view(weight.shape).to(weight.dtype)

    def _renormalize(self, v: Tensor, cache_key: tuple | None) -> Tensor:
        """DoRA / BoRA: divide by the row and/or column norms, scale by the learned magnitudes."""
        t = self.tensors
        hit = cache_key is not None and self._norm_cache is not None and self._norm_cache[0] == cache_key
        cached = self._norm_cache[1] if hit else None
        if self.norm in ("rows", "cols"):
            dim = 1 if self.norm == "rows" else 0
            denominators = cached or (v.norm(dim=dim, keepdim=True) + DORA_EPS,)
            out = v / denominators[0] * t["magnitude"].unsqueeze(dim)
        else:
            row = cached[0] if cached else v.norm(dim=1, keepdim=True) + DORA_EPS
            rows_scaled = t["magnitude_r"].unsqueeze(1) * (v / row)
            col = cached[1] if cached else rows_scaled.norm(dim=0, keepdim=True) + DORA_EPS
            out = rows_scaled / col * t["magnitude_c"].unsqueeze(0)
            denominators = (row, col)
        if cache_key is not None:
            self._norm_cache = (cache_key, denominators)
        return out


def _cache_key(weight: Tensor) -> tuple | None:
    """Identifies the base weight's contents, so cached norms are dropped when it changes."""
    if torch.is_grad_enabled() or weight.is_inference():
        return None  # keep autograd graphs and inference tensors out of the cache
    return (weight.data_ptr(), weight._version, weight.dtype, weight.device, torch.is_inference_mode_enabled())


def _weight_with_loras(module: nn.Module) -> Tensor:
    """The `weight` property of a module carrying LoRAs: the base parameter run through each adapter."""
    weight = module._parameters["weight"]
    key = _cache_key(weight)
    for adapter in module.__dict__["_lora_adapters"]:
        if adapter.enabled:
            weight = adapter(weight, key)
    return weight


_LORA_CLASSES: dict[type, type] = {}


def _lora_class(cls: type) -> type:
    """A subclass of `cls` whose `weight` is computed; `_parameters['weight']` stays the base W0."""
    if cls not in _LORA_CLASSES:
        _LORA_CLASSES[cls] = type(f"LoRA{cls.__name__}", (cls,), {"weight": property(_weight_with_loras)})
    return _LORA_CLASSES[cls]


# ----------------------------------------------------------------------------------------------
# Attaching LoRAs to a model


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
        self.strengths: list[float] = []
        self._adapters: list[_Adapter] = []
        self._modules: dict[int, nn.Module] = {}  # id -> module carrying adapters

    def __len__(self) -> int:
        return len(self.files)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.files]

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
        LoRA indices. `svd_bases_path` (the model config's) is read only if an -XS file is given.
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
                problems.append(f"LoRA file {file.path} does not fit this model:\n{_listing(lines)}")
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
                new_adapters.append((module, _Adapter(file, len(self.files) + offset, name, namespace, tensors)))
        if full_svd:
            log.warning(
                "LoRA-XS bases recomputed from the current weights for %d layers (no svd_bases_path entry): "
                "a LoRA-XS trained on a -base model gets other bases than in training",
                len(full_svd),
            )
        self._warn_reference_differences(files, plans)

        first = len(self.files)
        self.files += files
        self.strengths += [1.0] * len(files)
        for module, adapter in new_adapters:
            if id(module) not in self._modules:
                module.__dict__["_lora_adapters"] = []
                module.__class__ = _lora_class(type(module))
                self._modules[id(module)] = module
            module.__dict__["_lora_adapters"].append(adapter)
            self._adapters.append(adapter)
        self._clear_caches()
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
                _listing(notes),
            )

    def _clear_caches(self) -> None:
        for adapter in self._adapters:
            adapter._norm_cache = None

    def _check_index(self, lora_index: int | None) -> None:
        if lora_index is not None and not 0 <= lora_index < len(self.files):
            raise IndexError(f"lora_index {lora_index} out of range: {len(self.files)} LoRA(s) loaded")

    def set_lora_strength(self, strength: float, lora_index: int | None = None) -> None:
        """Sets the strength of one LoRA (or all); the next forward uses it. 0 gives the base weights."""
        self._check_index(lora_index)
        for i in range(len(self.files)):
            if lora_index is None or i == lora_index:
                self.strengths[i] = float(strength)
        for adapter in self._adapters:
            if lora_index is None or adapter.lora_index == lora_index:
                adapter.set_strength(strength)
        self._clear_caches()

    def update_for_sigma(
        self,
        sigma: float,
        lora_configs: Sequence[Mapping] | None = None,
        interval: tuple[float, float] = (0.0, 1.0),
        layer_filter: str = "",
        namespace: str = "model.",
    ) -> None:
        """§3.8, to be called at every DiT call with sigma = σ of the first batch item.

        Each listed LoRA (all, without `lora_configs`) is enabled on the DiT iff interval[0] ≤ σ ≤
        interval[1]; its DiT layers whose name (relative to the DiT) contains a `layer_filter` entry
        are disabled. Conditioner adapters are never touched, as in the reference.
        """
        if lora_configs is None:
            lora_configs = [
                {"lora_index": i, "interval": interval, "layer_filter": layer_filter} for i in range(len(self))
            ]
        changed = False
        for config in lora_configs:
            index = config["lora_index"]
            self._check_index(index)
            low, high = config.get("interval", (0.0, 1.0))
            active = low <= sigma <= high
            for adapter in self._adapters:
                if adapter.lora_index != index or adapter.namespace != namespace:
                    continue
                dit_name = adapter.module_name[len(namespace) :]
                enabled = active and not _layer_filter_hits(dit_name, config.get("layer_filter", ""))
                changed |= enabled != adapter.enabled
                adapter.enabled = enabled
        if changed:
            self._clear_caches()

    def unload_loras(self) -> None:
        """Removes every LoRA; the modules are again exactly the base ones (same class, same tensors)."""
        for module in self._modules.values():
            module.__class__ = type(module).__bases__[0]
            del module.__dict__["_lora_adapters"]
        self._modules.clear()
        self._adapters.clear()
        self.files.clear()
        self.strengths.clear()


def apply_loras(
    targets: Mapping[str, nn.Module],
    files: Sequence[LoraFile | str | Path],
    svd_bases_path: str | Path | None = None,
    skip_prefixes: Sequence[str] = (),
) -> LoraSet:
    """Loads `files` onto `targets` (see `LoraSet`) and returns the set, for strength changes and unload."""
    loras = LoraSet(targets, skip_prefixes)
    loras.load(files, svd_bases_path=svd_bases_path)
    return loras
