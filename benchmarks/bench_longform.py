"""Long-form generation on the demo model: seam, continuity and schedule measurements, and timings.

    python benchmarks/bench_longform.py                       # 20 s pieces, seed 3, the model's settings
    python benchmarks/bench_longform.py --seconds 60 --seed 5 --steps 8 --cfg-scale 1

Prints JSON: for a steady tone (`sine wave a4`) the seam scores (largest sample-to-sample jump
near each seam against the 99.9th percentile of jumps elsewhere; the RMS of the 50 ms stretches
across each seam against the 200 ms before it) and the continuity scores (every 1 s stretch's level
against the median, and its strongest peak against 440 Hz); for `pink noise` the levels, and for
pink and brown noise at six seeds from --seed on each piece's worst level; for the schedule
`[(0, "sine wave a4"), (half, "sine wave e5")]` the peaks before the change and from one window
after it; how closely the two windows' decodes of each overlap agree over the crossfade (SNR
and level difference: the kept latents are continued exactly); and the timings: time to the first
stretch, the total, and the sum of the windows' own times (sampling + decoding), so the streaming
overhead shows.

The measurement functions are what tests/test_longform.py asserts on.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence

import numpy as np
import torch

NEAR_SEAM_SECONDS = 0.010  # "within 10 ms of a seam": of the crossfade stretch around it
RMS_STRETCH_SECONDS = 0.050
BEFORE_STRETCHES = 4  # 50 ms stretches "just before" a seam (200 ms)
TOLERANCE = 0.03  # pitch: within 3%
A4, E5 = 440.0, 659.26


def peak_hz(audio: torch.Tensor, sample_rate: int, low: float = 30.0) -> float:
    """The strongest spectral peak above `low` Hz of the channel mean (Hann window, 8x zero padding)."""
    x = audio.float().mean(0).numpy()
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), 8 * len(x)))
    freqs = np.fft.rfftfreq(8 * len(x), 1 / sample_rate)
    spec[freqs < low] = 0
    return float(freqs[int(np.argmax(spec))])


def rms_db(audio: torch.Tensor) -> float:
    return float(20 * torch.log10(audio.float().pow(2).mean().sqrt() + 1e-12))


def seam_scores(audio: torch.Tensor, seams: Sequence[int], sample_rate: int, crossfade: int) -> dict:
    """Per seam (a sample index, the crossfade's centre): the largest jump within 10 ms of the crossfade
    stretch, as a ratio of the 99.9th percentile of the jumps everywhere else (<= 1 passes), and the
    largest level difference (dB) of the 50 ms stretches covering that span from the 200 ms before."""
    jumps = (audio[:, 1:] - audio[:, :-1]).abs().amax(0)
    near = int(NEAR_SEAM_SECONDS * sample_rate) + crossfade // 2
    elsewhere = torch.ones_like(jumps, dtype=torch.bool)
    for s in seams:
        elsewhere[max(0, s - near) : s + near] = False
    p999 = float(torch.quantile(jumps[elsewhere].double(), 0.999))
    stretch = int(RMS_STRETCH_SECONDS * sample_rate)
    rows = []
    for s in seams:
        lo, hi = s - near, s + near
        before = rms_db(audio[:, lo - BEFORE_STRETCHES * stretch : lo])
        across = [rms_db(audio[:, a : a + stretch]) for a in range(lo, hi, stretch)]
        rows.append({"seam_seconds": round(s / sample_rate, 4), "jump": float(jumps[lo:hi].max()),
                     "jump_ratio": float(jumps[lo:hi].max()) / p999,
                     "level_db": max(abs(a - before) for a in across)})
    return {"p999_jump": p999, "seams": rows, "worst_jump_ratio": max((r["jump_ratio"] for r in rows), default=0.0),
            "worst_level_db": max((r["level_db"] for r in rows), default=0.0)}


def second_stretches(audio: torch.Tensor, sample_rate: int) -> list[torch.Tensor]:
    return [audio[:, k * sample_rate : (k + 1) * sample_rate] for k in range(audio.shape[-1] // sample_rate)]


def continuity_scores(audio: torch.Tensor, sample_rate: int, pitch_hz: float | None = None) -> dict:
    """Every 1 s stretch's level against the median of them (dB) and, for a tone, its strongest peak
    against `pitch_hz` (relative error)."""
    stretches = second_stretches(audio, sample_rate)
    levels = [rms_db(s) for s in stretches]
    median = float(np.median(levels))
    out = {"levels_db": [round(v, 2) for v in levels], "median_db": round(median, 2),
           "worst_level_db": max(abs(v - median) for v in levels)}
    if pitch_hz is not None:
        peaks = [peak_hz(s, sample_rate) for s in stretches]
        out.update(peaks_hz=[round(p, 1) for p in peaks],
                   worst_pitch_error=max(abs(p / pitch_hz - 1) for p in peaks))
    return out


def schedule_scores(audio: torch.Tensor, sample_rate: int, change_seconds: float, window_seconds: float,
                    before_hz: float = A4, after_hz: float = E5) -> dict:
    """The peaks of the 1 s stretches that end by the change (against `before_hz`) and of those that start
    one window or more after it (against `after_hz`): the worst relative errors, None where the piece
    has no such stretch (a piece shorter than the change plus one window and a second)."""
    stretches = second_stretches(audio, sample_rate)
    before = [peak_hz(s, sample_rate) for k, s in enumerate(stretches) if k + 1 <= change_seconds]
    after = [peak_hz(s, sample_rate) for k, s in enumerate(stretches) if k >= change_seconds + window_seconds]
    return {"before_hz": [round(p, 1) for p in before], "after_hz": [round(p, 1) for p in after],
            "worst_before_error": max((abs(p / before_hz - 1) for p in before), default=None),
            "worst_after_error": max((abs(p / after_hz - 1) for p in after), default=None)}


def timed(model, **kwargs) -> tuple[object, dict]:
    """Run stream_long, recording when each window starts and each stretch arrives."""
    from stable_audio_3.longform import LongGeneration, long_request, model_plan, stream_plan

    plan = model_plan(model, long_request(**kwargs))
    starts, arrivals, seams = [], [], []
    audio = torch.empty(2, plan.total)
    t0 = time.perf_counter()
    for s in stream_plan(model, plan, on_window=lambda w, n: starts.append(time.perf_counter())):
        arrivals.append(time.perf_counter())
        audio[:, s.start : s.start + s.audio.shape[-1]] = s.audio
        if s.seam_snr_db is not None:
            seams.append((s.seam_snr_db, abs(s.seam_level_db)))
    total = time.perf_counter() - t0
    windows = [a - b for a, b in zip(arrivals, starts, strict=True)]
    return LongGeneration(audio, plan.windows, plan, plan.sample_rate), {
        "first_audio_s": round(arrivals[0] - t0, 3), "total_s": round(total, 3),
        "windows_sum_s": round(sum(windows), 3), "windows": len(windows),
        "realtime_factor": round(plan.total / plan.sample_rate / total, 2),
        "seam_decodes_agree_db": round(min((a for a, _ in seams), default=math.inf), 1),
        "seam_level_difference_db": round(max((d for _, d in seams), default=0.0), 4)}


def noise_continuity_by_seed(model, colour: str, seeds, **kwargs) -> list[dict]:
    """`continuity_scores` of one long piece of `colour` per seed: a model's own level wanders from
    seed to seed, so one piece says little."""
    from stable_audio_3.longform import generate_long

    pieces = (generate_long(model, colour, seed=seed, **kwargs) for seed in seeds)
    return [continuity_scores(piece.audio, piece.sample_rate) for piece in pieces]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cfg-scale", type=float, default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from stable_audio_3 import StableAudioModel

    model = StableAudioModel.from_pretrained(args.model, device="cpu")
    settings = {k: v for k, v in (("steps", args.steps), ("cfg_scale", args.cfg_scale)) if v is not None}
    common = dict(duration=args.seconds, seed=args.seed, **settings)
    seeds = range(args.seed, args.seed + 6)
    tone, timing = timed(model, prompt="sine wave a4", **common)
    sr, plan = tone.sample_rate, tone.plan
    seams = [w.seam for w in tone.windows[1:]]
    noise, _ = timed(model, prompt="pink noise", **common)
    change = round(args.seconds / 2)
    scheduled, _ = timed(model, schedule=[(0, "sine wave a4"), (change, "sine wave e5")], **common)
    report = {
        "plan": plan.describe(), "settings": {"steps": plan.base.steps, "cfg_scale": plan.base.cfg_scale},
        "seeds": tone.seeds, "timing": timing,
        "tone_seams": seam_scores(tone.audio, seams, sr, plan.crossfade),
        "tone_continuity": continuity_scores(tone.audio, sr, A4),
        "noise_seams": seam_scores(noise.audio, seams, sr, plan.crossfade),
        "noise_continuity": continuity_scores(noise.audio, sr),
        "schedule": schedule_scores(scheduled.audio, sr, change, plan.window_seconds),
        "noise_worst_level_db_by_seed": {
            colour: [
                round(c["worst_level_db"], 2)
                for c in noise_continuity_by_seed(model, colour, seeds, duration=args.seconds, **settings)
            ]
            for colour in ("pink noise", "brown noise")
        },
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
