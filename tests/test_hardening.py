"""Issue 18: every bad input of the catalogue refused up front with a message naming it, bounded work,
never non-finite audio, never a traceback. One test (or parameter) per listed input, on the tiny model."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import fixture_dir
from safetensors import safe_open
from safetensors.torch import save_file

from stable_audio_3 import StableAudioModel, cli
from stable_audio_3.audio import resample, write_audio
from stable_audio_3.loading import ModelLoadError
from stable_audio_3.models.lora import LoraError
from stable_audio_3.pipeline import NonFiniteAudio
from stable_audio_3.request import DEFAULT_LIMITS, GenerationRequest, Limits, ModelDefaults, OptionError

NAN, INF = float("nan"), float("inf")
_MODEL: dict[str, StableAudioModel] = {}


def model() -> StableAudioModel:
    if "m" not in _MODEL:
        _MODEL["m"] = StableAudioModel.from_pretrained(fixture_dir("tiny-small"), device="cpu")
    return _MODEL["m"]


def tiny() -> Path:
    return fixture_dir("tiny-small")


def lora_a() -> Path:
    return tiny() / "lora" / "lora_a.safetensors"


def gen(**kwargs) -> torch.Tensor:
    return model().generate(**{"prompt": "x", "duration": 0.5, "steps": 2, "seed": 1, **kwargs})


def cli_run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """cli.main in this process: (exit code, stderr); argparse's exits are caught as codes."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from stable_audio_3.api import AutoencoderModel

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(StableAudioModel, "from_pretrained", refuse)
    monkeypatch.setattr(AutoencoderModel, "from_pretrained", refuse)


