"""Property-based fuzzing of the request type through the API and the CLI, on the tiny model.

Whatever the options, a call either returns finite audio of the asked shape or raises a ValueError
(`OptionError`, `NonFiniteAudio`, an unreadable file) with a message; the CLI exits 0, 1 or 2 with
one `error:` line and never a traceback. The model is loaded with small `Limits`, so every request
it accepts is small work by construction: bounded time without timing anything. Examples are
derandomized, so CI runs the same ones every time.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from golden import fixture_dir
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stable_audio_3 import StableAudioModel, cli
from stable_audio_3.request import FIELDS, SAMPLERS, GenerationRequest, Limits, OptionError

# Accepted work stays small: a few steps, items and seconds (the tiny model runs 30 s in ~0.3 s).
LIMITS = Limits(max_steps=3, max_batch_size=3, max_prompt_chars=300, max_total_seconds=2.0,
                max_input_values=400_000)
FUZZ = settings(max_examples=40, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
_MODEL: dict[str, StableAudioModel] = {}


def model() -> StableAudioModel:
    if "m" not in _MODEL:
        _MODEL["m"] = StableAudioModel.from_pretrained(fixture_dir("tiny-small"), device="cpu", limits=LIMITS)
    return _MODEL["m"]


# -- strategies ------------------------------------------------------------------------------------

special = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-9, 1e308, -0.0])
small_float = st.floats(-0.5, 3.0, allow_nan=False) | special
unit = st.floats(-0.2, 1.2, allow_nan=False) | special
number = small_float | st.integers(-5, 5) | st.sampled_from([10**7, 2**64, True, "1", None])
text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=20) | st.sampled_from(
    ["a\udcff", "\ud800", "x" * 301, ""])


def per_item(values):
    return values | st.lists(values, min_size=0, max_size=4)


def audio(rates, samples, channels, odd_values: bool):
    @st.composite
    def array(draw):
        x = torch.randn(draw(channels), draw(samples)) * 0.1
        if odd_values and draw(st.booleans()) and x.numel():
            x[0, 0] = draw(st.sampled_from([math.nan, math.inf, 0.5]))
        return np.ascontiguousarray(x.T.numpy()) if draw(st.booleans()) else x  # soundfile's layout, or torch's

    return st.tuples(rates, array()) | st.tuples(array(), rates)


def sorted_pair(values):
    return st.tuples(values, values).map(sorted).map(tuple)


# Each field: values a user means (small, so that accepted work stays small), and wild ones.
VALID = {
    "prompt": st.sampled_from(["rain", "a cello", "café ☕"]) | st.lists(st.sampled_from(["a", "b"]), min_size=1,
                                                                        max_size=2),
    "negative_prompt": st.sampled_from(["noise", ""]),
    "duration": st.floats(0.05, 0.6),
    "steps": st.integers(1, 3),
    "cfg_scale": st.floats(0, 7),
    "seed": st.integers(-1, 2**63 - 1),
    "batch_size": st.integers(1, 2),
    "sampler_type": st.sampled_from(SAMPLERS),
    "apg_scale": st.floats(0, 1),
    "cfg_interval": sorted_pair(st.floats(0, 1)),
    "scale_phi": st.floats(0, 1),
    "cfg_norm_threshold": st.floats(0, 10),
    "dist_shift": st.sampled_from([None, {"type": "none"}, {"type": "logsnr", "rate": 0.5},
                                   {"type": "flux", "alpha_min": 1.0, "alpha_max": 3.0}, {"type": "full"}]),
    "duration_padding_sec": st.floats(0, 0.5),
    "sample_size": st.integers(4096, 300_000),
    "init_audio": audio(st.sampled_from([44100, 48000, 8000, 44101]), st.integers(1, 5000), st.integers(1, 2),
                        False),
    "init_noise_level": st.floats(0, 1),
    "inpaint_audio": audio(st.sampled_from([44100, 22050]), st.integers(1, 5000), st.integers(1, 2), False),
    "inpaint_mask_start_seconds": st.floats(0, 0.3),
    "inpaint_mask_end_seconds": st.floats(0.3, 0.6),
    "continuation": st.booleans(),
    "inpaint_paste_back": st.booleans(),
    "lora_configs": st.none(),
    "chunked_decode": st.sampled_from([None, True, False]),
    "return_latents": st.booleans(),
    "clamp": st.booleans(),
}
wild_shift = st.fixed_dictionaries(
    {"type": st.sampled_from(["logsnr", "full", "flux", "none", "warp"])},
    optional={"alpha_min": small_float, "alpha_max": small_float, "min_length": st.integers(-5, 5000),
              "max_length": st.integers(-5, 5000), "rate": small_float, "use_sine": st.booleans() | number})
wild_audio = audio(st.sampled_from([1, 999, 768_001, math.nan, 22050.5, -44100, 44100]),
                   st.sampled_from([0, 1, 100, 200_001]), st.sampled_from([1, 2, 9]), True) | st.sampled_from(
    ["/nonexistent.wav", "/", "x", None]) | st.just(torch.zeros(2, 10))
WILD = {
    "prompt": per_item(text) | st.none(),
    "negative_prompt": per_item(text) | number,
    "duration": per_item(small_float) | number,
    "steps": st.integers(-2, 5) | st.sampled_from([10**7, 2.5, math.nan]) | number,
    "cfg_scale": special | number,
    "seed": per_item(st.integers(-3, 2**64)) | number,
    "batch_size": st.integers(-1, 5) | st.sampled_from([20000, 1.0]) | number,
    "sampler_type": st.sampled_from(["ddim", None, 3]),
    "apg_scale": unit | number,
    "cfg_interval": st.tuples(unit, unit) | number | st.lists(unit, max_size=3),
    "scale_phi": unit | number,
    "cfg_norm_threshold": small_float | number,
    "dist_shift": wild_shift | number,
    "duration_padding_sec": small_float | number,
    "sample_size": st.integers(-1, 300_000) | st.sampled_from([10**9, 4096]) | number,
    "init_audio": wild_audio,
    "init_noise_level": unit | number,
    "inpaint_audio": wild_audio,
    "inpaint_mask_start_seconds": per_item(small_float) | number,
    "inpaint_mask_end_seconds": per_item(small_float) | number,
    "continuation": number,
    "inpaint_paste_back": number,
    "lora_configs": st.lists(st.fixed_dictionaries({"lora_index": st.integers(-1, 2)},
                                                   optional={"interval": st.tuples(unit, unit)}), max_size=2) | number,
    "chunked_decode": st.sampled_from(["yes", 1]),
    "return_latents": number,
    "clamp": number,
}
assert set(VALID) == set(WILD) == set(FIELDS) - {"inpaint_mask", "noise_device", "truncate_output_to_duration"}


@st.composite
def requests(draw) -> dict:
    """A prompt, a duration (the default, 120 s, is past the fuzz limits) and a short padding, a few
    more valid fields, and up to two wild ones."""
    names = sorted(VALID)
    chosen = draw(st.lists(st.sampled_from(names), max_size=6, unique=True))
    wild = draw(st.lists(st.sampled_from(names), max_size=2, unique=True))
    options = {name: draw(VALID[name]) for name in ["prompt", "duration", "duration_padding_sec", *chosen]}
    options.update({name: draw(WILD[name]) for name in wild})
    return options


REQUEST = requests()


# -- the API ---------------------------------------------------------------------------------------


@FUZZ
@given(options=REQUEST)
def test_api_refuses_cleanly_or_returns_finite_audio(options: dict) -> None:
    assert set(options) <= set(FIELDS)
    m = model()
    try:
        gen = m.run(GenerationRequest(**options))
    except OptionError as e:  # names a field, says what is allowed
        event(f"refused: {e.field}")
        assert str(e) and e.field.split("[")[0].split(" ")[0] in FIELDS, e
        return
    except ValueError as e:  # an unreadable input, non-finite output: a message, never a bare error
        event(f"failed: {type(e).__name__}")
        assert len(str(e)) > 10, repr(e)
        return
    event("generated")
    r = gen.request
    assert r.steps <= LIMITS.max_steps and r.batch_size <= LIMITS.max_batch_size
    assert r.batch_size * max(r.duration) <= LIMITS.max_total_seconds
    assert gen.audio.shape[0] == r.batch_size and torch.isfinite(gen.audio).all()
    if not r.return_latents:
        assert gen.audio.shape[1] == 2 and gen.audio.shape[-1] <= int(max(r.duration) * 44100)
        if r.clamp:
            assert gen.audio.abs().max() <= 1


# -- the CLI ---------------------------------------------------------------------------------------

FLAG_VALUES = {
    "--duration": st.sampled_from(["0.5", "1", "nan", "inf", "-1", "1e-6", "1e308", "x", "0.5 0.25"]),
    "--steps": st.sampled_from(["1", "2", "0", "100000", "2.5", "nan", "-1"]),
    "--cfg-scale": st.sampled_from(["1", "0", "7", "nan", "1e9", "-1"]),
    "--seed": st.sampled_from(["1", "-1", "-2", "18446744073709551616", "1 2", "x"]),
    "--batch-size": st.sampled_from(["1", "2", "0", "20000", "1.5"]),
    "--sampler": st.sampled_from([*SAMPLERS, "ddim"]),
    "--dist-shift": st.sampled_from(['{"type": "flux", "alpha_min": NaN, "alpha_max": 1}', '{"type": "none"}', "{",
                                     "3", '{"type": "full", "min_length": 5, "max_length": 5}']),
    "--duration-padding": st.sampled_from(["0", "1", "-1", "1e9"]),
    "--sample-size": st.sampled_from(["4096", "0", "1000000000"]),
    "--init-audio": st.sampled_from(["{wav}", "{bad}", "{dir}", "{missing}"]),
    "--init-noise-level": st.sampled_from(["0.5", "2", "nan"]),
    "--inpaint-start": st.sampled_from(["0", "0.2", "-1", "nan"]),
    "--inpaint-end": st.sampled_from(["0.3", "0.1", "inf"]),
    "--inpaint-audio": st.sampled_from(["{wav}", "{bad}"]),
    "--lora-configs": st.sampled_from(['[{"lora_index": 0}]', "[1]", "{}"]),
    "-o": st.sampled_from(["{out}/o.wav", "{out}/o.mp3", "{out}/o.xyz", "{out}", "{file}/o.wav"]),
}
SWITCHES = ["--continuation", "--paste-back", "--no-clamp", "--chunked-decode", "--no-chunked-decode"]


@st.composite
def command_line(draw) -> list[str]:
    """A short valid run (a prompt, 0.25 s, no padding), then up to three flags with drawn values."""
    good = st.sampled_from(["rain", "two words", "café ☕"])
    prompt = draw(st.one_of(good, good, good, st.sampled_from(["a\udcffb", "", "x" * 4001])))
    flags = {"--duration": "0.25", "--duration-padding": "0"}
    for name in draw(st.lists(st.sampled_from(sorted(FLAG_VALUES)), max_size=3, unique=True)):
        flags[name] = draw(FLAG_VALUES[name])
    argv = ["-q", "-p", prompt]
    for name, value in flags.items():
        argv += [name, *value.split(" ")]
    argv += draw(st.lists(st.sampled_from(SWITCHES), max_size=2, unique=True))
    return argv


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fuzz_cli")
    sf.write(root / "in.wav", np.zeros((22050, 2), np.float32), 44100)
    (root / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    (root / "dir").mkdir()
    (root / "file").write_text("a file, not a folder")
    return dict(wav=str(root / "in.wav"), bad=str(root / "bad.wav"), dir=str(root / "dir"),
                missing=str(root / "missing.wav"), file=str(root / "file"), root=str(root))


@FUZZ
@given(argv=command_line())
def test_cli_exits_0_1_or_2_with_one_error_line_and_no_traceback(argv: list[str], files: dict, monkeypatch,
                                                                 tmp_path_factory) -> None:
    out = tmp_path_factory.mktemp("out")
    names = {f"{{{k}}}": v for k, v in {**files, "out": str(out)}.items()}
    for key, value in names.items():
        argv = [a.replace(key, value) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(out / "o.wav")]
    loaded = model()
    monkeypatch.setattr(StableAudioModel, "from_pretrained", lambda *a, **k: loaded)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
    stderr = err.getvalue()
    event(f"exit {code}")
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr  # the latter: the catch-all for bugs
    assert code in (0, 1, 2), (code, stderr)
    written = sorted(p for p in Path(out).rglob("*") if p.is_file())
    if code == 0:
        assert written and all(not p.name.startswith(".") for p in written)
        for path in written:
            audio, _ = sf.read(str(path), dtype="float32")
            assert np.isfinite(audio).all() and len(audio) > 0
    else:
        last = stderr.strip().splitlines()[-1]
        assert "error: " in last and last.startswith("stable-audio"), stderr
        assert not written, written  # nothing half-written, nothing left behind


@pytest.mark.parametrize("args,code,message", [
    (["--steps", "nan"], 2, "argument --steps: 'nan' is not an integer"),
    (["--duration", "nan"], 2, "argument --duration: nan is invalid; a number > 0 is required"),
    (["--dist-shift", '{"type": "flux", "alpha_min": NaN}'], 2, "--dist-shift.alpha_min=nan is invalid"),
    (["--steps", "1", "--duration", "0.25"], 0, ""),
])
def test_cli_as_a_process(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    res = subprocess.run([sys.executable, "-m", "stable_audio_3.cli", "-q", "-p", "x", "--model",
                          str(fixture_dir("tiny-small")), "-o", str(tmp_path / "o.wav"), *args],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == code, res.stderr
    assert "Traceback" not in res.stderr and message in res.stderr
    if code == 0:
        audio, sr = sf.read(str(tmp_path / "o.wav"), dtype="float32")
        assert sr == 44100 and audio.shape == (11025, 2) and np.isfinite(audio).all()
