"""The checks behind the request type: refused values as `OptionError`s that name the option, the
value and what is allowed. Separate from `request.py` (which holds the options themselves) so that
module stays a readable list of options; it re-exports what callers use.

No torch here either."""

from __future__ import annotations

import math
import os
from typing import Any

SEED_MAX = 2**63 - 1
SHIFT_OPTION_TYPES = ("logsnr", "full", "flux", "none")  # sampling.SHIFT_TYPES, whose classes check the rest


class OptionError(ValueError):
    """A refused option: `field` (the Python name), `value` and `allowed` (what would be accepted).

    `str()` spells the field as Python does; `spelled(name)` lets a surface use its own spelling
    (`--cfg-scale` on the command line, the JSON field name on the server). `part` names what inside
    the field is wrong (`.rate` of dist_shift), so the field stays the option's own name."""

    def __init__(self, field: str, value: Any, allowed: str, detail: str | None = None, part: str = ""):
        self.field, self.value, self.allowed = field, value, allowed
        self.detail, self.part = detail, part
        super().__init__(self.spelled(field))

    def spelled(self, name: str) -> str:
        if self.detail is not None:
            return f"{name}: {self.detail}"
        return f"{name}{self.part}={self.value!r} is invalid; {self.allowed}"


def is_number(value) -> bool:
    """A real number (Python or numpy scalar), not a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iuf"


def _is_int(value) -> bool:
    return is_number(value) and (isinstance(value, int) or getattr(value, "dtype", None) is not None
                                 and value.dtype.kind in "iu")


def check_number(value, name: str, low: float | None = None, high: float | None = None, *, integer: bool = False,
                 low_open: bool = False) -> None:
    """A finite number (an integer if asked) within [low, high] ((low, high] with low_open), else OptionError."""
    ok = is_number(value) and math.isfinite(value) and (not integer or _is_int(value))
    ok = ok and (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high)
    if not ok:
        kind = "an integer" if integer else "a number"
        lo = "" if low is None else f"{'>' if low_open else '>='} {_num(low)}"
        if high is None:
            bounds = f" {lo}" if lo else ""
        elif low is not None:
            bounds = f" in {'(' if low_open else '['}{_num(low)}, {_num(high)}]"
        else:
            bounds = f" <= {_num(high)}"
        raise OptionError(name, value, f"{kind}{bounds} is required")


def _num(value: float) -> str:
    return "2**63 - 1" if value == SEED_MAX else f"{value:g}"


def _texts(value, name: str, required: bool = False) -> list[str]:
    if value is None and required:
        raise OptionError(name, None, "a string, or a list with one string per batch item, is required")
    values = _items(value)
    if not values:
        raise OptionError(name, value, "a string, or a non-empty list of strings, is required")
    for v in values:
        if not isinstance(v, str):
            raise OptionError(name, v, "a string is required")
    return values


def _check_encodable(text: str, name: str) -> None:
    """Text the tokenizer can take: valid Unicode (no lone surrogates, which undecodable bytes of a
    command line or a broken client become)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise OptionError(name, "...", "", f"character {e.start} ({text[e.start]!r}) is not valid Unicode "
                          "(an undecodable byte or a lone surrogate); the text must be valid UTF-8") from None


def check_shift_options(value) -> None:
    """dist_shift: None, an object with .shift(t, seq_len), or a dict whose 'type' is a known shift and
    whose other values are finite numbers (or use_sine: a bool); the shift's class checks the names."""
    if value is None or (not isinstance(value, dict) and callable(getattr(value, "shift", None))):
        return
    if not isinstance(value, dict):
        raise OptionError("dist_shift", value, "None, a dict of shift options, or an object with .shift(t, seq_len) "
                          "is required")
    kind = value.get("type", "full")
    if not isinstance(kind, str):
        raise OptionError("dist_shift", kind, "a type name is required", part=".type")
    if kind not in SHIFT_OPTION_TYPES:
        raise OptionError("dist_shift", value, "", f"distribution shift type {kind!r} is unknown; allowed: "
                          f"{', '.join(map(repr, SHIFT_OPTION_TYPES))}")
    for key, v in value.items():
        if key == "type":
            continue
        if not isinstance(key, str):
            raise OptionError("dist_shift", value, "string option names are required")
        if key == "use_sine" and not isinstance(v, bool):
            raise OptionError("dist_shift", v, "true or false is required", part=".use_sine")
        if key != "use_sine" and not (is_number(v) and math.isfinite(v)):
            raise OptionError("dist_shift", v, "a finite number is required", part=f".{key}")


