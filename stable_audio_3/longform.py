"""Long-form generation: pieces longer than the model's maximum, made window by window and streamed.

Layout, in latent frames (`ratio` audio samples each): window i samples frames [i * hop, i * hop +
window), every one the same length and `seconds_total`, and the piece is cut to its duration. A
window's last `margin` frames are never used: the model ends a window as it ends a piece, fading
out (so the piece has no ending of its own either: it stops at its duration). Every later window
starts with the `overlap` frames that precede the previous window's margin, kept through the
model's own inpainting conditioning (keep-mask 1 and those very latents, never decoded and
re-encoded), so its new part hears what came before; the kept latents are put back exactly before
decoding, so both windows decode the same latents over the overlap. The two decodes are joined at
the overlap's centre (the seam) by an equal-gain crossfade (the weights sum to 1: the sides are
correlated, so equal-power would bump the level) over `crossfade_seconds`. The hop is a whole
number of the autoencoder's attention chunks, so the overlap meets the decoder on the same grid.

Window i uses seed `seed + i` and the prompt in force where its new part begins (the schedule is a
list of `(start_seconds, prompt)`). Audio up to the next seam's crossfade is final once a window is
decoded, so `stream` yields it then; memory holds one window's latents and audio besides what the
caller keeps. Levels: no gain is applied anywhere (no whole-piece peak gain, so a stream and the
whole piece are the same samples); with `clamp=True` (the default) each sample is clamped to
[-1, 1], a fixed 0 dBFS ceiling. Non-finite audio stops the run with an error.

The plan needs no model beyond its `ModelDefaults` and two autoencoder numbers, and no torch; the
heavy modules are imported when a window is sampled, so front ends can check a request quickly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .request import (
    FIELDS,
    MAX_PROMPT_CHARS,
    SEED_MAX,
    GenerationRequest,
    ModelDefaults,
    OptionError,
    check_number,
    is_number,
    option,
)

if TYPE_CHECKING:
    import torch

    from .api import StableAudioModel

log = logging.getLogger(__name__)

DEFAULT_MAX_DURATION = 3600.0  # one hour; LongFormRequest.max_duration raises it
DEFAULT_WINDOW_CAP = 120.0  # default window: the model's maximum, at most this many seconds
DEFAULT_OVERLAP_FRACTION = 0.25  # default overlap: this share of the window
DEFAULT_MARGIN_FRACTION = 0.125  # default margin: this share of the window
DEFAULT_CROSSFADE = 0.04  # seconds: inside one latent frame (93 ms at 4096 samples), see `plan_windows`
# Model config keys with the settings a model recommends for continuation (every window after the
# first continues the one before); long-form uses them for the options a request leaves unset.
CONTINUATION_DEFAULTS = {"steps": "default_continuation_steps", "cfg_scale": "default_continuation_cfg_scale"}
# Options a long-form piece sets itself, or that have no meaning for it.
NOT_FOR_LONG_FORM = ("init_audio", "inpaint_audio", "inpaint_mask", "inpaint_mask_start_seconds",
                     "inpaint_mask_end_seconds", "continuation", "inpaint_paste_back", "return_latents")


@dataclass(frozen=True)
class LongFormRequest:
    """A long-form piece: the usual options (`request`: one prompt, one int seed, no duration) plus
    the fields below. The prompt plays from 0 s; `schedule` entries take over at their times."""

    request: GenerationRequest
    duration: float = option(None, "total length in seconds", low=0, low_open=True)
    schedule: tuple[tuple[float, str], ...] | None = option(
        None, "prompts taking over at given times: [(start_seconds, prompt), ...]; with no prompt the first "
        "starts at 0", kind="schedule")
    window_seconds: float | None = option(
        None, f"seconds each window samples (default: the model's maximum, at most {DEFAULT_WINDOW_CAP:g} s)",
        low=0, low_open=True)
    overlap_seconds: float | None = option(
        None, f"seconds of the previous window each window continues from (default: "
        f"{DEFAULT_OVERLAP_FRACTION:.0%} of the window)", low=0, low_open=True)
    margin_seconds: float | None = option(
        None, f"seconds at the end of each window that are sampled but never used: the model fades a window out "
        f"there (default: {DEFAULT_MARGIN_FRACTION:.1%} of the window)", low=0)
    crossfade_seconds: float = option(DEFAULT_CROSSFADE, "equal-gain crossfade at each seam (seconds)", low=0,
                                      low_open=True, high=60)
    max_duration: float = option(DEFAULT_MAX_DURATION, "the longest total duration accepted (seconds)", low=0,
                                 low_open=True)

    def verify(self) -> LongFormRequest:
        """Raise `OptionError` for the first invalid field (the request's own checks included)."""
        r = self.request
        if not isinstance(r, GenerationRequest):
            raise OptionError("request", type(r).__name__, "a GenerationRequest is required")
        check_number(self.max_duration, "max_duration", 0, None, low_open=True)
        if self.duration is None:
            raise OptionError("duration", None, "the total length in seconds is required")
        check_number(self.duration, "duration", 0, self.max_duration, low_open=True)
        for name in ("window_seconds", "overlap_seconds", "margin_seconds", "crossfade_seconds"):
            value = getattr(self, name)
            if value is not None:
                meta = LONG_FIELDS[name].metadata
                check_number(value, name, meta["low"], meta["high"], low_open=meta["low_open"])
        if r.duration is not None:
            raise OptionError("request.duration", r.duration, "", "a long-form piece plans each window's duration "
                              "itself; give the total as duration, not in the request")
        for name in NOT_FOR_LONG_FORM:
            if getattr(r, name) != FIELDS[name].default:
                raise OptionError(name, getattr(r, name), "", "not available for long-form pieces")
        if r.truncate_output_to_duration is not True:
            raise OptionError("truncate_output_to_duration", r.truncate_output_to_duration, "", "a long-form piece "
                              "is always cut to its duration")
        for name in ("prompt", "negative_prompt", "seed"):
            if isinstance(getattr(r, name), (list, tuple)):
                raise OptionError(name, getattr(r, name), "", f"a long-form piece is one item: give one {name}, "
                                  "not a list")
        if r.batch_size not in (None, 1):
            raise OptionError("batch_size", r.batch_size, "", "a long-form piece is one item: batch_size must be 1")
        entries = self.entries()
        r.replace(prompt=entries[0][1]).verify()
        return self

    def entries(self) -> list[tuple[float, str]]:
        """The prompt schedule as [(start, prompt)] from 0 s, checked: times in [0, duration), increasing."""
        entries: list[tuple[float, str]] = []
        if self.request.prompt is not None:
            entries.append((0.0, self.request.prompt))
        schedule = self.schedule or ()
        if not isinstance(schedule, (list, tuple)):
            raise OptionError("schedule", schedule, "a list of (start_seconds, prompt) pairs is required")
        for i, entry in enumerate(schedule):
            where = f"schedule[{i}]"
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], str)):
                raise OptionError(where, entry, "a (start_seconds, prompt) pair is required")
            start, prompt = entry
            if not is_number(start) or not math.isfinite(start) or not 0 <= start < self.duration:
                raise OptionError(where, entry, "", f"start {start!r} must be a number of seconds in "
                                  f"[0, duration={self.duration:g})")
            if not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
                raise OptionError(where, entry, "", "the prompt must be non-empty text of at most "
                                  f"{MAX_PROMPT_CHARS} characters")
            if entries and start <= entries[-1][0]:
                before = "the prompt, which plays from 0 s" if entries[-1][0] == 0 and i == 0 and \
                    self.request.prompt is not None else f"{entries[-1][0]:g} s"
                raise OptionError(where, entry, "", f"starts at {start:g} s, not after {before}; "
                                  "schedule times must increase")
            entries.append((float(start), prompt))
        if not entries:
            raise OptionError("prompt", None, "", "a prompt or a schedule is required")
        if entries[0][0] > 0:
            raise OptionError("schedule[0]", self.schedule[0], "", f"starts at {entries[0][0]:g} s; "
                              "with no prompt, the schedule must start at 0 s")
        return entries

    def plan(self, defaults: ModelDefaults, ratio: int, align: int) -> LongPlan:
        """Lay the piece out for a model (its defaults, latent frame `ratio` in samples, and `align`, the
        latents per attention chunk); checks what needs the model (the window against its maximum)."""
        self.verify()
        sr = defaults.sample_rate
        r = self.request
        limit = defaults.max_samples if r.sample_size is None else min(int(r.sample_size), defaults.max_samples)
        max_frames = limit // ratio // align * align
        if max_frames < 2 * align:
            raise OptionError("sample_size", r.sample_size, "", f"the model's windows would be {max_frames} latents; "
                              f"at least {2 * align} are needed for long-form")
        frame_s = ratio / sr
        check_lengths(self, max_frames * frame_s)  # before any of them is turned into frames
        if self.window_seconds is None:
            window = min(max_frames, int(DEFAULT_WINDOW_CAP / frame_s) // align * align)
        else:
            window = int(self.window_seconds / frame_s + 1e-6) // align * align
            if window > max_frames:
                raise OptionError("window_seconds", self.window_seconds, "", f"window_seconds={self.window_seconds:g} "
                                  f"is too long; this model allows at most {max_frames * frame_s:.2f} seconds")
            if window < 2 * align:
                raise OptionError("window_seconds", self.window_seconds, "", f"window_seconds={self.window_seconds:g} "
                                  f"is too short; at least {2 * align * frame_s:.2f} seconds is required")
        overlap = self._frames("overlap_seconds", DEFAULT_OVERLAP_FRACTION * window, frame_s, align, max(2, align))
        margin = self._frames("margin_seconds", DEFAULT_MARGIN_FRACTION * window, frame_s, align, 0)
        if overlap + margin >= window:
            raise OptionError("overlap_seconds", self.overlap_seconds, "", f"the overlap ({overlap * frame_s:.2f} s) "
                              f"and the margin ({margin * frame_s:.2f} s) must leave room in the window "
                              f"({window * frame_s:.2f} s) for new audio")
        hop = window - margin - overlap
        crossfade = 2 * int(self.crossfade_seconds * sr / 2)
        room = min(overlap - 1, hop) * ratio
        if crossfade > room:
            raise OptionError("crossfade_seconds", self.crossfade_seconds, "", f"crossfade_seconds="
                              f"{self.crossfade_seconds:g} is longer than the overlap and the hop allow "
                              f"({room / sr:.2f} s)")
        crossfade = max(crossfade, 2)
        entries = self.entries()
        base = r.replace(prompt=entries[0][1], duration=window * frame_s).resolve(defaults)  # checked once
        windows = plan_windows(int(self.duration * sr), window, overlap, margin, ratio, sr, entries, r.seed, crossfade)
        return LongPlan(self, base, sr, ratio, window, overlap, margin, crossfade, windows)

    def _frames(self, name: str, default: float, frame_s: float, align: int, least: int) -> int:
        """A length field in whole attention chunks of latents (the default given in frames)."""
        value = getattr(self, name)
        frames = default if value is None else value / frame_s
        return max(least, round(frames / align) * align)


LONG_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(LongFormRequest)
                                             if f.name != "request"}


