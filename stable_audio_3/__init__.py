"""Stable Audio 3 inference: text-to-audio, audio-to-audio, inpainting and the SAME autoencoders."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["AutoencoderModel", "GenerationCancelled", "GenerationRequest", "Limits", "LoadOptions",
           "NonFiniteAudio", "OptionError", "StableAudioModel", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that `import stable_audio_3` stays cheap (CLI start-up, --help).
    if name in ("AutoencoderModel", "StableAudioModel"):
        from . import api

        return getattr(api, name)
    if name in ("GenerationRequest", "Limits", "LoadOptions", "OptionError"):
        from . import request

        return getattr(request, name)
    if name in ("GenerationCancelled", "NonFiniteAudio"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'stable_audio_3' has no attribute {name!r}")
