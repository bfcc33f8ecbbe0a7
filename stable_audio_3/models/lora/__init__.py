"""LoRA adapters at inference time (spec §6 and §3.8).

A LoRA file holds low-rank updates for `nn.Linear` / `nn.Conv1d` weights of the DiT and of the
conditioner. We never write into the base weights and we do not use `torch.nn.utils.parametrize`
(it renames `weight` to `parametrizations.weight.original` in the state dict). Instead each targeted
module gets a subclass whose `weight` property returns a materialized effective weight
p_n(...p_1(p_0(W0))), rewritten in place whenever strengths or enable flags change. So:

- `state_dict()` keys and values stay exactly those of the base model while LoRAs are loaded;
- unloading only restores the class, which is bitwise exact;
- a strength change is seen by the next forward, without a reload; strength 0 gives W0 exactly;
- per-step enable states (`step_states` / `apply_state`) switch in place, without new tensors, so
  compiled and CUDA-graph-captured forwards keep working.

File keys are relative to the reference's DiT wrapper (`model.<dit name>...`) and to the
MultiConditioner (`conditioners.<name>...`). The caller maps these namespaces to its own modules:
`LoraSet({"model.": dit, "": conditioner}, skip_prefixes=(...T5 encoder...,))`.

One job per module: `files` (reading and checking files), `patterns` (layer-name patterns),
`adapter` (the math and the materialized weight), `lora_set` (attaching LoRAs to a model).
"""

from .files import ADAPTER_TYPES, LoraError, LoraFile, read_lora_file, read_svd_bases
from .lora_set import LoraIndexError, LoraSet
from .patterns import expand_ranges, matches_any

__all__ = [
    "ADAPTER_TYPES",
    "LoraError",
    "LoraFile",
    "LoraIndexError",
    "LoraSet",
    "expand_ranges",
    "matches_any",
    "read_lora_file",
    "read_svd_bases",
]
