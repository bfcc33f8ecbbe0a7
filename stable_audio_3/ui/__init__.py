"""`stable-audio-ui`: a Gradio page for text-to-audio, audio-to-audio and inpainting / continuation.

The page is made from `GenerationRequest`: one control per field a page can carry (`controls.py`,
defaults and bounds from the field metadata and the loaded model's defaults), and one generation
function that builds a request from the values by field name, verifies it (a refused option is shown
in the page's message line, spelled with the control's label), runs it and writes the files with `output.py`, as
the command line does. One model is held at a time; picking another one loads it and moves the
model-dependent controls (seconds, steps, CFG, sampler, sample size), its shipped LoRAs and its
example prompts. Errors never replace results or controls; Stop ends a run at the next step. The
reference's LLM prompt assistant, RF-inversion controls (never passed to generation there) and
"infinite radio" scripts are not included.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home; this runs offline

try:
    import gradio  # noqa: F401
except ImportError as e:  # the UI is an extra: say how to get it instead of a traceback
    raise SystemExit(f"stable-audio-ui needs Gradio: pip install 'stable-audio-3[ui]' ({e})") from e

from .app import (  # noqa: E402
    SECTIONS,
    SETTINGS,
    add_load_flags,
    build_app,
    build_parser,
    main,
    mode_text,
    read_values,
    split_loras,
)
from .controls import (  # noqa: E402
    SHIFT_PARAMS,
    Control,
    ControlSpec,
    control_specs,
    label_of,
    make_control,
    parse_regions,
    parse_seeds,
    parse_shift,
    specs,
)
from .generation import (  # noqa: E402
    FORMATS,
    MAX_PLAYERS,
    ModelHolder,
    PageResult,
    Stopped,
    check_upload,
    generate,
)
from .spectrogram import spectrogram_image  # noqa: E402

__all__ = [
    "FORMATS", "MAX_PLAYERS", "SECTIONS", "SETTINGS", "SHIFT_PARAMS", "Control", "ControlSpec", "ModelHolder",
    "PageResult", "Stopped", "add_load_flags", "build_app", "build_parser", "check_upload", "control_specs",
    "generate", "label_of", "main", "make_control", "mode_text", "parse_regions", "parse_seeds", "parse_shift",
    "read_values", "specs", "spectrogram_image", "split_loras",
]