@dataclass(frozen=True)
class Window:
    """One window of a piece. Samples count from the piece's start. `start` / `end`: the stretch of the
    piece it delivers (from its seam's crossfade to the next's); `first` / `stop`: what it samples."""

    index: int
    seed: int
    prompt: str
    first: int
    stop: int
    start: int
    end: int
    kept: int  # frames continued from the previous window (0 for the first)
    new_start: int  # where its new (non-overlapping) part begins: its prompt is the one in force here
    seam: int | None  # centre of the crossfade with the previous window
    sample_rate: int

    @property
    def start_seconds(self) -> float:
        return self.start / self.sample_rate

    @property
    def end_seconds(self) -> float:
        return self.end / self.sample_rate

    @property
    def seam_seconds(self) -> float | None:
        return None if self.seam is None else self.seam / self.sample_rate

    @property
    def new_start_seconds(self) -> float:
        return self.new_start / self.sample_rate

    def info(self) -> dict[str, Any]:
        """JSON-ready facts for progress reports and job status."""
        return {"index": self.index, "seed": self.seed, "prompt": self.prompt,
                "start_seconds": round(self.start_seconds, 6), "end_seconds": round(self.end_seconds, 6),
                "seam_seconds": None if self.seam is None else round(self.seam_seconds, 6)}


