"""Long-form generation (`stable_audio_3.longform`, `stable-audio long`) on the shipped demo model:
the window plan, the checks, streaming order, and the measured quality of seams, continuity and a
prompt schedule (the measurements are `benchmarks/bench_longform.py`'s, which reports them).

The API pieces run at 8 steps, cfg 1: the demo's model card recommends it for continuation (at its
usual 32 steps, cfg 4 each continued window comes out louder than the one before; see the
benchmark). The command-line acceptance runs the command's own defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.bench_longform import (
    A4,
    E5,
    TOLERANCE,
    continuity_scores,
    noise_continuity_by_seed,
    schedule_scores,
    seam_scores,
)
from stable_audio_3 import StableAudioModel
from stable_audio_3.audio import pcm_bytes, read_audio, wav_header
from stable_audio_3.longform import (
    DEFAULT_MAX_DURATION,
    LongFormRequest,
    generate_long,
    long_request,
    model_plan,
    stream_long,
)
from stable_audio_3.longform_cli import main as long_main
from stable_audio_3.request import GenerationRequest, ModelDefaults, OptionError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "stable_audio_3" / "assets" / "demo"
SR = 44100
FAST = dict(steps=8, cfg_scale=1.0)  # the demo card's continuation settings
SEAM_JUMP_RATIO = 1.0  # largest jump near a seam <= the 99.9th percentile of jumps elsewhere
SEAM_LEVEL_DB = 3.0
LEVEL_DB = 3.0
NOISE_SEEDS = range(3, 9)
ACCEPTANCE = ["-p", "sine wave a4", "--duration", "20", "--seed", "3"]


def demo_plan(**kwargs):
    """The plan of a long-form request for the demo model, made without loading it."""
    config = json.loads((DEMO / "model_config.json").read_text())
    return long_request(**kwargs).plan(ModelDefaults.from_config(config), 4096, 2)


@pytest.fixture(scope="module")
def model() -> StableAudioModel:
    torch.set_num_threads(2)
    return StableAudioModel.from_pretrained(DEMO, device="cpu")


# -- the plan (no model) ---------------------------------------------------------------------------


def test_windows_tile_the_piece_and_each_seam_lies_inside_its_overlap():
    plan = demo_plan(prompt="sine wave a4", duration=20, seed=3)
    assert (plan.window, plan.overlap, plan.margin) == (66, 16, 8)  # 6.13 s (the maximum), 1.49 s, 0.74 s
    assert plan.total == 20 * SR and len(plan.windows) == 5
    assert [w.seed for w in plan.windows] == [3, 4, 5, 6, 7]
    hop = (plan.window - plan.margin - plan.overlap) * 4096
    assert hop % (2 * 4096) == 0  # whole attention chunks of the decoder
    assert plan.windows[0].start == 0 and plan.windows[-1].end == plan.total
    for before, w in zip(plan.windows, plan.windows[1:], strict=False):
        assert w.start == before.end  # the delivered stretches tile the piece
        assert w.first == before.first + hop and w.kept == plan.overlap
        assert w.first <= w.seam - plan.crossfade // 2 and w.seam + plan.crossfade // 2 <= w.new_start
        assert w.seam % 4096 == 2048  # mid-frame: the crossfade stays inside one latent frame
        assert before.stop - plan.margin * 4096 >= w.new_start  # what it keeps precedes the dropped margin
    last = plan.windows[-1]
    assert last.stop - plan.margin * 4096 >= plan.total  # the last window's used part reaches the end


def test_a_piece_within_one_window_is_one_window():
    plan = demo_plan(prompt="sine wave a4", duration=5.0, seed=9)
    assert len(plan.windows) == 1 and plan.total == 5 * SR and plan.windows[0].seed == 9


def test_each_window_takes_the_prompt_in_force_where_its_new_part_begins():
    plan = demo_plan(schedule=[(0, "sine wave a4"), (10, "sine wave e5")], duration=20, seed=1)
    prompts = [w.prompt for w in plan.windows]
    assert prompts == ["sine wave e5" if w.new_start_seconds >= 10 else "sine wave a4" for w in plan.windows]
    assert prompts.count("sine wave e5") >= 1 and prompts[0] == "sine wave a4"
    mixed = demo_plan(prompt="saw c4", schedule=[(7, "square e4")], duration=12, seed=1)
    assert [w.prompt for w in mixed.windows][0] == "saw c4" and mixed.windows[-1].prompt == "square e4"


def test_a_random_seed_is_drawn_once_and_counted_up():
    seeds = [w.seed for w in demo_plan(prompt="sine a4", duration=20, seed=-1).windows]
    assert 0 <= seeds[0] < 99999 and seeds == list(range(seeds[0], seeds[0] + 5))


@pytest.mark.parametrize("kwargs, field, message", [
    (dict(prompt="a", duration=4000), "duration",
     f"duration=4000 is invalid; a number in (0, {DEFAULT_MAX_DURATION:g}] is required"),
    (dict(prompt="a", duration=0), "duration", "duration=0 is invalid; a number in (0, 3600] is required"),
    (dict(prompt="a"), "duration", "duration=None is invalid; the total length in seconds is required"),
    (dict(duration=10), "prompt", "prompt: a prompt or a schedule is required"),
    (dict(schedule=[(2, "a")], duration=10), "schedule[0]",
     "schedule[0]: starts at 2 s; with no prompt, the schedule must start at 0 s"),
    (dict(prompt="a", schedule=[(0, "b")], duration=10), "schedule[0]",
     "schedule[0]: starts at 0 s, not after the prompt, which plays from 0 s; schedule times must "
     "increase"),
    (dict(schedule=[(0, "a"), (5, "b"), (3, "c")], duration=10), "schedule[2]",
     "schedule[2]: starts at 3 s, not after 5 s; schedule times must increase"),
    (dict(schedule=[(0, "a"), (12, "b")], duration=10), "schedule[1]",
     "schedule[1]: start 12 must be a number of seconds in [0, duration=10)"),
    (dict(schedule=[(0, "a"), (1, "")], duration=10), "schedule[1]",
     "schedule[1]: the prompt must be non-empty text of at most 4000 characters"),
    (dict(schedule=[(0, "a", "b")], duration=10), "schedule[0]",
     "schedule[0]=(0, 'a', 'b') is invalid; a (start_seconds, prompt) pair is required"),
    (dict(prompt=["a", "b"], duration=10), "prompt",
     "prompt: a long-form piece is one item: give one prompt, not a list"),
    (dict(prompt="a", duration=10, seed=[1, 2]), "seed",
     "seed: a long-form piece is one item: give one seed, not a list"),
    (dict(prompt="a", duration=10, continuation=True), "continuation",
     "continuation: not available for long-form pieces"),
    (dict(prompt="a", duration=10, window_seconds=-1), "window_seconds",
     "window_seconds=-1 is invalid; a number > 0 is required"),
    (dict(prompt="a", duration=10, steps=0), "steps", "steps=0 is invalid; an integer in [1, 1000] is required"),
])
def test_bad_requests_are_refused_before_any_work(kwargs, field, message):
    with pytest.raises(OptionError) as e:
        long_request(**kwargs)
    assert (e.value.field, str(e.value)) == (field, message)


@pytest.mark.parametrize("kwargs, field, message", [
    (dict(window_seconds=10), "window_seconds",
     "window_seconds: window_seconds=10 is too long; this model allows at most 6.13 seconds"),
    (dict(window_seconds=4, overlap_seconds=3, margin_seconds=1), "overlap_seconds",
     "overlap_seconds: the overlap (2.97 s) and the margin (0.93 s) must leave room in the window (3.90 s) for "
     "new audio"),
    (dict(overlap_seconds=0.4, crossfade_seconds=0.5), "crossfade_seconds",
     "crossfade_seconds: crossfade_seconds=0.5 is longer than the overlap and the hop allow (0.28 s)"),
    (dict(seed=2**63 - 2), "seed", "seed: seed=9223372036854775806 leaves no room for the 5 window seeds seed + i; "
     "at most 9223372036854775803 is allowed here"),
])
def test_what_needs_the_model_is_refused_by_the_plan(kwargs, field, message):
    with pytest.raises(OptionError) as e:
        demo_plan(prompt="sine a4", duration=20, **kwargs)
    assert (e.value.field, str(e.value)) == (field, message)


def test_the_total_may_pass_one_hour_when_the_cap_is_raised():
    request = long_request(prompt="a", duration=4000, max_duration=5000)
    assert request.duration == 4000 and request.max_duration == 5000
    with pytest.raises(TypeError, match="unknown option.s. windw"):
        long_request(prompt="a", duration=10, windw=3)
    with pytest.raises(OptionError, match="request.duration: a long-form piece plans each window's duration"):
        LongFormRequest(GenerationRequest(prompt="a", duration=3.0), 10.0).verify()


# -- generation on the demo model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tone(model) -> dict:
    """`sine wave a4`, 20 s, seed 3, streamed; the events say when windows started and stretches came."""
    events, stretches = [], []
    for s in stream_long(model, "sine wave a4", 20, seed=3, on_window=lambda w, n: events.append(("start", w.index)),
                         **FAST):
        events.append(("stretch", s.window.index))
        stretches.append(s)
    return {"events": events, "stretches": stretches, "audio": torch.cat([s.audio for s in stretches], dim=-1)}


def test_each_stretch_comes_before_the_next_window_is_sampled(tone):
    n = len(tone["stretches"])
    assert n == 5
    assert tone["events"] == [e for i in range(n) for e in (("start", i), ("stretch", i))]
    starts = [s.start for s in tone["stretches"]]
    ends = [s.start + s.audio.shape[-1] for s in tone["stretches"]]
    assert starts[0] == 0 and starts[1:] == ends[:-1] and ends[-1] == 20 * SR


def test_the_stream_and_the_whole_piece_are_the_same_samples(model, tone):
    piece = generate_long(model, "sine wave a4", 20, seed=3, **FAST)
    assert piece.audio.shape == (2, 20 * SR) and piece.seeds == [3, 4, 5, 6, 7]
    torch.testing.assert_close(piece.audio, tone["audio"], rtol=0, atol=0)
    assert torch.isfinite(piece.audio).all() and piece.audio.abs().max() <= 1


def test_the_first_window_is_plain_generation_with_the_seed(model, tone):
    first = tone["stretches"][0]
    plain = model.generate("sine wave a4", duration=model.max_duration, seed=3, **FAST)[0]
    torch.testing.assert_close(first.audio, plain[:, : first.audio.shape[-1]], rtol=0, atol=0)


def test_both_windows_decode_the_kept_latents_alike_across_each_seam(tone):
    # The kept latents are continued and put back exactly, so the overlap decodes to the same audio on
    # both sides (an audio-domain continuation would agree only to the model's ~17 dB inpainting SNR).
    for s in tone["stretches"][1:]:
        assert s.seam_snr_db >= 40, s.seam_snr_db
        assert abs(s.seam_level_db) <= 0.1, s.seam_level_db


def test_tone_seams_continuity_and_pitch(tone):
    audio, windows = tone["audio"], [s.window for s in tone["stretches"]]
    seams = seam_scores(audio, [w.seam for w in windows[1:]], SR, 2 * (windows[1].seam - windows[1].start))
    assert seams["worst_jump_ratio"] <= SEAM_JUMP_RATIO, seams
    assert seams["worst_level_db"] <= SEAM_LEVEL_DB, seams
    steady = continuity_scores(audio, SR, A4)
    assert steady["worst_level_db"] <= LEVEL_DB, steady
    assert steady["worst_pitch_error"] <= TOLERANCE, steady


@pytest.mark.parametrize("colour", ["pink noise", "brown noise"])
def test_noise_colour_keeps_its_level(model, colour):
    """Six 20 s pieces per colour (seeds 3-8): at least five with every 1 s stretch within LEVEL_DB
    of the piece's median, none beyond LEVEL_DB + 1. One seed is no measure of a model's own level
    wander: the demo shipped before issue 22's retrain passed at seed 3 but failed at seeds 5, 6 and
    8 (pink: 2.43, 2.55, 3.67, 3.45, 2.24, 3.87 dB)."""
    pieces = noise_continuity_by_seed(model, colour, NOISE_SEEDS, duration=20, **FAST)
    assert all(p["median_db"] > -30 for p in pieces), pieces  # noise, not silence
    worst = [round(p["worst_level_db"], 2) for p in pieces]
    assert sum(w <= LEVEL_DB for w in worst) >= len(NOISE_SEEDS) - 1, worst
    assert max(worst) <= LEVEL_DB + 1, worst


def test_schedule_scores_of_a_piece_too_short_to_judge_are_none():
    """A piece that ends before one window past the change has no stretch to judge: None, not a crash."""
    t = torch.arange(3 * SR) / SR
    tone = torch.sin(2 * torch.pi * A4 * t).expand(2, -1)
    scores = schedule_scores(tone, SR, 2, 5.0, A4, E5)
    assert scores["after_hz"] == [] and scores["worst_after_error"] is None, scores
    assert len(scores["before_hz"]) == 2 and scores["worst_before_error"] < 0.01, scores


def test_schedule_changes_the_pitch_through_the_api(model):
    piece = generate_long(model, schedule=[(0, "sine wave a4"), (10, "sine wave e5")], duration=20, seed=3, **FAST)
    scores = schedule_scores(piece.audio, SR, 10, piece.plan.window_seconds, A4, E5)
    assert len(scores["before_hz"]) == 10 and len(scores["after_hz"]) >= 3, scores
    assert scores["worst_before_error"] <= TOLERANCE and scores["worst_after_error"] <= TOLERANCE, scores


def test_continuation_settings_come_from_the_config_when_it_has_them(model):
    """The demo ships its card's continuation advice (8 steps, cfg 1); a config without it gets the
    model's usual defaults, and what the request names always wins."""
    config = model.components.config
    keys = ("default_continuation_steps", "default_continuation_cfg_scale")
    shipped = {k: config.pop(k) for k in keys if k in config}
    try:
        plain = model_plan(model, long_request("sine a4", 20, seed=1))
        config.update(default_continuation_steps=8, default_continuation_cfg_scale=1.0)
        tuned = model_plan(model, long_request("sine a4", 20, seed=1))
        named = model_plan(model, long_request("sine a4", 20, seed=1, steps=12))
    finally:
        for k in keys:
            config.pop(k, None)
        config.update(shipped)
    assert shipped == {"default_continuation_steps": 8, "default_continuation_cfg_scale": 1.0}
    assert (plain.base.steps, plain.base.cfg_scale) == (model.defaults.steps, model.defaults.cfg_scale)
    assert (tuned.base.steps, tuned.base.cfg_scale) == (8, 1.0)
    assert (named.base.steps, named.base.cfg_scale) == (12, 1.0)  # what the request names wins


