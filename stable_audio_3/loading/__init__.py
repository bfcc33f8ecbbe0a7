"""Where a model comes from (the built-in demo, the Hugging Face Hub, a folder, a single file) and how
its tensors get into the modules.

Loading is strict: a missing, unexpected or mis-shaped tensor is an error that names the keys, and
it is found from the file's header before any weight is read. (The reference skips such tensors
silently; a half-loaded model makes noise, not an error message.) Every problem a user can meet on
the way (offline, no token, licence not accepted, unknown name, truncated file) ends in one
`ModelLoadError` whose message says what to do.

One job per module; this package re-exports the names the rest of the project uses:
- `configs`: model names, Hub repos, folder layout, packaged configs, the demo, shipped LoRAs;
- `device`: which device and compute dtype;
- `hub`: Hub downloads and the failure message;
- `text_encoder`: which folder holds a model's T5Gemma, and attaching it to the conditioner;
- `resolve`: from a name or path to the model's files.
Reading a safetensors file into modules (strict, lean) is `models.checkpoint`'s, so that `models/`
needs nothing from here; the imports go one way, loading -> models.
"""

from ..models.checkpoint import (
    ModelLoadError,
    SafetensorsFile,
    check_state,
    load_part,
    load_strict,
    module_shapes,
    read_safetensors,
    split_checkpoint_keys,
)
from ..models.conditioning import OffloadedTextEncoder
from ..models.t5gemma import t5gemma_encoder_keys
from .configs import (
    AE_PREFIX,
    AUTOENCODER_MODELS,
    CONDITIONER_PREFIX,
    DEMO_MODEL,
    DIFFUSION_MODELS,
    DIT_PREFIX,
    HUB_REPOS,
    ModelFiles,
    autoencoder_section,
    bundled_loras,
    demo_folder,
    local_model_folder,
    packaged_config,
)
from .device import resolve_device, resolve_dtype
from .hub import hub_failure_message
from .resolve import resolve_model_files
from .text_encoder import attach_text_encoder, resolve_text_encoder_dir

__all__ = [
    "AE_PREFIX",
    "AUTOENCODER_MODELS",
    "CONDITIONER_PREFIX",
    "DEMO_MODEL",
    "DIFFUSION_MODELS",
    "DIT_PREFIX",
    "HUB_REPOS",
    "ModelFiles",
    "ModelLoadError",
    "OffloadedTextEncoder",
    "SafetensorsFile",
    "attach_text_encoder",
    "autoencoder_section",
    "bundled_loras",
    "check_state",
    "demo_folder",
    "hub_failure_message",
    "load_part",
    "load_strict",
    "local_model_folder",
    "module_shapes",
    "packaged_config",
    "read_safetensors",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_files",
    "resolve_text_encoder_dir",
    "split_checkpoint_keys",
    "t5gemma_encoder_keys",
]