def _items(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _per_item(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def check_audio_input(value, name: str, limits: Any) -> None:
    """A path to an existing file, or (sample_rate, audio) / (audio, sample_rate) with an array whose
    rate, channels and size are within `limits` (a `request.Limits`; a file's are checked when it is
    read)."""
    if value is None:
        return
    if isinstance(value, (str, os.PathLike)):
        if os.path.isdir(value):
            raise OptionError(name, str(value), "", f"{value} is a folder; an audio file is required")
        if not os.path.isfile(value):
            raise OptionError(name, str(value), "", f"audio file not found: {value}")
        return
    is_array = type(value).__module__.split(".")[0] in ("torch", "numpy")
    if is_array:
        raise OptionError(name, "array", "", "a bare array has no sample rate; pass (sample_rate, audio) or a "
                          "file path")
    if isinstance(value, (tuple, list)) and len(value) == 2:
        arrays = [type(v).__module__.split(".")[0] in ("torch", "numpy") and hasattr(v, "shape") for v in value]
        if arrays == [False, True] and is_number(value[0]) or arrays == [True, False] and is_number(value[1]):
            rate, audio = (value[0], value[1]) if arrays[1] else (value[1], value[0])
            shape = tuple(audio.shape)[1:] if audio.ndim == 3 and audio.shape[0] == 1 else tuple(audio.shape)
            if type(audio).__module__.startswith("numpy"):  # soundfile's (T,) / (T, C)
                shape = shape[::-1]
            if len(shape) in (1, 2):  # other shapes are refused, naming the shape, when the audio is read
                frames, channels = shape[-1], (shape[0] if len(shape) == 2 else 1)
                limits.check_audio(name, rate, channels, frames)
            return
        raise OptionError(name, "...", "", "expected (sample_rate, audio) or (audio, sample_rate) with a tensor or "
                          f"numpy array, got ({type(value[0]).__name__}, {type(value[1]).__name__})")
    raise OptionError(name, "...", "", "expected (sample_rate, audio) or a path to an audio file, got "
                      f"{type(value).__name__}")


def inpaint_regions(start_seconds, end_seconds) -> list[tuple[float, float]] | None:
    """Pair the region starts with their ends (both numbers or equal-length lists), sorted; None when
    neither is given. A lone start or end, an empty or reversed region, and overlaps are refused."""
    if start_seconds is None and end_seconds is None:
        return None
    if start_seconds is None or end_seconds is None:
        given, missing = (("inpaint_mask_end_seconds", "inpaint_mask_start_seconds") if start_seconds is None
                          else ("inpaint_mask_start_seconds", "inpaint_mask_end_seconds"))
        raise OptionError(given, "...", "", f"{given} was given without {missing}; give both (numbers, or lists "
                          "of equal length)")
    start_list, end_list = isinstance(start_seconds, (list, tuple)), isinstance(end_seconds, (list, tuple))
    if start_list != end_list:
        raise OptionError("inpaint_mask_start_seconds", "...", "", "inpaint_mask_start_seconds and "
                          "inpaint_mask_end_seconds must both be numbers or both be lists, got "
                          f"{type(start_seconds).__name__} and {type(end_seconds).__name__}")
    starts, ends = _items(start_seconds), _items(end_seconds)
    if len(starts) != len(ends):
        raise OptionError("inpaint_mask_start_seconds", "...", "", f"inpaint_mask_start_seconds has {len(starts)} "
                          f"values but inpaint_mask_end_seconds has {len(ends)}; they must have the same length")
    if not starts:
        raise OptionError("inpaint_mask_start_seconds", [], "", "inpaint_mask_start_seconds is an empty list; give "
                          "at least one region")
    for s, e in zip(starts, ends, strict=True):
        for name, v in (("inpaint_mask_start_seconds", s), ("inpaint_mask_end_seconds", e)):
            if not is_number(v) or not math.isfinite(v) or v < 0:
                raise OptionError(name, v, "a finite number of seconds >= 0 is required")
        if e <= s:
            raise OptionError("inpaint_mask_end_seconds", e, "", f"inpaint_mask_end_seconds={e!r} is not after "
                              f"inpaint_mask_start_seconds={s!r}; each region must end after it starts")
    regions = sorted((float(s), float(e)) for s, e in zip(starts, ends, strict=True))
    for (s0, e0), (s1, e1) in zip(regions, regions[1:], strict=False):
        if s1 < e0:
            raise OptionError("inpaint_mask_start_seconds", "...", "", f"inpaint regions {s0:g}-{e0:g} s and "
                              f"{s1:g}-{e1:g} s overlap; give non-overlapping regions (merge them into one)")
    return regions


def check_lora_configs(configs) -> None:
    """[{'lora_index': int >= 0, 'interval': (low, high) in [0, 1], 'layer_filter': str}], or None.
    Whether each index names a loaded LoRA is checked in the plan."""
    if configs is None:
        return
    if not isinstance(configs, (list, tuple)):
        raise OptionError("lora_configs", configs, "a list of {'lora_index', 'interval', 'layer_filter'} is required")
    seen = set()
    for i, c in enumerate(configs):
        where = f"lora_configs[{i}]"
        if not isinstance(c, dict) or not set(c) <= {"lora_index", "interval", "layer_filter"} or "lora_index" not in c:
            raise OptionError(where, c, "a dict with 'lora_index' and optionally 'interval', 'layer_filter' is "
                              "required")
        index = c["lora_index"]
        if not _is_int(index) or index < 0:
            raise OptionError(f"{where}.lora_index", index, "an integer >= 0 is required")
        if index in seen:
            raise OptionError(f"{where}.lora_index", index, "each LoRA may appear once")
        seen.add(index)
        interval = c.get("interval", (0.0, 1.0))
        if not (isinstance(interval, (list, tuple)) and len(interval) == 2
                and all(is_number(v) and 0 <= v <= 1 for v in interval) and interval[0] <= interval[1]):
            raise OptionError(f"{where}.interval", interval, "(low, high) with 0 <= low <= high <= 1 is required")
        layer_filter = c.get("layer_filter", "")
        if not isinstance(layer_filter, str):
            raise OptionError(f"{where}.layer_filter", layer_filter, "a string of comma-separated name parts is "
                              "required")