# -- the command line ------------------------------------------------------------------------------


def acceptance_scores(audio: torch.Tensor) -> None:
    plan = demo_plan(prompt="sine wave a4", duration=20, seed=3)
    seams = seam_scores(audio, [w.seam for w in plan.windows[1:]], SR, plan.crossfade)
    steady = continuity_scores(audio, SR, A4)
    assert seams["worst_jump_ratio"] <= SEAM_JUMP_RATIO and seams["worst_level_db"] <= SEAM_LEVEL_DB, seams
    assert steady["worst_level_db"] <= LEVEL_DB and steady["worst_pitch_error"] <= TOLERANCE, steady


@pytest.fixture(scope="module")
def cli_file(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("long") / "long.wav"
    assert long_main([*ACCEPTANCE, "-q", "-o", str(out)]) == 0
    return out


def test_cli_writes_a_20_second_file_that_passes_the_checks(cli_file):
    audio, sr = read_audio(cli_file)
    assert sr == SR and audio.shape == (2, 20 * SR)
    acceptance_scores(audio)
    assert not list(cli_file.parent.glob(".long.*"))  # no temporary file left behind


def test_cli_stream_sends_audio_before_the_second_window_is_sampled(cli_file, tmp_path):
    """The pipe holds 64 KiB and the first stretch is ~800 KB, so while the test has read only the header
    and 4 KiB, the command is still writing the first stretch: the second window's line cannot be out."""
    log = tmp_path / "stderr.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "stable_audio_3.cli", "long", *ACCEPTANCE, "-o", "-"],
                                stdout=subprocess.PIPE, stderr=err, cwd=tmp_path, env=env)
        try:
            header = proc.stdout.read(44)
            first = proc.stdout.read(4096)
            early = log.read_text()
            rest = proc.stdout.read()
        finally:
            proc.stdout.close()
            code = proc.wait(timeout=600)
    assert code == 0, log.read_text()
    assert header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt " and header[36:40] == b"data"
    assert header[4:8] == b"\xff\xff\xff\xff" and header[40:44] == b"\xff\xff\xff\xff"  # length unknown
    assert len(first) == 4096
    assert "window 1/5" in early and "window 2/5" not in early
    assert "window 5/5" in log.read_text()
    pcm = np.frombuffer(first + rest, dtype="<i2").reshape(-1, 2)
    assert pcm.shape[0] == 20 * SR
    streamed = torch.from_numpy(pcm.T.astype(np.float32) / 32767)
    acceptance_scores(streamed)
    stored, _ = read_audio(cli_file)  # the file (32-bit float) holds the same samples, unquantized
    expected = np.round(stored.numpy().T.clip(-1, 1) * 32767).astype("<i2")
    assert np.array_equal(pcm, expected)


