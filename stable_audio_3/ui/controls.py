"""The page's controls, made from `GenerationRequest`'s field metadata.

Every field a text or JSON surface can carry (all but `PYTHON_ONLY`) gets one control; its default,
bounds and choices come from the field's metadata, or from the loaded model's `ModelDefaults` for
the `from_model` fields. `control_specs` says what the page offers and `make_control` builds the
components from those same specs, so a test of the one checks the other. Each control also knows
how to turn its components' values back into request values (`Control.read`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..request import (
    A2A_DEFAULT_NOISE_LEVEL,
    FIELDS,
    PYTHON_ONLY,
    ModelDefaults,
    OptionError,
)

LABELS = {
    "prompt": "Prompt",
    "negative_prompt": "Negative prompt",
    "duration": "Seconds total",
    "steps": "Steps",
    "cfg_scale": "CFG scale",
    "seed": "Seed",
    "batch_size": "Batch size",
    "sampler_type": "Sampler type",
    "apg_scale": "APG scale",
    "cfg_interval": "CFG interval",
    "scale_phi": "CFG rescale amount",
    "cfg_norm_threshold": "CFG norm threshold",
    "dist_shift": "Sampling schedule shift",
    "duration_padding_sec": "Duration padding (sec)",
    "sample_size": "Sample size cap",
    "init_audio": "Init audio",
    "init_noise_level": "Init noise level",
    "inpaint_audio": "Inpaint audio",
    "inpaint_mask_start_seconds": "Inpaint regions",
    "inpaint_mask_end_seconds": "Inpaint regions",
    "continuation": "Continuation",
    "inpaint_paste_back": "Paste back",
    "lora_configs": "LoRA sampling controls (JSON)",
    "chunked_decode": "Chunked decode",
    "clamp": "Clamp to [-1, 1]",
}
# Where the metadata's kind alone does not pick the widget. Numbers are sliders when both bounds are
# known (from the metadata or the model), number boxes otherwise.
WIDGETS = {
    "seed": "seeds",  # an int or a per-item list, exact up to 2**63 - 1 (a JS number is not)
    "cfg_norm_threshold": "number",  # [0, 1e6]: a slider that wide is useless
    "sample_size": "number",
    "dist_shift": "shift",
    "lora_configs": "json",
    "chunked_decode": "tristate",  # None (the config's choice), True, False
    "inpaint_mask_start_seconds": "regions",
    "inpaint_mask_end_seconds": "regions",
}
KIND_WIDGETS = {"text": "text", "choice": "dropdown", "bool": "checkbox", "audio": "audio", "pair": "pair",
                "number": "slider"}
SLIDER_STEPS = {"duration": 0.1, "cfg_scale": 0.1, "duration_padding_sec": 0.5}  # integers step by 1, others 0.01
ELEM_IDS = {"duration": "seconds", "inpaint_mask_start_seconds": "regions", "inpaint_mask_end_seconds": "regions"}
# What the page shows for a field whose default is None, when None resolves to one fixed value.
SHOWN_DEFAULTS = {"batch_size": 1, "init_noise_level": A2A_DEFAULT_NOISE_LEVEL}
TRISTATE = {"model config": None, "on": True, "off": False}
SHIFT_PARAMS = {  # the reference UI's defaults for each sampling schedule shift
    "logsnr": "anchor_length=2000, anchor_logsnr=-6.2, rate=0.0, logsnr_end=2.0",
    "flux": "min_length=256, max_length=4096, alpha_min=6.93, alpha_max=6.93",
    "full": "base_shift=0.5, max_shift=1.15, min_length=256, max_length=4096",
    "none": "",
}
SHIFT_DEFAULT = "model default"
REGION_FIELDS = ("inpaint_mask_start_seconds", "inpaint_mask_end_seconds")  # one text box fills both
WIDGET_CHOICES = {"tristate": tuple(TRISTATE.values()), "shift": (None, *SHIFT_PARAMS)}
# Before any model is loaded (or when loading failed): what a post-trained model's config gives.
FALLBACK_DEFAULTS = ModelDefaults.from_config({"model": {"diffusion": {"diffusion_objective": "rf_denoiser"}}})


@dataclass(frozen=True)
class ControlSpec:
    """What the page offers for one request field; `default` is the request value an untouched control gives."""

    name: str
    label: str
    widget: str
    default: Any
    minimum: float | None
    maximum: float | None
    choices: tuple | None
    step: float | None
    integer: bool
    info: str
    elem_id: str


def _field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def specs(defaults: ModelDefaults | None = None) -> dict[str, ControlSpec]:
    """One spec per field a page can carry, with `defaults` (the loaded model's) for the from_model fields."""
    d = defaults or FALLBACK_DEFAULTS
    model_value = {"duration": d.duration, "steps": d.steps, "cfg_scale": d.cfg_scale, "sampler_type": d.sampler,
                   "sample_size": d.max_samples}
    # 120.0007 s (a whole number of latents) shows as 120: a slider end the model allows, without the noise.
    model_high = {"duration": math.floor(d.max_duration * 100) / 100, "sample_size": d.max_samples}
    out = {}
    for name, f in FIELDS.items():
        if name in PYTHON_ONLY:
            continue
        meta = f.metadata
        default = model_value[name] if meta["from_model"] else SHOWN_DEFAULTS.get(name, _field_default(f))
        high = meta["high"] if meta["high"] is not None else model_high.get(name)
        widget = WIDGETS[name] if name in WIDGETS else KIND_WIDGETS[meta["kind"]]
        if widget == "slider" and (meta["low"] is None or high is None):
            widget = "number"  # no slider range that the type would not contradict
        step = (1 if meta["integer"] else SLIDER_STEPS.get(name, 0.01)) if widget in ("slider", "pair") else None
        low = meta["low"]
        if low is not None and meta["low_open"]:  # (0, ...]: the slider starts at its first valid step
            low += step or 0.01
        out[name] = ControlSpec(
            name=name, label=LABELS.get(name, name.replace("_", " ").capitalize()), widget=widget, default=default,
            minimum=low, maximum=high, choices=meta["choices"] or WIDGET_CHOICES.get(widget), step=step,
            integer=meta["integer"], info=meta["help"], elem_id=ELEM_IDS.get(name, name.replace("_", "-")))
    return out


def control_specs(defaults: ModelDefaults | None = None) -> dict[str, dict[str, Any]]:
    """What the page offers per request field: default (as a request value), minimum, maximum, choices,
    label, widget, ...; from_model fields follow `defaults` (a loaded model's `model.defaults`)."""
    return {name: dataclasses.asdict(spec) for name, spec in specs(defaults).items()}


def label_of(field: str) -> str:
    """A field name as the page spells it; `lora_configs[0].interval` keeps its index part."""
    base = re.match(r"\w*", field).group(0)
    return LABELS.get(base, base) + field[len(base):]


# -- from what people type to request values -------------------------------------------------------


def parse_seeds(text: str) -> int | list[int]:
    """ "5" -> 5 (one generator for the batch); "1, 2, 3" -> [1, 2, 3] (one per item); -1 = random."""
    parts = [p for p in re.split(r"[,\s]+", (text or "").strip()) if p]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        seeds = []
    if not seeds:
        raise OptionError("seed", text, "a whole number (-1: random), or one per item separated by commas, is "
                          "required")
    return seeds[0] if len(seeds) == 1 else seeds


def parse_regions(text: str) -> list[tuple[float, float]]:
    """ "1.0-2.0, 3.5-4.0" -> [(1.0, 2.0), (3.5, 4.0)]; overlaps and limits are the request's to check."""
    regions = []
    for part in filter(None, (p.strip() for p in (text or "").replace(";", ",").split(","))):
        m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)", part)
        if not m:
            raise OptionError("inpaint_mask_start_seconds", part, "", f"{part!r} is not START-END in seconds "
                              "(example: 1.0-2.0, 3.5-4.0)")
        start, end = float(m.group(1)), float(m.group(2))
        if end <= start:
            raise OptionError("inpaint_mask_end_seconds", part, "", f"{part!r} ends before it starts")
        regions.append((start, end))
    return regions


