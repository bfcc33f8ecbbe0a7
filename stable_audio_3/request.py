"""One generation request: every option of `generate()` with its default, its bounds and a line of help.

The CLI's flags, the HTTP server's JSON schema and the web page's controls are all made from (or
checked against) `GenerationRequest`, so an option is written down once. `GenerationRequest.verify`
holds every check that needs no model; `resolve` fills the defaults that depend on the loaded model
(steps, cfg_scale, sampler, duration, from `ModelDefaults`) and checks what needs the model's
config (the maximum duration), still before any heavy work.

Seeds, the one rule of every surface:
- an int seed s gives the whole batch one generator seeded with s, as the reference does (item i of
  a batch is then not the same as a batch-1 run with seed s);
- a list gives each item its own generator, so item i equals a batch-1 run with seed[i];
- -1 (alone or in a list) draws a seed uniformly from [0, 99999), the reference's range;
- seeds lie in [-1, 2**63 - 1] (what JSON clients and SQLite hold as an integer).

`init_noise_level`: with `init_audio` and no level, 0.9 (the reference's 1.0 would start from pure
noise and ignore the audio); 1.0 is still accepted and then reproduces the reference.

This module imports no torch, so front ends can build their parsers without loading it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .checks import (  # noqa: F401 - re-exported: the request's vocabulary
    SEED_MAX,
    SHIFT_OPTION_TYPES,
    OptionError,
    _check_encodable,
    _is_int,
    _items,
    _per_item,
    _texts,
    check_audio_input,
    check_lora_configs,
    check_number,
    check_shift_options,
    inpaint_regions,
    is_number,
)

SAMPLERS = ("pingpong", "euler", "rk4", "dpmpp")
DEFAULT_SAMPLER = {"rf_denoiser": "pingpong", "rectified_flow": "euler"}
ATTENTION_PADDING = ("exclude", "zero-values")
PRECISIONS = ("auto", "float32", "bfloat16", "float16", "int8", "int8-bf16")  # precision.TIERS + "auto"
DTYPES = ("float32", "bfloat16", "float16")

SEED_MIN = -1
RANDOM_SEED_RANGE = (0, 99999)
MAX_STEPS = 1000
MAX_BATCH_SIZE = 64
MAX_CFG_SCALE = 100.0
MAX_PADDING_SECONDS = 60.0
MAX_PROMPT_CHARS = 4000
A2A_DEFAULT_NOISE_LEVEL = 0.9
DEFAULT_DURATION_PADDING_SEC = 6.0
REFERENCE_SAMPLE_SIZE = 5_292_032  # the reference generate()'s own cap (120 s) when a config has none

# Options that cannot cross a text or JSON boundary; a surface may leave these out.
PYTHON_ONLY = frozenset({"inpaint_mask", "noise_device", "return_latents", "truncate_output_to_duration"})


@dataclass(frozen=True)
class Limits:
    """How much work one request may ask for; every surface checks a request against one of these,
    in `GenerationRequest.verify`, before any heavy work.

    The defaults below bound a call to minutes and a few GB on a large model. A caller who needs more
    raises them when loading (`StableAudioModel.from_pretrained(..., limits=Limits(max_steps=5000))`);
    a server may make them stricter (`dataclasses.replace(model.limits, max_batch_size=4)`). The
    model's own maximum (`sample_size`, its longest output) is never exceeded, whatever the limits.

    - `max_steps` (1000): sampling steps.
    - `max_batch_size` (64): items per call, so also the length of any per-item list (prompts, seeds).
    - `max_prompt_chars` (4000): characters of one prompt or negative prompt.
    - `max_total_seconds` (3840): batch size x the longest duration, the audio one call generates
      (64 one-minute items, or ten of the medium model's 380 s).
    - `min_input_rate`, `max_input_rate` (1 kHz, 768 kHz): sample rates of init / inpaint audio.
    - `max_input_channels` (8), `max_input_values` (384e6: 1000 s of 192 kHz stereo, 1.5 GB as float32):
      channels and samples x channels of init / inpaint audio, as given or as a file decodes (checked
      from the header, then while decoding).
    """

    max_steps: int = MAX_STEPS
    max_batch_size: int = MAX_BATCH_SIZE
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_total_seconds: float = 3840.0
    min_input_rate: int = 1_000
    max_input_rate: int = 768_000
    max_input_channels: int = 8
    max_input_values: int = 1_000 * 192_000 * 2

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check_number(getattr(self, f.name), f"Limits.{f.name}", 0, low_open=True, integer=f.type == "int")
        if self.min_input_rate > self.max_input_rate:
            raise OptionError("Limits.min_input_rate", self.min_input_rate, "", f"Limits.min_input_rate="
                              f"{self.min_input_rate} is above Limits.max_input_rate={self.max_input_rate}")

    def check_audio(self, name: str, sample_rate, channels: int, frames: int) -> None:
        """An input's rate, channels and samples x channels against these limits, else OptionError."""
        if not is_number(sample_rate) or not math.isfinite(sample_rate) or int(sample_rate) != sample_rate or not \
                self.min_input_rate <= sample_rate <= self.max_input_rate:
            raise OptionError(f"{name} sample rate", sample_rate, f"an integer number of Hz in [{self.min_input_rate}"
                              f", {self.max_input_rate}] is required")
        if not 1 <= channels <= self.max_input_channels:
            raise OptionError(name, "...", "", f"{channels} channels; 1 to {self.max_input_channels} are allowed")
        if frames * channels > self.max_input_values:
            raise OptionError(name, "...", "", f"{frames} samples x {channels} channels is more than "
                              f"{self.max_input_values} (Limits.max_input_values; {frames / sample_rate:.1f} s)")


def option(default: Any = None, help: str = "", *, low: float | None = None, high: float | None = None,
           low_open: bool = False, integer: bool = False, choices: Sequence | None = None,
           per_item: bool = False, from_model: bool = False, kind: str = "number") -> Any:
    """A dataclass field carrying what every surface needs to expose and check the option."""
    meta = dict(help=help, low=low, high=high, low_open=low_open, integer=integer, choices=choices,
                per_item=per_item, from_model=from_model, kind=kind)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class GenerationRequest:
    """Everything one generation call takes. None means "the default": for the options marked
    `from_model`, the loaded model's recommendation (see `ModelDefaults`)."""

    prompt: str | list[str] | None = option(None, "text prompt; a list gives one per batch item", per_item=True,
                                            kind="text")
    negative_prompt: str | list[str] | None = option(
        None, "what to steer away from (used when cfg_scale != 1); one, or one per item", per_item=True, kind="text")
    duration: float | list[float] | None = option(
        None, "seconds; one, or one per item (default: the model's default duration)", low=0, low_open=True,
        per_item=True, from_model=True)
    steps: int | None = option(None, "sampling steps (default: the model's; 8 post-trained, 50 -base)", low=1,
                               high=MAX_STEPS, integer=True, from_model=True)
    cfg_scale: float | None = option(None, "classifier-free guidance scale (default: the model's; 1 post-trained, "
                                     "7 -base)", low=0, high=MAX_CFG_SCALE, from_model=True)
    seed: int | list[int] = option(-1, "-1 = random; one int for the batch (one shared generator), or one per "
                                   "item", low=SEED_MIN, high=SEED_MAX, integer=True, per_item=True)
    batch_size: int | None = option(None, "items to generate (default: the length of the per-item lists, else 1)",
                                    low=1, high=MAX_BATCH_SIZE, integer=True)
    sampler_type: str | None = option(None, "sampler (default: the model's; pingpong post-trained, euler -base)",
                                      choices=SAMPLERS, from_model=True, kind="choice")
    apg_scale: float = option(1.0, "1 = full adaptive projected guidance, 0 = plain CFG", low=0, high=1)
    cfg_interval: tuple[float, float] = option((0.0, 1.0), "guidance only while t (1 = noise) is in [low, high]",
                                               low=0, high=1, kind="pair")
    scale_phi: float = option(0.0, "CFG rescale: 0 = off, 1 = full", low=0, high=1)
    cfg_norm_threshold: float = option(0.0, "cap on the guidance norm per item; 0 = no cap", low=0, high=1e6)
    dist_shift: Any = option(None, "timestep shift: {'type': 'logsnr'|'full'|'flux'|'none', ...options}; "
                             "None = the model config's", kind="json")
    duration_padding_sec: float = option(DEFAULT_DURATION_PADDING_SEC, "headroom generated past the duration "
                                         "(seconds)", low=0, high=MAX_PADDING_SECONDS)
    sample_size: int | None = option(None, "cap on the audio samples generated (default and maximum: the "
                                     "model's)", low=1, integer=True, from_model=True)
    init_audio: Any = option(None, "audio to transform (audio-to-audio)", kind="audio")
    init_noise_level: float | None = option(
        None, f"how far from init_audio to start: 0 = keep it, 1 = pure noise (default with init_audio: "
        f"{A2A_DEFAULT_NOISE_LEVEL})", low=0, high=1)
    inpaint_audio: Any = option(None, "audio to inpaint or continue", kind="audio")
    inpaint_mask: Any = option(None, "audio-rate keep-mask tensor (1 keep, 0 regenerate)", kind="tensor")
    inpaint_mask_start_seconds: float | list[float] | None = option(
        None, "start of each region to regenerate (a list for several regions)", low=0, kind="regions")
    inpaint_mask_end_seconds: float | list[float] | None = option(
        None, "end of each region to regenerate", low=0, kind="regions")
    continuation: bool = option(False, "keep all of inpaint_audio and continue it up to duration", kind="bool")
    inpaint_paste_back: bool | None = option(
        None, "put inpaint_audio back exactly over the kept parts (20 ms crossfades inside each regenerated "
        "region); None: off in Python (the reference's behaviour), the model's recommendation on the command "
        "line, the page and the server (`recommended`)", kind="bool")
    lora_configs: list[dict] | None = option(
        None, "per-LoRA sampling controls: [{'lora_index': i, 'interval': [low, high], 'layer_filter': "
        "'names'}]: LoRA i acts only while t is in [low, high], and not on layers whose name holds a "
        "filter entry", kind="json")
    chunked_decode: bool | None = option(None, "decode in overlapping chunks (None: the model config's choice)",
                                         kind="bool")
    return_latents: bool = option(False, "return the latents instead of audio", kind="bool")
    truncate_output_to_duration: bool = option(True, "cut the audio to the (longest) duration", kind="bool")
    clamp: bool = option(True, "clamp the audio to [-1, 1]; False returns it unclamped", kind="bool")
    noise_device: str | None = option(None, "device all noise is drawn on ('cpu': the same audio on every "
                                      "device)", kind="text")

    # -- checks that need no model ----------------------------------------------------------
    def verify(self, limits: Limits | None = None) -> GenerationRequest:
        """Raise `OptionError` for the first option that is invalid on its own, against the others or
        past `limits` (default: `DEFAULT_LIMITS`); returns self so calls chain."""
        limits = DEFAULT_LIMITS if limits is None else limits
        prompts = _texts(self.prompt, "prompt", required=True)
        negatives = None if self.negative_prompt is None else _texts(self.negative_prompt, "negative_prompt")
        self.implied_batch_size(limits)  # the per-item lists agree, and fit the limits
        for name, values in (("prompt", prompts), ("negative_prompt", negatives)):
            for i, p in enumerate(values or []):
                where = name if len(values) == 1 else f"{name}[{i}]"
                if len(p) > limits.max_prompt_chars:
                    raise OptionError(where, f"{p[:40]}...", "", f"{len(p)} characters; at most "
                                      f"{limits.max_prompt_chars} (Limits.max_prompt_chars)")
                _check_encodable(p, where)
        if self.duration is not None:
            for d in _items(self.duration):
                if not is_number(d) or not math.isfinite(d) or d <= 0:
                    raise OptionError("duration", d, "a positive finite number of seconds is required")
        for name in ("steps", "cfg_scale", "apg_scale", "scale_phi", "cfg_norm_threshold", "duration_padding_sec",
                     "init_noise_level", "sample_size"):
            value = getattr(self, name)
            meta = FIELDS[name].metadata
            high = limits.max_steps if name == "steps" else meta["high"]
            if value is not None or name in ("apg_scale", "scale_phi", "cfg_norm_threshold", "duration_padding_sec"):
                check_number(value, name, meta["low"], high, integer=meta["integer"])
        for s in _items(self.seed):
            if not _is_int(s) or not SEED_MIN <= s <= SEED_MAX:
                raise OptionError("seed", s, f"an integer in [{SEED_MIN}, 2**63 - 1] is required (-1: random)")
        if self.sampler_type is not None and self.sampler_type not in SAMPLERS:
            raise OptionError("sampler_type", self.sampler_type, f"allowed: {', '.join(map(repr, SAMPLERS))}")
        interval = self.cfg_interval
        if not (isinstance(interval, (tuple, list)) and len(interval) == 2 and all(is_number(v) and 0 <= v <= 1
                                                                                  for v in interval)
                and interval[0] <= interval[1]):
            raise OptionError("cfg_interval", interval, "(low, high) with 0 <= low <= high <= 1 is required")
        for name in ("continuation", "inpaint_paste_back", "return_latents", "truncate_output_to_duration", "clamp"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "inpaint_paste_back" and value is None):
                raise OptionError(name, value, "True or False is required" + (
                    " (or None: the default)" if name == "inpaint_paste_back" else ""))
        if self.chunked_decode not in (None, True, False) or not isinstance(self.chunked_decode, (bool, type(None))):
            raise OptionError("chunked_decode", self.chunked_decode, "allowed: None (the config's), True, False")
        check_shift_options(self.dist_shift)
        self._verify_inpainting(limits)
        check_lora_configs(self.lora_configs)
        if self.noise_device is not None and not isinstance(self.noise_device, str):
            raise OptionError("noise_device", self.noise_device, "None or a device name such as 'cpu' is required")
        return self

    def _verify_inpainting(self, limits: Limits) -> None:
        for name in ("init_audio", "inpaint_audio"):
            check_audio_input(getattr(self, name), name, limits)
        regions = inpaint_regions(self.inpaint_mask_start_seconds, self.inpaint_mask_end_seconds)
        if self.continuation:
            if self.inpaint_audio is None:
                raise OptionError("continuation", True, "", "continuation=True needs inpaint_audio: the audio to "
                                  "continue")
            if regions is not None:
                raise OptionError("continuation", True, "", "continuation=True keeps all of inpaint_audio; it "
                                  "takes no inpaint_mask_start_seconds / inpaint_mask_end_seconds")
        elif self.inpaint_audio is not None and regions is None and self.inpaint_mask is None:
            raise OptionError("inpaint_audio", "...", "", "inpaint_audio needs the regions to regenerate "
                              "(inpaint_mask_start_seconds / inpaint_mask_end_seconds, or inpaint_mask) or "
                              "continuation=True")
        if self.inpaint_paste_back and (self.inpaint_audio is None or (regions is None and self.inpaint_mask is None
                                                                       and not self.continuation)):
            raise OptionError("inpaint_paste_back", True, "", "inpaint_paste_back=True needs inpaint_audio and the "
                              "regions to regenerate (inpaint_mask_start_seconds / inpaint_mask_end_seconds, "
                              "inpaint_mask, or continuation)")

    def implied_batch_size(self, limits: Limits | None = None) -> int:
        """batch_size, or the length of the per-item lists; lists of different lengths, or longer than
        `limits.max_batch_size`, are an error."""
        most = (DEFAULT_LIMITS if limits is None else limits).max_batch_size
        lengths = {name: len(getattr(self, name)) for name in PER_ITEM
                   if isinstance(getattr(self, name), (list, tuple))}
        for name, n in lengths.items():
            if n == 0:
                raise OptionError(name, [], "one value, or a non-empty list with one per item, is required")
            if n > most:
                raise OptionError(name, "...", "", f"{name} has {n} values; at most {most} items per call "
                                  "(Limits.max_batch_size)")
        if self.batch_size is not None:
            if not _is_int(self.batch_size) or not 1 <= self.batch_size <= most:
                raise OptionError("batch_size", self.batch_size, f"an integer in [1, {most}] is required")
            for name, n in lengths.items():
                if n != self.batch_size:
                    raise OptionError(name, "...", "", f"{name} has {n} values but batch_size={self.batch_size}; "
                                      "give one per item or one")
            return int(self.batch_size)
        names = list(lengths)
        for name in names[1:]:
            if lengths[name] != lengths[names[0]]:
                raise OptionError(name, "...", "", f"{names[0]} has {lengths[names[0]]} values but {name} has "
                                  f"{lengths[name]}; per-item lists must have the same length (the batch size)")
        return next(iter(lengths.values()), 1)

    # -- the model's defaults -----------------------------------------------------------------
    def resolve(self, defaults: ModelDefaults) -> GenerationRequest:
        """A verified copy with every model-dependent default filled in and per-item options as lists
        of batch_size; checks the durations against the model's maximum and `defaults.limits`."""
        limits = defaults.limits
        self.verify(limits)
        n = self.implied_batch_size(limits)
        sample_size = defaults.max_samples if self.sample_size is None else int(self.sample_size)
        if sample_size > defaults.max_samples:
            raise OptionError("sample_size", sample_size, f"at most this model's {defaults.max_samples} samples "
                              f"({defaults.max_duration:.2f} s) is allowed")
        max_duration = sample_size / defaults.sample_rate
        durations = [float(d) for d in _per_item(defaults.duration if self.duration is None else self.duration, n)]
        for d in durations:
            if d > max_duration + 1e-9:
                cap = ("this model allows" if self.sample_size is None else
                       f"sample_size={sample_size} allows")
                raise OptionError("duration", d, "", f"duration={d:g} is too long; {cap} at most "
                                  f"{max_duration:.2f} seconds")
            if int(d * defaults.sample_rate) < 1:
                raise OptionError("duration", d, "", f"duration={d:g} is shorter than one sample at "
                                  f"{defaults.sample_rate} Hz; at least {1 / defaults.sample_rate:.3g} seconds is "
                                  "required")
        if n * max(durations) > limits.max_total_seconds:
            raise OptionError("duration", max(durations), "", f"{n} item(s) of up to {max(durations):g} s is more "
                              f"than {limits.max_total_seconds:g} s of audio in one call (Limits.max_total_seconds); "
                              "ask for fewer or shorter items")
        for start, _ in inpaint_regions(self.inpaint_mask_start_seconds, self.inpaint_mask_end_seconds) or []:
            if start >= max(durations):
                raise OptionError("inpaint_mask_start_seconds", start, "", f"inpaint region starting at {start:g} s "
                                  f"lies entirely after the output ({max(durations):g} s); regions must start "
                                  "before the duration")
        seeds = [int(s) for s in _per_item(self.seed, n)] if isinstance(self.seed, (list, tuple)) else int(self.seed)
        negatives = None if self.negative_prompt is None else list(_per_item(self.negative_prompt, n))
        return dataclasses.replace(
            self,
            prompt=list(_per_item(self.prompt, n)),
            negative_prompt=negatives,
            duration=durations,
            seed=seeds,
            batch_size=n,
            steps=defaults.steps if self.steps is None else int(self.steps),
            cfg_scale=defaults.cfg_scale if self.cfg_scale is None else float(self.cfg_scale),
            sampler_type=defaults.sampler if self.sampler_type is None else self.sampler_type,
            sample_size=sample_size,
            init_noise_level=(A2A_DEFAULT_NOISE_LEVEL if self.init_noise_level is None else
                              float(self.init_noise_level)) if self.init_audio is not None else 1.0,
            cfg_interval=(float(self.cfg_interval[0]), float(self.cfg_interval[1])),
            inpaint_paste_back=bool(self.inpaint_paste_back),  # None: off, as the reference
        )

    def recommended(self, defaults: ModelDefaults) -> GenerationRequest:
        """The request as the command line, the page and the server run it: inpainting or continuation
        with no paste-back choice gets the model's recommendation (`defaults.inpaint_paste_back`; the
        demo's card recommends it). The Python API leaves it off, as the reference does."""
        if self.inpaint_paste_back is not None or self.inpaint_audio is None:
            return self
        regions = self.inpaint_mask_start_seconds is not None or self.inpaint_mask is not None
        return self.replace(inpaint_paste_back=defaults.inpaint_paste_back if regions or self.continuation else None)

    # -- serialisation --------------------------------------------------------------------------
    def to_json(self, digests: dict[str, dict] | None = None) -> dict[str, Any]:
        """Every option as a JSON value; tuples become lists and each audio input its digest, from
        `digests` (field name -> `output.audio_digest` of the input: its name, rate, shape and the sha256
        of its samples; this module reads no audio). `from_json` reverses it."""
        digests = digests or {}
        missing = [name for name in AUDIO_FIELDS if getattr(self, name) is not None and name not in digests]
        if missing:
            raise ValueError(f"to_json: {missing[0]} is given but digests has no entry for it "
                             "(output.audio_digests(request) makes them)")
        out: dict[str, Any] = {}
        for name in FIELDS:
            value = getattr(self, name)
            if name in AUDIO_FIELDS and value is not None:
                value = digests[name]
            elif name == "inpaint_mask" and value is not None:
                value = {"sha256": sha256_of_samples(value, 0)}
            elif name == "dist_shift" and value is not None and not isinstance(value, dict):
                value = {"object": repr(value)}
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], audio: dict[str, Any] | None = None,
                  digests: dict[str, dict] | None = None) -> GenerationRequest:
        """The request `to_json` wrote. `audio`: the input audio again (field name -> path or
        (sample_rate, audio)), with `digests` (their `output.audio_digest`s), each checked against the
        recorded one; a missing, extra or different input is an OptionError naming the field."""
        digests = digests or {}
        if not isinstance(data, dict):
            raise OptionError("request", "...", "", "a JSON object of request options is required")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise OptionError(unknown[0], data[unknown[0]], "", f"{unknown[0]} is not an option of this version "
                              f"({', '.join(unknown)}); it was written by another version")
        audio = dict(audio or {})
        values = dict(data)
        for name in AUDIO_FIELDS:
            recorded, given = data.get(name), audio.pop(name, None)
            if recorded is None:
                if given is not None:
                    raise OptionError(name, "...", "", f"the recorded request has no {name}; do not give one")
                continue
            if given is None:
                raise OptionError(name, "...", "", f"the recorded request used {name} {recorded.get('name')!r} "
                                  f"(sha256 {str(recorded.get('sha256'))[:12]}...); give that audio again")
            digest = digests.get(name) or {}
            if digest.get("sha256") != recorded.get("sha256"):
                raise OptionError(name, "...", "", f"{digest.get('name')} is not the audio the recorded request used "
                                  f"({recorded.get('name')!r}): its samples' sha256 differs")
            values[name] = given
        if audio:
            raise OptionError(next(iter(audio)), "...", "", "not an audio input of the request")
        if data.get("inpaint_mask") is not None:
            raise OptionError("inpaint_mask", "...", "", "the recorded request used an inpaint_mask tensor, which "
                              "metadata cannot restore")
        if isinstance(data.get("dist_shift"), dict) and "object" in data["dist_shift"]:
            raise OptionError("dist_shift", data["dist_shift"]["object"], "", "the recorded request used a "
                              "dist_shift object, which metadata cannot restore")
        if isinstance(values.get("cfg_interval"), list):
            values["cfg_interval"] = tuple(values["cfg_interval"])
        return cls(**values)

    def replace(self, **changes) -> GenerationRequest:
        return dataclasses.replace(self, **changes)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(GenerationRequest)}
