"""LoRA files (spec §6): a `.safetensors` with `lora_config` metadata, or a `.ckpt`/`.pt` read with
`weights_only`; checked on reading (names, adapter type, ranks, shapes), so that a foreign or broken file
fails with the keys named before anything touches a model. Also the -XS adapters' SVD bases."""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from .patterns import as_patterns, matches_any

log = logging.getLogger(__name__)

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


def listing(lines: list[str]) -> str:
    shown = [f"  {line}" for line in lines[:_MAX_LISTED]]
    if len(lines) > _MAX_LISTED:
        shown.append(f"  ... and {len(lines) - _MAX_LISTED} more")
    return "\n".join(shown)


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
        include, exclude = as_patterns(self.config.get("include")), as_patterns(self.config.get("exclude"))
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
            f"(expected '<module>.parametrizations.weight.0.<lora_A|lora_B|M_xs|magnitude...>'):\n{listing(foreign)}"
        )
    if not tensors:
        raise LoraError(f"LoRA file {path} contains no LoRA tensors")
    not_float = [k for k, t in tensors.items() if not (isinstance(t, Tensor) and t.is_floating_point())]
    if not_float:
        raise LoraError(f"LoRA file {path}: these entries are not floating-point tensors:\n{listing(not_float)}")
    tensors = {k: t.float() for k, t in tensors.items()}  # files store fp16; we compute in fp32
    not_finite = [k for k, t in tensors.items() if not bool(torch.isfinite(t).all())]
    if not_finite:
        raise LoraError(f"LoRA file {path}: these tensors hold NaN or infinite values (a damaged or diverged "
                        f"file):\n{listing(not_finite)}")

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
        raise LoraError(f"LoRA file {path}: tensors do not match adapter_type {adapter_type!r}:\n{listing(wrong)}")

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
        raise LoraError(f"LoRA file {path}: mis-shaped tensors:\n{listing(bad)}")
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