def parse_shift(kind: str, params: str) -> dict | None:
    """The schedule shift as the request takes it: None (the model's own) or {"type": ..., **params}."""
    if kind in (None, SHIFT_DEFAULT):
        return None
    options: dict = {"type": kind}
    for part in filter(None, (p.strip() for p in (params or "").split(","))):
        key, _, value = part.partition("=")
        try:
            options[key.strip()] = float(value)  # no "=": float("") fails too
        except ValueError:
            raise OptionError("dist_shift", part, "", f"{part!r} is not name=number") from None
    return options


def parse_json(text: str, name: str) -> Any:
    """A JSON value, or None for an empty box."""
    if not (text or "").strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise OptionError(name, text, "", f"not valid JSON ({e})") from None


def as_number(value, integer: bool):
    """A control's number as the request wants it; whole floats become ints for integer fields."""
    if value is None or isinstance(value, bool):
        return value
    if integer:
        return int(value) if float(value).is_integer() else value  # a fraction is the request's to refuse
    return float(value)


# -- components ------------------------------------------------------------------------------------


@dataclass
class Control:
    """The components that show request fields `names`, and `read(*values)` -> {field: request value}."""

    names: tuple[str, ...]
    components: list
    read: Callable[..., dict[str, Any]]


def make_control(spec: ControlSpec, compact: bool = False) -> Control:
    """Build the components for `spec` (inside a gr.Blocks context). `compact`: no label, the label as
    placeholder (the prompt row). The one regions box fills both region fields."""
    n, w = spec.name, spec.widget
    common = dict(label=spec.label, info=spec.info, elem_id=spec.elem_id)
    if w == "text":
        if compact:
            common = dict(show_label=False, label=spec.label, placeholder=spec.label, elem_id=spec.elem_id)
        box = gr.Textbox(spec.default or "", **common)
        return Control((n,), [box], lambda v: {n: v if (v or "").strip() else None})
    if w in ("slider", "number"):
        if w == "slider":
            c = gr.Slider(spec.minimum, spec.maximum, value=spec.default, step=spec.step,
                          precision=0 if spec.integer else None, **common)
        else:
            c = gr.Number(spec.default, minimum=spec.minimum, maximum=spec.maximum,
                          precision=0 if spec.integer else None, **common)
        return Control((n,), [c], lambda v: {n: as_number(v, spec.integer)})
    if w == "dropdown":
        return Control((n,), [gr.Dropdown(list(spec.choices), value=spec.default, **common)], lambda v: {n: v})
    if w == "checkbox":
        return Control((n,), [gr.Checkbox(bool(spec.default), **common)], lambda v: {n: bool(v)})
    if w == "tristate":
        shown = next(k for k, v in TRISTATE.items() if v is spec.default)
        return Control((n,), [gr.Radio(list(TRISTATE), value=shown, **common)], lambda v: {n: TRISTATE[v]})
    if w == "audio":
        c = gr.Audio(spec.default, type="filepath", label=spec.label, elem_id=spec.elem_id)
        return Control((n,), [c], lambda v: {n: v or None})
    if w == "seeds":
        c = gr.Textbox(str(spec.default), **common)
        return Control((n,), [c], lambda v: {n: parse_seeds(v)})
    if w == "pair":
        with gr.Row():
            pair = [gr.Slider(spec.minimum, spec.maximum, value=v, step=spec.step, label=f"{spec.label} {end}",
                              info=spec.info if end == "min" else None, elem_id=f"{spec.elem_id}-{end}")
                    for v, end in zip(spec.default, ("min", "max"), strict=True)]
        return Control((n,), pair, lambda low, high: {n: (as_number(low, False), as_number(high, False))})
    if w == "regions":
        start, end = REGION_FIELDS
        box = gr.Textbox("", placeholder="1.0-2.0, 3.5-4.0", **{**common, "info": "regions to regenerate, in "
                                                                                   "seconds: START-END, ..."})

        def read_regions(text: str) -> dict[str, Any]:
            regions = parse_regions(text)
            return {start: [r[0] for r in regions] or None, end: [r[1] for r in regions] or None}

        return Control(REGION_FIELDS, [box], read_regions)
    if w == "shift":
        with gr.Row():
            kind = gr.Dropdown([SHIFT_DEFAULT, *SHIFT_PARAMS], value=SHIFT_DEFAULT, **common)
            params = gr.Textbox("", label="Shift parameters (name=value, ...)", elem_id=f"{spec.elem_id}-params")
        kind.change(lambda k: SHIFT_PARAMS.get(k, ""), kind, params)
        return Control((n,), [kind, params], lambda k, p: {n: parse_shift(k, p)})
    if w == "json":
        box = gr.Textbox("" if spec.default is None else json.dumps(spec.default), lines=2,
                         placeholder='[{"lora_index": 0, "interval": [0.0, 1.0], "layer_filter": ""}]', **common)
        return Control((n,), [box], lambda v: {n: parse_json(v, n)})
    raise ValueError(f"{n}: no control for widget {w!r}")


def updates_for(spec: ControlSpec) -> dict:
    """gr.update arguments that move a from_model control to another model's spec."""
    if spec.widget == "dropdown":
        return dict(choices=list(spec.choices), value=spec.default)
    return dict(value=spec.default, minimum=spec.minimum, maximum=spec.maximum)