def model_folder(tmp_path: Path, edit) -> Path:
    """The tiny model's files (linked) with an edited copy of its model_config.json."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model.safetensors", "t5gemma-b-b-ul2"):
        (folder / name).symlink_to(tiny() / name)
    config = json.loads((tiny() / "model_config.json").read_text())
    edit(config)
    (folder / "model_config.json").write_text(json.dumps(config))
    return folder


def tone(path: Path, seconds: float = 0.5) -> Path:
    t = torch.arange(int(seconds * 44100)) / 44100
    write_audio(path, torch.stack([torch.sin(2 * math.pi * 220 * t)] * 2) * 0.5)
    return path


# -- 1. NaN is refused at the door; non-finite audio is never returned ---------------------------


def test_nan_shift_options_are_refused_naming_the_option() -> None:
    with pytest.raises(OptionError, match=r"^dist_shift.alpha_min=nan is invalid; a finite number is required$"):
        gen(dist_shift={"type": "flux", "alpha_min": NAN, "alpha_max": NAN})
    with pytest.raises(OptionError, match=r"^dist_shift: distribution shift type 'warp' is unknown; allowed: 'logsnr'"):
        gen(dist_shift={"type": "warp"})
    # finite options that still give a broken schedule (0/0 in the full shift) are refused too, before sampling
    with pytest.raises(OptionError, match=r"^dist_shift: these options give a schedule with NaN or infinite steps"):
        gen(dist_shift={"type": "full", "min_length": 10, "max_length": 10})
    with pytest.raises(OptionError, match=r"^dist_shift: distribution shift options .* are invalid for type 'flux'"):
        gen(dist_shift={"type": "flux", "alpha": 2.0})


def test_a_lora_file_holding_nan_is_refused_when_loaded(tmp_path: Path) -> None:
    with safe_open(str(lora_a()), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    key = sorted(tensors)[0]
    tensors[key] = torch.full_like(tensors[key], NAN)
    bad = tmp_path / "nan_lora.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    m = model()
    with pytest.raises(LoraError, match=rf"nan_lora.safetensors: these tensors hold NaN or infinite values.*\n  {key}"):
        m.load_lora(bad)
    assert len(m.loras) == 0


@pytest.mark.parametrize("strength", [NAN, INF, -INF, "x", None, True])
def test_set_lora_strength_takes_finite_numbers_only(strength) -> None:
    m = model()
    m.load_lora(lora_a())
    try:
        with pytest.raises(LoraError, match=rf"strength={strength!r} is invalid; a finite number is required"):
            m.set_lora_strength(strength)
        assert m.loras.strengths == [1.0]
    finally:
        m.unload_lora()


def test_lora_index_out_of_range_names_what_is_allowed() -> None:
    m = model()
    m.load_lora(lora_a())
    try:
        with pytest.raises(LoraError, match=r"lora_index 5 out of range: 1 LoRA\(s\) loaded; allowed: an integer in "
                                            r"\[0, 0\]") as err:
            m.set_lora_strength(0.5, lora_index=5)
        assert isinstance(err.value, IndexError)  # what it always was
        with pytest.raises(LoraError, match=r"lora_index='0' is invalid; an integer"):
            m.set_lora_strength(0.5, lora_index="0")
    finally:
        m.unload_lora()


def test_an_overflowing_lora_strength_raises_naming_it_instead_of_returning_nan() -> None:
    m = model()
    m.load_lora(lora_a())
    try:
        m.set_lora_strength(1e308)
        with pytest.raises(NonFiniteAudio, match=r"likely cause: the LoRA strength or the LoRA file \(lora_a "
                                                 r"\(lora_index 0\) at strength 1e\+308\)"):
            gen()
        with pytest.raises(NonFiniteAudio, match=r"generated latents contains NaN"):
            gen(return_latents=True)
    finally:
        m.unload_lora()


def test_cli_overflowing_lora_strength_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    code, err = cli_run(["-q", "-p", "x", "--model", str(tiny()), "--steps", "2", "--duration", "0.5",
                         "--lora-ckpt-path", str(lora_a()), "--lora-strength", "1e308", "-o", str(tmp_path / "o.wav")],
                        capsys)
    assert code == 1
    assert err.startswith("stable-audio: error: the generated audio contains NaN or infinite values; likely cause: "
                          "the LoRA strength or the LoRA file (lora_a (lora_index 0) at strength 1e+308)")
    assert err.count("\n") == 1 and not list(tmp_path.iterdir())


# -- 2. no traceback from the CLI ------------------------------------------------------------------


@pytest.mark.parametrize("edit,field", [
    (lambda c: c["model"].pop("diffusion"), "field 'model.diffusion' is missing; a JSON object is required"),
    (lambda c: c["model"].pop("io_channels"), "field 'model.io_channels' is missing; a positive integer is required"),
    (lambda c: c["model"].pop("conditioning"), "field 'model.conditioning' is missing; a JSON object is required"),
    (lambda c: c.__setitem__("model", [1]), "field 'model' is [1]; a JSON object is required"),
    (lambda c: c.__setitem__("sample_rate", "44100"),
     "field 'sample_rate' is \"44100\"; a positive integer is required"),
    (lambda c: c.__setitem__("sample_size", 0), "field 'sample_size' is 0; a positive integer is required"),
    (lambda c: c.__setitem__("sample_size", 100), "field 'sample_size' is 100; at least one latent (4096 samples"),
    (lambda c: c["model"]["diffusion"]["config"].pop("depth"),
     "model.diffusion.config is invalid (DiT config lacks depth)"),
    (lambda c: c["model"]["diffusion"].__setitem__("diffusion_objective", "v"),
     "field 'model.diffusion.diffusion_objective' is 'v'; allowed: 'rf_denoiser', 'rectified_flow'"),
])
def test_a_broken_model_config_is_a_load_error_naming_the_field(tmp_path: Path, capsys, edit, field: str) -> None:
    folder = model_folder(tmp_path, edit)
    with pytest.raises(ModelLoadError) as err:
        StableAudioModel.from_pretrained(folder, device="cpu")
    assert f"model config {folder / 'model_config.json'}: {field}" in str(err.value)
    code, stderr = cli_run(["-q", "-p", "x", "--model", str(folder), "-o", str(tmp_path / "o.wav")], capsys)
    assert code == 1 and stderr == f"stable-audio: error: {err.value}\n"


def test_encode_into_an_unwritable_place_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    no_model_load(monkeypatch)
    (tmp_path / "file").write_text("not a folder")
    src = tone(tmp_path / "a.wav")
    code, err = cli_run(["encode", str(src), "-o", str(tmp_path / "file" / "z.safetensors")], capsys)
    assert code == 2
    assert f"stable-audio encode: error: -o/--output: cannot write {tmp_path / 'file' / 'z.safetensors'}" in err
    code, err = cli_run(["encode", str(src), "-o", str(tmp_path)], capsys)
    assert code == 2 and f"-o/--output: {tmp_path} is a folder; a file name is required" in err


@pytest.mark.parametrize("make,message", [
    (lambda p, z: p.write_bytes(z.read_bytes()[:300]), "not a readable .safetensors latents file"),
    (lambda p, z: tone(p.with_suffix(".wav")).rename(p), "not a readable .safetensors latents file"),
    (lambda p, z: save_file({"x": torch.zeros(1, 32, 2)}, str(p)), "no 'latents' tensor inside (found: x)"),
    (lambda p, z: save_file({"latents": torch.zeros(1, 32, 0)}, str(p)),
     "'latents' is torch.float32 (1, 32, 0); floating-point"),
    (lambda p, z: save_file({"latents": torch.full((32, 2), NAN)}, str(p)), "'latents' holds NaN or infinite"),
])
def test_decode_of_a_bad_latents_file_is_a_usage_error_before_loading(tmp_path: Path, capsys, monkeypatch, make,
                                                                       message: str) -> None:
    good = tmp_path / "z.safetensors"
    save_file({"latents": torch.zeros(1, 32, 2)}, str(good))
    bad = tmp_path / "bad.safetensors"
    make(bad, good)
    no_model_load(monkeypatch)
    code, err = cli_run(["decode", str(bad), "-o", str(tmp_path / "o.wav")], capsys)
    assert code == 2 and f"stable-audio decode: error: {bad}: {message}" in err


@pytest.mark.parametrize("suffix", [".wav", ".mp3"])
def test_a_duration_shorter_than_one_sample_is_refused(tmp_path: Path, capsys, suffix: str) -> None:
    out = tmp_path / f"o{suffix}"
    code, err = cli_run(["-q", "-p", "x", "--model", str(tiny()), "--duration", "1e-6", "-o", str(out)], capsys)
    assert code == 2
    assert ("stable-audio: error: --duration=1e-06 is shorter than one sample at 44100 Hz; at least 2.27e-05 seconds "
            "is required") in err
    assert not list(tmp_path.iterdir())
    with pytest.raises(OptionError, match=r"duration=1e-06 is shorter than one sample"):
        gen(duration=1e-6)


# -- 3. bounded work -------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,message", [
    (dict(steps=10**7), "steps=10000000 is invalid; an integer in [1, 1000] is required"),
    (dict(batch_size=20000), "batch_size=20000 is invalid; an integer in [1, 64] is required"),
    (dict(sample_size=10**9, duration=200.0), "sample_size=1000000000 is invalid; at most this model's 5292032"),
    (dict(init_audio=(1, torch.zeros(2, 100_000))),
     "init_audio sample rate=1 is invalid; an integer number of Hz in [1000, 768000] is required"),
    (dict(init_audio=(10**6, torch.zeros(2, 10))), "init_audio sample rate=1000000 is invalid"),
    (dict(init_audio=(44100, torch.zeros(9, 10))), "init_audio: 9 channels; 1 to 8 are allowed"),
    (dict(init_audio=(44100, np.zeros((10, 9), np.float32))), "init_audio: 9 channels; 1 to 8 are allowed"),
    (dict(prompt=["a"] * 2000), "prompt: prompt has 2000 values; at most 64 items per call (Limits.max_batch_size)"),
    (dict(seed=list(range(65))), "seed: seed has 65 values; at most 64 items per call"),
    (dict(prompt="a" * 4001), "prompt: 4001 characters; at most 4000 (Limits.max_prompt_chars)"),
    (dict(batch_size=64, duration=61.0), "64 item(s) of up to 61 s is more than 3840 s of audio in one call"),
])
def test_work_is_bounded_before_any_model_runs(kwargs: dict, message: str, monkeypatch) -> None:
    m = model()
    calls = []
    monkeypatch.setattr(m.components.conditioner, "encode", lambda *a, **k: calls.append(1))
    with pytest.raises(OptionError) as err:
        gen(**kwargs)
    assert message in str(err.value)
    assert calls == []


def test_the_cli_caps_steps(capsys, monkeypatch) -> None:
    no_model_load(monkeypatch)
    code, err = cli_run(["-q", "-p", "x", "--steps", "100000"], capsys)
    assert code == 2 and "argument --steps: 100000 is invalid; an integer in [1, 1000] is required" in err


def test_an_input_file_past_the_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    src = tone(tmp_path / "a.wav", seconds=0.5)
    limits = Limits(max_input_values=1000)
    m = model()
    try:
        m.limits = limits
        with pytest.raises(ValueError, match=r"init_audio: decodes to more than 1000 samples x channels"):
            gen(init_audio=str(src))
        with pytest.raises(OptionError, match=r"init_audio: 100 samples x 20 channels|init_audio: 20 channels"):
            gen(init_audio=(44100, torch.zeros(20, 100)))
        with pytest.raises(OptionError, match=r"init_audio: 2000 samples x 1 channels is more than 1000"):
            gen(init_audio=(44100, torch.zeros(2000)))
    finally:
        m.limits = DEFAULT_LIMITS


def test_limits_are_one_documented_object_a_caller_can_raise() -> None:
    limits = DEFAULT_LIMITS
    assert (limits.max_steps, limits.max_batch_size, limits.max_prompt_chars) == (1000, 64, 4000)
    assert (DEFAULT_LIMITS.min_input_rate, DEFAULT_LIMITS.max_input_rate) == (1000, 768000)
    for name in ("max_steps", "max_batch_size", "max_prompt_chars", "max_total_seconds", "max_input_values"):
        assert f"`{name}`" in Limits.__doc__, name
    defaults = ModelDefaults.from_config(model().model_config)
    request = GenerationRequest(prompt="x", steps=1500, duration=1.0)
    with pytest.raises(OptionError, match=r"steps=1500 is invalid; an integer in \[1, 1000\]"):
        request.resolve(defaults)
    raised = ModelDefaults.from_config(model().model_config, Limits(max_steps=2000, max_batch_size=100))
    assert request.resolve(raised).steps == 1500
    assert GenerationRequest(prompt=["x"] * 80, duration=1.0).resolve(raised).batch_size == 80
    stricter = Limits(max_batch_size=2)
    with pytest.raises(OptionError, match=r"batch_size=3 is invalid; an integer in \[1, 2\]"):
        GenerationRequest(prompt="x", batch_size=3).verify(stricter)
    with pytest.raises(OptionError, match=r"Limits.max_steps=0 is invalid; an integer > 0 is required"):
        Limits(max_steps=0)
    with pytest.raises(OptionError, match=r"Limits.min_input_rate=9000 is above Limits.max_input_rate=8000"):
        Limits(min_input_rate=9000, max_input_rate=8000)
    # at load: the model's limits reach every request it takes
    m = StableAudioModel.from_pretrained(tiny(), device="cpu", limits=Limits(max_prompt_chars=3))
    assert m.limits.max_prompt_chars == 3
    with pytest.raises(OptionError, match=r"prompt: 4 characters; at most 3"):
        m.generate("abcd", duration=0.5, steps=1)
    with pytest.raises(TypeError, match=r"limits: expected a stable_audio_3.request.Limits, got dict"):
        StableAudioModel.from_pretrained(tiny(), device="cpu", limits={"max_steps": 5})


def test_any_input_rate_resamples_in_bounded_memory() -> None:
    """44101 Hz has no common divisor with 44100: a polyphase kernel of 1.9e9 taps. Each output's taps
    are made as used instead, with the same filter."""
    x = torch.randn(2, 4410)
    from stable_audio_3 import audio

    polyphase = resample(x, 48000, 44100)
    old = audio.MAX_KERNEL_VALUES
    try:
        audio.MAX_KERNEL_VALUES = 0  # every rate pair through the per-output path
        direct = resample(x, 48000, 44100)
        up = resample(x, 8000, 44100)
    finally:
        audio.MAX_KERNEL_VALUES = old
    torch.testing.assert_close(direct, polyphase, atol=2e-6, rtol=0)
    torch.testing.assert_close(up, resample(x, 8000, 44100), atol=2e-6, rtol=0)
    odd = resample(torch.randn(2, 44101), 44101, 44100)
    assert odd.shape == (2, 44100) and torch.isfinite(odd).all()
    # only what generation keeps is resampled: the same first samples as resampling everything
    torch.testing.assert_close(resample(x, 8000, 44100, max_length=1000), resample(x, 8000, 44100)[:, :1000])
    out = gen(init_audio=(44101, torch.randn(2, 22050) * 0.1))
    assert out.shape == (1, 2, 22050) and torch.isfinite(out).all()


# -- 5. messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,message", [
    (dict(init_audio=(NAN, torch.zeros(2, 10))), "init_audio sample rate=nan is invalid; an integer number of Hz in "),
    (dict(init_audio=(torch.zeros(2, 10), INF)), "init_audio sample rate=inf is invalid"),
    (dict(init_audio=(44100.5, torch.zeros(2, 10))), "init_audio sample rate=44100.5 is invalid"),
    (dict(prompt="a\udcffb"), "prompt: character 1 ('\\udcff') is not valid Unicode"),
    (dict(prompt=["ok", "\ud800"]), "prompt[1]: character 0 ('\\ud800') is not valid Unicode"),
    (dict(negative_prompt="\udc80"), "negative_prompt: character 0 ('\\udc80') is not valid Unicode"),
])
def test_messages_name_the_argument_and_what_is_allowed(kwargs: dict, message: str) -> None:
    with pytest.raises(OptionError) as err:
        gen(**kwargs)
    assert message in str(err.value)


def test_a_folder_as_init_audio_is_named_a_folder(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match=rf"init_audio: {tmp_path} is a folder; an audio file is required"):
        gen(init_audio=str(tmp_path))


def test_non_utf8_bytes_on_the_command_line_name_the_flag(tmp_path: Path) -> None:
    argv = [sys.executable.encode(), b"-m", b"stable_audio_3.cli", b"-q", b"-p", b"caf\xe9 \xff", b"--model",
            str(tiny()).encode(), b"-o", str(tmp_path / "o.wav").encode()]
    res = subprocess.run(argv, capture_output=True)
    err = res.stderr.decode("utf-8", "replace")
    assert res.returncode == 2, err
    assert "stable-audio: error: --prompt: character 3 ('\\udce9') is not valid Unicode" in err
    assert "Traceback" not in err and not list(tmp_path.iterdir())


# -- 6. exit 2 before the model loads ----------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    ("--seed 18446744073709551616", "argument --seed: 18446744073709551616 is invalid; an integer in [-1, 2**63 - 1]"),
    ("--inpaint-audio {src} --inpaint-start 0 --inpaint-end 0.3 --inpaint-start 0.2 --inpaint-end 0.4",
     "stable-audio: error: --inpaint-start: inpaint regions 0-0.3 s and 0.2-0.4 s overlap"),
    ("--paste-back", "stable-audio: error: --paste-back needs --inpaint-audio and the regions"),
    ("--init-audio {bad}", "stable-audio: error: --init-audio {bad}: not a readable audio file"),
    ("--inpaint-audio {bad} --continuation", "stable-audio: error: --inpaint-audio {bad}: not a readable audio file"),
    ("--init-audio {tmp}", "stable-audio: error: --init-audio: {tmp} is a folder; an audio file is required"),
    ("--init-audio {src} -o {tmp}/dir.wav", "stable-audio: error: -o/--output: {tmp}/dir.wav is a folder"),
])
def test_value_errors_exit_2_before_the_model_loads(tmp_path: Path, capsys, monkeypatch, args: str,
                                                    message: str) -> None:
    names = dict(src=tone(tmp_path / "src.wav"), bad=tmp_path / "bad.wav", tmp=tmp_path)
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (tmp_path / "dir.wav").mkdir()
    no_model_load(monkeypatch)
    out = [] if " -o " in args else ["-o", str(tmp_path / "o.wav")]
    code, err = cli_run(["-q", "-p", "x", *shlex.split(args.format(**names)), *out], capsys)
    assert code == 2 and message.format(**names) in err, err


def test_decode_to_an_unknown_format_exits_2_before_decoding(tmp_path: Path, capsys, monkeypatch) -> None:
    latents = tmp_path / "z.safetensors"
    save_file({"latents": torch.zeros(1, 32, 2)}, str(latents))
    no_model_load(monkeypatch)
    code, err = cli_run(["decode", str(latents), "-o", str(tmp_path / "o.xyz")], capsys)
    assert code == 2 and "stable-audio decode: error: -o/--output: unsupported extension '.xyz'" in err


def test_encode_of_an_unreadable_file_exits_2_before_loading(tmp_path: Path, capsys, monkeypatch) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    no_model_load(monkeypatch)
    code, err = cli_run(["encode", str(bad)], capsys)
    assert code == 2 and f"stable-audio encode: error: {bad}: not a readable audio file" in err


# -- 7. interrupted writes -------------------------------------------------------------------------

SIGNAL_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys
    import soundfile
    from stable_audio_3 import cli

    # As in a terminal: a job started in the background inherits SIGINT ignored, and Python then
    # leaves it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    real_write = soundfile.SoundFile.write

    def write(self, data):  # the signal arrives while the temporary file is half written
        real_write(self, data[: len(data) // 2])
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        real_write(self, data[len(data) // 2:])

    soundfile.SoundFile.write = write
    sys.exit(cli.main(sys.argv[2:]))
""")


@pytest.mark.parametrize("signame,code,message", [("SIGTERM", 143, "stable-audio: terminated"),
                                                  ("SIGINT", 130, "stable-audio: interrupted")])
def test_a_signal_during_the_write_leaves_no_file(tmp_path: Path, signame: str, code: int, message: str) -> None:
    out = tmp_path / "out" / "o.flac"
    res = subprocess.run([sys.executable, "-c", SIGNAL_DURING_WRITE, signame, "-q", "-p", "x", "--model", str(tiny()),
                          "--steps", "1", "--duration", "0.5", "--mkdir", "-o", str(out)],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == code, res.stderr
    assert res.stderr.strip().endswith(message) and "Traceback" not in res.stderr
    assert list(out.parent.iterdir()) == []  # neither the file nor a hidden .o.*.flac