def test_cli_schedule_changes_the_pitch(tmp_path):
    out = tmp_path / "sched.flac"
    code = long_main(["--at", "0", "sine wave a4", "--at", "10", "sine wave e5", "--duration", "20", "--seed", "3",
                      "--steps", "8", "--cfg-scale", "1", "-q", "-o", str(out)])
    assert code == 0
    audio, _ = read_audio(out)
    window = demo_plan(prompt="a", duration=20).window_seconds
    scores = schedule_scores(audio, SR, 10, window, A4, E5)
    assert scores["worst_before_error"] <= TOLERANCE and scores["worst_after_error"] <= TOLERANCE, scores


@pytest.mark.parametrize("bits, subtype, step", [(16, "PCM_16", 2**-15), (24, "PCM_24", 2**-23), (32, "FLOAT", 0)])
def test_stream_format_reads_back_with_libsndfile(bits, subtype, step, tmp_path):
    import soundfile as sf

    t = torch.arange(3000) / SR
    audio = torch.stack([0.9 * torch.sin(2 * torch.pi * 440 * t), -0.5 * torch.cos(2 * torch.pi * 220 * t)])
    path = tmp_path / "stream.wav"
    path.write_bytes(wav_header(SR, 2, bits) + pcm_bytes(audio[:, :1000], bits) + pcm_bytes(audio[:, 1000:], bits))
    data, sr = sf.read(path, dtype="float64")
    assert sf.info(path).subtype == subtype and sr == SR and data.shape == (3000, 2)
    assert np.abs(data.T - audio.double().numpy()).max() <= 1.5 * step + 1e-7  # libsndfile reads n / 2**(bits-1)