PER_ITEM = tuple(name for name, f in FIELDS.items() if f.metadata["per_item"])
AUDIO_FIELDS = tuple(name for name, f in FIELDS.items() if f.metadata["kind"] == "audio")


def sha256_of_samples(samples: Any, rate: int) -> str:
    import hashlib

    import numpy as np

    array = samples.detach().float().cpu().numpy() if hasattr(samples, "detach") else np.asarray(samples)
    digest = hashlib.sha256(f"{rate}:{array.shape}:".encode())
    digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
    return digest.hexdigest()


def default_sampler(diffusion_objective: str) -> str:
    """ping-pong for the post-trained (`rf_denoiser`) models, Euler for the base (`rectified_flow`) ones."""
    if diffusion_objective not in DEFAULT_SAMPLER:
        raise ValueError(f"diffusion_objective={diffusion_objective!r} is not supported; allowed: "
                         f"{', '.join(map(repr, DEFAULT_SAMPLER))}")
    return DEFAULT_SAMPLER[diffusion_objective]


@dataclass(frozen=True)
class ModelDefaults:
    """What a request's defaults and limits depend on, read from a model config alone."""

    sample_rate: int
    max_samples: int
    steps: int
    cfg_scale: float
    sampler: str
    duration: float
    is_base: bool
    inpaint_paste_back: bool = False  # recommended for inpainting and continuation on the CLI, page, server
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)  # what requests are held to (see `Limits`)

    @property
    def max_duration(self) -> float:
        return self.max_samples / self.sample_rate

    @classmethod
    def from_config(cls, config: dict, limits: Limits | None = None) -> ModelDefaults:
        """Post-trained (`rf_denoiser`): 8 steps, cfg 1, ping-pong (the reference's defaults); -base
        (`rectified_flow`): 50, 7, Euler (the model card's); a config's `default_steps`,
        `default_cfg_scale`, `default_sampler` and `default_duration` (the demo has them) win;
        `default_inpaint_paste_back` (the demo: true) is what the command line, the page and the server
        use for inpainting and continuation when the request does not say."""
        objective = config["model"]["diffusion"].get("diffusion_objective", "v")
        is_base = objective == "rectified_flow"
        sample_rate = int(config.get("sample_rate", 44100))
        max_samples = int(config.get("sample_size", REFERENCE_SAMPLE_SIZE))
        steps = config.get("default_steps")
        limits = DEFAULT_LIMITS if limits is None else limits
        steps = min(steps if _is_int(steps) and steps > 0 else (50 if is_base else 8), limits.max_steps)
        cfg = config.get("default_cfg_scale")
        cfg = float(cfg) if is_number(cfg) and 0 <= cfg <= MAX_CFG_SCALE else (7.0 if is_base else 1.0)
        sampler = config.get("default_sampler")
        if sampler not in SAMPLERS:
            sampler = default_sampler(objective)
        max_duration = max_samples / sample_rate
        duration = config.get("default_duration")
        duration = min(float(duration), max_duration) if is_number(duration) and duration > 0 else \
            min(120.0, max_duration)
        paste_back = config.get("default_inpaint_paste_back") is True
        return cls(sample_rate, max_samples, int(steps), cfg, sampler, duration, is_base, paste_back, limits)