def prompt_at(entries: Sequence[tuple[float, str]], seconds: float) -> str:
    """The prompt in force at `seconds`: the last entry starting at or before it."""
    current = entries[0][1]
    for start, prompt in entries:
        if start <= seconds + 1e-9:
            current = prompt
    return current


def plan_windows(total: int, window: int, overlap: int, margin: int, ratio: int, sample_rate: int,
                 entries: Sequence[tuple[float, str]], seed: int, crossfade: int) -> list[Window]:
    """The windows of a piece of `total` samples (window, overlap and margin in frames; crossfade in
    samples, even). A -1 seed is drawn once here; window i gets seed + i."""
    frames = -(-total // ratio)
    hop = window - margin - overlap
    count = 1 if frames <= window - margin else 1 + -(-(frames - window + margin) // hop)
    if seed == -1:
        from .sampling import random_seed

        seed = random_seed()
    if seed + count - 1 > SEED_MAX:
        raise OptionError("seed", seed, "", f"seed={seed} leaves no room for the {count} window seeds seed + i; "
                          f"at most {SEED_MAX - count + 1} is allowed here")
    # Each seam lies in the middle of the overlap's middle frame: the crossfade then stays inside one
    # frame, away from the frame edges where a decoder that works frame by frame can step.
    seams = [None] + [(i * hop + overlap // 2) * ratio + ratio // 2 for i in range(1, count)]
    windows = []
    for i in range(count):
        first = i * hop * ratio
        stop = first + window * ratio
        kept = 0 if i == 0 else overlap
        start = 0 if i == 0 else seams[i] - crossfade // 2
        end = total if i == count - 1 else seams[i + 1] - crossfade // 2
        new_start = first + kept * ratio
        windows.append(Window(i, seed + i, prompt_at(entries, new_start / sample_rate), first, stop, start, end, kept,
                              new_start, seams[i], sample_rate))
    return windows


@dataclass(frozen=True)
class LongPlan:
    """A long-form request laid out for one model: window sizes (frames), crossfade (samples), windows."""

    request: LongFormRequest
    base: GenerationRequest  # the resolved per-window options (steps, cfg, sampler, ...)
    sample_rate: int
    ratio: int
    window: int
    overlap: int
    margin: int
    crossfade: int
    windows: list[Window]

    @property
    def total(self) -> int:
        return self.windows[-1].end

    @property
    def window_seconds(self) -> float:
        return self.window * self.ratio / self.sample_rate

    def window_request(self, w: Window) -> GenerationRequest:
        """Window w's request: its prompt and seed; unclamped and uncut (the stream cuts and clamps)."""
        return dataclasses.replace(self.base, prompt=[w.prompt], seed=w.seed, truncate_output_to_duration=False,
                                   clamp=False)

    def describe(self) -> str:
        sr = self.sample_rate
        frame_s = self.ratio / sr
        return (f"{self.total / sr:.2f} s in {len(self.windows)} window(s) of {self.window * frame_s:.2f} s, "
                f"overlap {self.overlap * frame_s:.2f} s, margin {self.margin * frame_s:.2f} s, "
                f"crossfade {self.crossfade / sr * 1000:.0f} ms")


@dataclass(frozen=True)
class Stretch:
    """A finished stretch of the piece: (C, samples) float32 from sample `start`, final (no later
    window changes it); `window` is the window that completed it. Over the crossfade it begins with,
    `seam_snr_db` is how closely the two windows' decodes agree, and `seam_level_db` the incoming
    side's level against the outgoing one's (None for the first stretch)."""

    audio: torch.Tensor
    start: int
    window: Window
    sample_rate: int
    seam_snr_db: float | None = None
    seam_level_db: float | None = None

    @property
    def start_seconds(self) -> float:
        return self.start / self.sample_rate

    @property
    def end_seconds(self) -> float:
        return (self.start + self.audio.shape[-1]) / self.sample_rate


@dataclass(frozen=True)
class LongGeneration:
    """A whole piece: audio (C, T) float32, its windows (seed, prompt, span each) and the plan."""

    audio: torch.Tensor
    windows: list[Window]
    plan: LongPlan
    sample_rate: int

    @property
    def seeds(self) -> list[int]:
        return [w.seed for w in self.windows]


# -- running ---------------------------------------------------------------------------------------


def model_plan(model: StableAudioModel, long: LongFormRequest) -> LongPlan:
    """`long` laid out for `model` (every check before any sampling). Sampling options the request
    leaves unset take the config's continuation recommendations where it has them
    (`CONTINUATION_DEFAULTS`), else the model's usual defaults."""
    from .masks import latents_per_alignment

    config = model.components.config
    r = long.request
    filled = {name: config[key] for name, key in CONTINUATION_DEFAULTS.items()
              if getattr(r, name) is None and key in config}
    if filled:
        long = dataclasses.replace(long, request=r.replace(**filled))
    encoder = config["model"]["pretransform"]["config"]["encoder"]["config"]
    return long.plan(model.defaults, model.autoencoder.downsampling_ratio, latents_per_alignment(encoder))


def _sample_window(model: StableAudioModel, plan: LongPlan, w: Window, kept: torch.Tensor | None,
                   callback) -> tuple[torch.Tensor, torch.Tensor]:
    """Window w's latents (1, C, L) and decoded audio (C, stop - first), continuing `kept` latents."""
    import torch

    from . import masks
    from .pipeline import decode, encode, sample_plan
    from .plan import make_plan

    c = model.components
    with torch.inference_mode():
        run = make_plan(c, plan.window_request(w))
        enc = encode(c, run)
        if kept is not None:
            n, length = kept.shape[-1], run.latent_length
            mask = torch.zeros(1, length, device=c.device)
            mask[:, :n] = 1
            given = torch.zeros(1, c.latent_channels, length, device=c.device)
            given[..., :n] = kept
            local = masks.local_add_cond(mask, given, batch_size=1, channels=c.latent_channels, latent_length=length,
                                         device=c.device)
            enc = dataclasses.replace(enc, local=local.to(c.dtype))
        latents = sample_plan(c, run, enc, callback)
        if kept is not None:  # the overlap decodes the very latents the previous window did
            latents = latents.clone()
            latents[..., : kept.shape[-1]] = kept.to(latents.dtype)
        audio = decode(c, run, latents, None)[0, :, : w.stop - w.first].float()
    if not torch.isfinite(audio).all():
        raise RuntimeError(f"window {w.index} (seed {w.seed}) produced non-finite audio")
    return latents, audio


def equal_gain_fade(n: int, device=None) -> torch.Tensor:
    """Weights of the incoming side over n samples, a raised cosine from 0 to 1; the outgoing side
    gets 1 - w, so the two always sum to 1 (equal gain: right for correlated sides)."""
    import torch

    k = torch.arange(n, device=device, dtype=torch.float64)
    return (0.5 - 0.5 * torch.cos(math.pi * (k + 0.5) / n)).float()


def stream_plan(model: StableAudioModel, plan: LongPlan, callback=None,
                on_window: Callable[[Window, int], None] | None = None) -> Iterator[Stretch]:
    """Yield the piece's finished stretches in order, each as soon as it is final (see the module doc).

    `callback(step, total, x)`: after each sampling step of each window (False cancels, as in
    `StableAudioModel.run`). `on_window(window, count)`: before a window's sampling starts."""
    fade = equal_gain_fade(plan.crossfade)
    half = plan.crossfade // 2
    clamp = plan.base.clamp
    kept = tail = None  # the previous window's last latents, and its audio from the coming crossfade on
    count = len(plan.windows)
    for w in plan.windows:
        if on_window is not None:
            on_window(w, count)
        log.debug("window %d/%d: %.2f-%.2f s, seed %d, %r", w.index + 1, count, w.first / plan.sample_rate,
                 w.stop / plan.sample_rate, w.seed, w.prompt)
        latents, audio = _sample_window(model, plan, w, kept, callback)
        out = audio[:, w.start - w.first : w.end - w.first].clone()
        agreement = level = None
        if tail is not None:
            old, new = tail[:, : plan.crossfade], out[:, : plan.crossfade]
            agreement, level = _db(old.pow(2).sum(), (old - new).pow(2).sum()), _db(new.pow(2).sum(), old.pow(2).sum())
            f = fade.to(out.device)
            out[:, : plan.crossfade] = old * (1 - f) + new * f
        if w.index + 1 < count:
            following = plan.windows[w.index + 1]
            hop = (following.first - w.first) // plan.ratio
            kept = latents[..., hop : hop + plan.overlap]
            tail = audio[:, following.seam - half - w.first:]
        del latents, audio
        if clamp:
            out = out.clamp(-1, 1)
        yield Stretch(out, w.start, w, plan.sample_rate, agreement, level)


def _db(power, reference) -> float:
    """10 log10(power / reference) of two sums of squares, finite for silence."""
    return 10 * math.log10((float(power) + 1e-20) / (float(reference) + 1e-20))


def collect(model: StableAudioModel, plan: LongPlan, callback=None,
            on_window: Callable[[Window, int], None] | None = None) -> LongGeneration:
    """The whole piece of a plan in one (C, T) tensor, filled stretch by stretch."""
    import torch

    audio = None
    for s in stream_plan(model, plan, callback, on_window):
        if audio is None:
            audio = torch.empty(s.audio.shape[0], plan.total, dtype=torch.float32)
        audio[:, s.start : s.start + s.audio.shape[-1]] = s.audio.cpu()
    return LongGeneration(audio, plan.windows, plan, plan.sample_rate)


def check_lengths(long: LongFormRequest, max_seconds: float) -> None:
    """Refuse a window, overlap or margin longer than the model's longest window (`max_seconds`) before
    planning: none of them can be, and astronomically long ones would not fit the plan's integers."""
    for name in ("window_seconds", "overlap_seconds", "margin_seconds"):
        value = getattr(long, name)
        if value is not None and is_number(value) and value > max_seconds:
            raise OptionError(name, value, "", f"{name}={value:g} is too long; this model allows at most "
                              f"{max_seconds:.2f} seconds")


def piece_metadata(plan: LongPlan, model: str, loras: Sequence[tuple[str, float]] = ()) -> dict[str, str]:
    """A piece's file metadata: title = its prompts with their start times; comment = the settings that
    reproduce it (its plan, its first seed, the sampling options and LoRAs)."""
    from . import __version__

    r = plan.base
    prompts = " | ".join(f"{start:g}s: {prompt}" for start, prompt in plan.request.entries())
    comment = (f"long-form: {plan.describe()}; seed={plan.windows[0].seed} (window i: seed + i) model={model} "
               f"steps={r.steps} cfg_scale={r.cfg_scale:g} sampler={r.sampler_type}"
               + "".join(f" lora={name}@{strength:g}" for name, strength in loras))
    return {"title": prompts, "comment": comment, "software": f"stable-audio-3 {__version__}"}


def long_request(prompt: str | None = None, duration: float | None = None, *,
                 schedule: Sequence[tuple[float, str]] | None = None, window_seconds: float | None = None,
                 overlap_seconds: float | None = None, margin_seconds: float | None = None,
                 crossfade_seconds: float = DEFAULT_CROSSFADE, max_duration: float = DEFAULT_MAX_DURATION,
                 **options) -> LongFormRequest:
    """A verified `LongFormRequest` from keywords: `options` are `GenerationRequest` fields."""
    unknown = sorted(set(options) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(FIELDS)}, and window_seconds, "
                        "overlap_seconds, margin_seconds, crossfade_seconds, max_duration, schedule")
    if "duration" in options:
        raise TypeError("duration is given once, as the total length")
    entries = None if schedule is None else tuple(tuple(e) if isinstance(e, list) else e for e in schedule)
    return LongFormRequest(GenerationRequest(prompt=prompt, **options), duration, entries, window_seconds,
                           overlap_seconds, margin_seconds, crossfade_seconds, max_duration).verify()


def generate_long(model: StableAudioModel, prompt: str | None = None, duration: float | None = None, *,
                  schedule: Sequence[tuple[float, str]] | None = None, seed: int = -1, callback=None,
                  on_window: Callable[[Window, int], None] | None = None, **options) -> LongGeneration:
    """A piece of `duration` seconds (up to `max_duration`, one hour by default) from a prompt or a
    schedule `[(start_seconds, prompt), ...]`, window by window (see the module doc). Keywords: every
    `GenerationRequest` option (steps, cfg_scale, sampler_type, negative_prompt, lora_configs, ...),
    and `window_seconds`, `overlap_seconds`, `margin_seconds`, `crossfade_seconds`, `max_duration`.
    Window i uses seed `seed + i`; the result's `windows` carry each one's seed, prompt and span."""
    long = long_request(prompt, duration, schedule=schedule, seed=seed, **options)
    return collect(model, model_plan(model, long), callback, on_window)


def stream_long(model: StableAudioModel, prompt: str | None = None, duration: float | None = None, *,
                schedule: Sequence[tuple[float, str]] | None = None, seed: int = -1, callback=None,
                on_window: Callable[[Window, int], None] | None = None, **options) -> Iterator[Stretch]:
    """`generate_long` as an iterator of finished `Stretch`es: the first comes as soon as the first
    window is decoded. Every check runs on the call, before the first `next()`."""
    long = long_request(prompt, duration, schedule=schedule, seed=seed, **options)
    return stream_plan(model, model_plan(model, long), callback, on_window)