def test_cli_stops_when_the_reader_goes_away(tmp_path):
    log = tmp_path / "stderr.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "stable_audio_3.cli", "long", "-p", "sine wave a4", "--duration",
                                 "20", "--seed", "3", "--steps", "8", "--cfg-scale", "1", "-o", "-"],
                                stdout=subprocess.PIPE, stderr=err, cwd=tmp_path, env=env)
        assert len(proc.stdout.read(1000)) == 1000
        proc.stdout.close()
        code = proc.wait(timeout=600)
    text = log.read_text()
    assert code == 1 and "stable-audio long: standard output was closed; stopped" in text, text
    assert "window 2/5" not in text and "Traceback" not in text


@pytest.mark.parametrize("argv, message", [
    (["-p", "a", "--duration", "4000"], "--duration=4000.0 is invalid; a number in (0, 3600] is required"),
    (["--at", "5", "a", "--duration", "10"], "--at (entry 1): starts at 5 s; with no prompt, the schedule must "
     "start at 0 s"),
    (["--at", "0", "a", "--at", "3", "b", "--at", "2", "c", "--duration", "10"],
     "--at (entry 3): starts at 2 s, not after 3 s; schedule times must increase"),
    (["-p", "a", "--at", "0", "b", "--duration", "10"],
     "--at (entry 1): starts at 0 s, not after the prompt, which plays from 0 s; schedule times "
     "must increase"),
    (["-p", "a", "--at", "x", "b", "--duration", "10"], "--at (entry 1): 'x' is not a number of seconds"),
    (["-p", "a", "--duration", "10", "-o", "-", "--bit-depth", "16", "--no-clamp"],
     "--no-clamp keeps samples beyond [-1, 1], which only a 32-bit float stream holds; add --bit-depth 32"),
    (["-p", "a", "--duration", "10", "--steps", "0"], "argument --steps: 0 is invalid"),
    (["-p", "a", "--duration", "10", "-o", "x.aiff"], "-o/--output: unsupported extension '.aiff'"),
    (["-p", "a", "--duration", "10", "--lora-configs", '[{"x": 1}]'],
     "--lora-configs[0]={'x': 1} is invalid; a dict with 'lora_index'"),
    (["-p", "a", "--duration", "10", "--window", "0"], "argument --window: 0 is invalid; a number > 0 is required"),
])
def test_cli_usage_mistakes_exit_2_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        long_main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_window_too_long_for_the_model_exits_2(tmp_path, capsys):
    code = long_main(["-p", "a", "--duration", "10", "--window", "10", "-q", "-o", str(tmp_path / "x.wav")])
    assert code == 2
    assert "--window=10 is too long; this model allows at most 6.13 seconds" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()
