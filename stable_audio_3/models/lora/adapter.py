"""The adapter math on one weight, and the module that carries adapters: a materialized effective weight.

A targeted `nn.Linear` / `nn.Conv1d` gets a subclass whose `weight` is a property; the untouched
parameter W0 stays in `_parameters['weight']`, so `state_dict()` is the base model's and unloading
only restores the class. The effective weight p_n(...p_1(p_0(W0))) for the current strengths and
enable flags lives in one persistent tensor, `module.__dict__['_lora_weight']`, which the property
returns. Why materialized rather than rebuilt at every forward: a forward then costs what the base
model's does, and the tensor is rewritten in place (`copy_`) when the adapter state changes (load,
strength, enable flags), so its identity is stable and a compiled graph or a captured CUDA graph that
reads it sees the new values without a recompile or a re-capture. The price is one copy of each
adapted weight.

While autograd records and a tensor involved requires grad, the property computes the weight on the
fly instead, so gradients reach W0 and the adapter tensors. Both paths run the same code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .files import ADAPTER_TYPES, LoraFile

DORA_EPS = 1e-12  # added to every DoRA/BoRA norm, as in the reference
WEIGHT_KEY = "_lora_weight"  # module.__dict__ key of the materialized weight
ADAPTERS_KEY = "_lora_adapters"  # module.__dict__ key of the module's adapters, in stacking order


class Adapter:
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

    @property
    def requires_grad(self) -> bool:
        return any(t.requires_grad for t in self.tensors.values())

    def _low_rank(self, device: torch.device) -> Tensor:
        if next(iter(self.tensors.values())).device != device:
            self.tensors = {k: v.to(device) for k, v in self.tensors.items()}
        t = self.tensors
        return t["lora_B"] @ t["lora_A"] if self.core == "AB" else t["U"] @ t["M_xs"] @ t["V"].T

    def __call__(self, weight: Tensor) -> Tensor:
        if self.strength == 0.0:  # also the reference's DoRA/BoRA short-circuit
            return weight
        delta = self._low_rank(weight.device)
        coef = self.scaling * self.strength_t  # grouped (alpha/r * s) * delta, as in the reference
        if self.norm is None:
            return weight + (coef * delta.view(weight.shape)).to(weight.dtype)
        v = weight.reshape(weight.shape[0], -1).to(delta.dtype) + coef * delta
        return self._renormalize(v).view(weight.shape).to(weight.dtype)

    def _renormalize(self, v: Tensor) -> Tensor:
        """DoRA / BoRA: divide by the row and/or column norms, scale by the learned magnitudes."""
        t = self.tensors
        if self.norm in ("rows", "cols"):
            dim = 1 if self.norm == "rows" else 0
            return v / (v.norm(dim=dim, keepdim=True) + DORA_EPS) * t["magnitude"].unsqueeze(dim)
        rows_scaled = t["magnitude_r"].unsqueeze(1) * (v / (v.norm(dim=1, keepdim=True) + DORA_EPS))
        return rows_scaled / (rows_scaled.norm(dim=0, keepdim=True) + DORA_EPS) * t["magnitude_c"].unsqueeze(0)


def adapters_of(module: nn.Module) -> list[Adapter]:
    return module.__dict__[ADAPTERS_KEY]


def effective_weight(module: nn.Module) -> Tensor:
    """W0 through every enabled adapter, in stacking order: what the materialized weight holds."""
    weight = module._parameters["weight"]
    for adapter in adapters_of(module):
        if adapter.enabled:
            weight = adapter(weight)
    return weight


def materialize(module: nn.Module) -> None:
    """Rewrite the module's materialized weight in place; a new tensor only when W0's dtype, device or
    shape changed (or on first use). Runs outside autograd and outside inference mode, so the tensor
    is an ordinary one that later forwards, in any mode, may read."""
    w0 = module._parameters["weight"]
    with torch.inference_mode(False), torch.no_grad():
        weight = effective_weight(module)
        target = module.__dict__.get(WEIGHT_KEY)
        if target is None or (target.shape, target.dtype, target.device) != (w0.shape, w0.dtype, w0.device):
            target = torch.empty(w0.shape, dtype=w0.dtype, device=w0.device)
            module.__dict__[WEIGHT_KEY] = target
        target.copy_(weight)


def _needs_grad(module: nn.Module) -> bool:
    return module._parameters["weight"].requires_grad or any(a.requires_grad for a in adapters_of(module))


def _weight(module: nn.Module) -> Tensor:
    """The `weight` property of a module carrying adapters."""
    if torch.is_grad_enabled() and _needs_grad(module):
        return effective_weight(module)  # training: computed here, so that gradients flow
    return module.__dict__[WEIGHT_KEY]


_LORA_CLASSES: dict[type, type] = {}


def lora_class(cls: type) -> type:
    """A subclass of `cls` whose `weight` is the materialized one; `_parameters['weight']` stays W0.

    Converting the module (`.to()`, `.half()`) or loading a state dict into it changes W0, so both
    re-materialize afterwards.
    """
    if cls not in _LORA_CLASSES:

        def _apply(self, fn, recurse=True):
            result = cls._apply(self, fn, recurse)
            materialize(self)
            return result

        def _load_from_state_dict(self, *args, **kwargs):
            cls._load_from_state_dict(self, *args, **kwargs)
            materialize(self)

        namespace = {"weight": property(_weight), "_apply": _apply, "_load_from_state_dict": _load_from_state_dict}
        _LORA_CLASSES[cls] = type(f"LoRA{cls.__name__}", (cls,), namespace)
    return _LORA_CLASSES[cls]


def attach(module: nn.Module, adapter: Adapter) -> None:
    """Stack `adapter` on the module (made a LoRA module on first use); the caller re-materializes."""
    if ADAPTERS_KEY not in module.__dict__:
        module.__dict__[ADAPTERS_KEY] = []
        module.__class__ = lora_class(type(module))
    adapters_of(module).append(adapter)


def detach_all(module: nn.Module) -> None:
    """The module is again exactly the base one: its class, and no extra state."""
    module.__class__ = type(module).__bases__[0]
    module.__dict__.pop(ADAPTERS_KEY, None)
    module.__dict__.pop(WEIGHT_KEY, None)