@dataclass(frozen=True)
class LoadOptions:
    """How a model is loaded; the CLI, the web page and the server take these the same way."""

    device: str | None = option(None, "cpu, cuda, cuda:N, mps (default: the best available)", kind="text")
    dtype: str | None = option(None, "float32, bfloat16 or float16 for the DiT and conditioners (default: float16 "
                               "on CUDA, float32 elsewhere)", choices=DTYPES, kind="choice")
    attention_padding: str = option("exclude", "exclude: padded latents take no part in attention (training "
                                    "semantics); zero-values: the reference's CPU/MPS numbers",
                                    choices=ATTENTION_PADDING, kind="choice")
    precision: str | None = option(None, "a precision tier instead of --dtype: float32, bfloat16, float16, int8 "
                                   "(int8 DiT and decoder blocks, CPU, no LoRA), int8-bf16 (the same, the rest "
                                   "bfloat16), or auto (the fastest tested on this CPU or GPU)",
                                   choices=PRECISIONS, kind="choice")
    compile: bool = option(False, "compile the sampling step and the decoder with torch.compile (the first "
                           "generation takes longer; a CUDA graph on GPUs)", kind="flag")

    def verify(self) -> LoadOptions:
        for name in ("dtype", "attention_padding", "precision"):
            value, choices = getattr(self, name), LOAD_FIELDS[name].metadata["choices"]
            if value is not None and value not in choices:
                raise OptionError(name, value, f"allowed: {', '.join(map(repr, choices))}")
        if not isinstance(self.compile, bool):
            raise OptionError("compile", self.compile, "allowed: True, False")
        if self.precision is not None and self.dtype is not None:
            raise OptionError("precision", self.precision, "", f"precision={self.precision!r} sets the dtypes; "
                              f"it cannot be combined with dtype={self.dtype!r}")
        if self.int8 and self.device not in (None, "cpu"):
            raise OptionError("precision", self.precision, "", f"precision={self.precision!r} runs on the CPU "
                              f"only; got device={self.device!r}")
        return self

    @classmethod
    def from_namespace(cls, namespace) -> LoadOptions:
        """The verified options of parsed command-line flags (see `add_load_flags`)."""
        return cls(**{name: getattr(namespace, name) for name in LOAD_FIELDS}).verify()

    def kwargs(self) -> dict:
        """Keyword arguments of `StableAudioModel.from_pretrained`."""
        device = self.device or ("cpu" if self.int8 else None)
        return dict(device=device, dtype=self.dtype, attention_padding=self.attention_padding,
                    precision=self.precision, compile=self.compile)

    @property
    def int8(self) -> bool:
        """An int8 tier: CPU only, no LoRAs."""
        return self.precision is not None and self.precision.startswith("int8")


LOAD_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(LoadOptions)}


def add_load_flags(parser) -> None:
    """--device, --dtype, --attention-padding, --precision, --compile on an argparse parser or group, one per
    `LoadOptions` field with its default and choices, so every command spells them alike."""
    for name, f in LOAD_FIELDS.items():
        meta = f.metadata
        if meta["kind"] == "flag":
            parser.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true", help=meta["help"])
            continue
        default = "" if f.default is None else f" (default: {f.default})"
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=f.default, choices=meta["choices"],
                            help=meta["help"] + default)


# -- shared checks --------------------------------------------------------------------------------


DEFAULT_LIMITS = Limits()
