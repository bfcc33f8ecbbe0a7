"""The `stable-audio` command line, run as a user runs it, on the tiny golden models."""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from golden import fixture_dir

from stable_audio_3 import cli, output
from stable_audio_3.audio import read_audio, write_audio

SR = 44100


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stable_audio_3.cli", *args], capture_output=True, text=True)


def main(command: str, *args: str) -> None:
    """`stable-audio <command> <args>` through the console script's entry point, in this process
    (saves a torch import per call); `command` is split as a shell splits it."""
    assert cli.main(["-q", *shlex.split(command), *args]) == 0


def q(path: Path | str) -> str:
    return shlex.quote(str(path))


def tiny() -> str:
    return str(fixture_dir("tiny-small"))


def human(path: Path | str) -> str:
    """The first line of a file's comment: the settings, for people (the record follows on the next)."""
    return sf.SoundFile(str(path)).copy_metadata()["comment"].splitlines()[0]


def tone(path: Path, seconds: float = 1.0, freq: float = 220.0) -> Path:
    t = torch.arange(int(seconds * SR)) / SR
    write_audio(path, torch.stack([torch.sin(2 * math.pi * freq * t)] * 2) * 0.5)
    return path


def test_encode_decode_roundtrip(tmp_path: Path) -> None:
    model = tiny()
    tone(tmp_path / "tone.wav")
    enc = run("encode", str(tmp_path / "tone.wav"), "--model", model, "-o", str(tmp_path / "z.safetensors"))
    assert enc.returncode == 0, enc.stderr
    assert "latents (1, 32, 12)" in enc.stdout
    dec = run(
        "decode", str(tmp_path / "z.safetensors"), "--model", model, "--seed", "1", "-o", str(tmp_path / "out.flac")
    )
    assert dec.returncode == 0, dec.stderr
    audio, sr = read_audio(tmp_path / "out.flac")
    assert sr == 44100 and audio.shape == (2, 12 * 4096)


def test_errors_are_one_line_and_nonzero(tmp_path: Path) -> None:
    res = run("encode", str(tmp_path / "missing.wav"), "--model", tiny())
    assert res.returncode == 2  # the input is read before the model loads: a usage error
    assert res.stderr.splitlines()[-1].startswith("stable-audio encode: error: audio file not found")
    assert "Traceback" not in res.stderr
    res = run("encode", str(tone(tmp_path / "x.wav")), "--model", "no-such-model")
    assert res.returncode == 1 and "unknown model 'no-such-model'" in res.stderr


def test_batch_writes_numbered_files_with_own_durations_and_metadata(tmp_path: Path) -> None:
    args = '-p "rain on a tin roof" -p "a cello" --duration 2 1.5 --seed 3 4 --bit-depth 16 --duration-padding 0'
    res = run("generate", *shlex.split(args), "--model", tiny(), "-o", str(tmp_path / "out.flac"))
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "out.flac").exists()
    for i, (prompt, seconds, seed) in enumerate([("rain on a tin roof", 2.0, 3), ("a cello", 1.5, 4)]):
        path = tmp_path / f"out_{i}.flac"
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 2, int(seconds * SR), "PCM_16")
        meta = sf.SoundFile(str(path)).copy_metadata()
        assert meta["title"] == prompt
        assert f"seed={seed} model={tiny()} steps=8 cfg_scale=1" in meta["comment"]
        assert meta["software"].startswith("stable-audio-3 ")
        audio, _ = read_audio(path)
        assert audio.abs().max() <= 10 ** (-0.1 / 20) + 1e-4  # the -0.1 dBFS ceiling, with 16-bit rounding
        assert f"wrote {path} ({seconds:.2f} s, seed {seed}" in res.stdout
    # a per-item seed reproduces its item alone (item 0 is the longest, so its latent length is the same)
    main(
        '-p "rain on a tin roof" --duration 2 --seed 3 --bit-depth 16 --duration-padding 0',
        "--model",
        tiny(),
        "-o",
        str(tmp_path / "again.flac"),
    )
    again, first = read_audio(tmp_path / "again.flac")[0], read_audio(tmp_path / "out_0.flac")[0]
    torch.testing.assert_close(again, first, atol=1e-3, rtol=0)  # batched matmuls round differently


def test_inpainting_regions_and_continuation(tmp_path: Path) -> None:
    src = q(tone(tmp_path / "src.wav", seconds=1.0))
    common = f'-p "a tone" --seed 7 --duration 2 --duration-padding 0 --model {q(tiny())}'
    main(common, "-o", str(tmp_path / "plain"))
    regions = "--inpaint-start 0.2 --inpaint-end 0.5 --inpaint-start 1.0 --inpaint-end 1.5"
    main(f"{common} --inpaint-audio {src} {regions}", "-o", str(tmp_path / "regions.wav"))
    main(f"{common} --inpaint-audio {src} --continuation", "-o", str(tmp_path / "cont.ogg"))
    x_plain, _ = read_audio(tmp_path / "plain.wav")  # no extension given: .wav, 32-bit float
    x_regions, _ = read_audio(tmp_path / "regions.wav")
    assert sf.info(str(tmp_path / "regions.wav")).subtype == "FLOAT"
    assert x_plain.shape == x_regions.shape == (2, 2 * SR)
    assert not torch.allclose(x_plain, x_regions, atol=1e-3)  # the inpaint audio reached the model
    info = sf.info(str(tmp_path / "cont.ogg"))
    assert (info.samplerate, info.channels) == (SR, 2) and abs(info.frames - 2 * SR) <= 2048


def test_base_models_get_their_recommended_settings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base_config = fixture_dir("tiny-small") / "model_config_base.json"
    with caplog.at_level("INFO", logger="stable_audio_3"):
        main(
            f"-p x --duration 0.5 --duration-padding 0 --model {q(tiny())} --model-config {q(base_config)}",
            "-o",
            str(tmp_path / "b.wav"),
        )
    assert "50 steps, cfg 7, sampler euler" in caplog.text
    assert "steps=50 cfg_scale=7" in sf.SoundFile(str(tmp_path / "b.wav")).copy_metadata()["comment"]


def test_mp3_bitrate(tmp_path: Path) -> None:
    main(f"-p x --duration 2 --batch-size 2 --mp3-bitrate 128 --model {q(tiny())}", "-o", str(tmp_path / "a.mp3"))
    for i in range(2):
        path = tmp_path / f"a_{i}.mp3"
        assert sf.info(str(path)).frames == 2 * SR
        kbps = path.stat().st_size * 8 / 2 / 1000
        assert 125 < kbps < 140, kbps
        assert sf.SoundFile(str(path)).copy_metadata()["title"] == "x"


def test_lora_flags_reach_the_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lora = q(fixture_dir("tiny-small") / "lora" / "lora_a.safetensors")
    common = f"-p x --duration 1 --duration-padding 0 --seed 11 --model {q(tiny())}"
    main(common, "-o", str(tmp_path / "none.wav"))
    main(f"{common} --lora-ckpt-path {lora}", "-o", str(tmp_path / "full.wav"))
    main(f"{common} --lora-ckpt-path {lora} --lora-strength 0 --lora-index 0", "-o", str(tmp_path / "off.wav"))
    none, full, off = (read_audio(tmp_path / f"{n}.wav")[0] for n in ("none", "full", "off"))
    assert torch.allclose(none, off, atol=1e-5)
    assert not torch.allclose(none, full, atol=1e-3)
    comments = [human(tmp_path / f"{n}.wav") for n in ("none", "full", "off")]
    assert "lora=" not in comments[0]
    assert comments[1].endswith(" lora=lora_a.safetensors@1") and comments[2].endswith(" lora=lora_a.safetensors@0")
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--duration", "0"], "argument --duration: 0 is invalid; a number > 0 is required"),
        (["--duration", "abc"], "argument --duration: 'abc' is not a number"),
        (["--steps", "0"], "argument --steps: 0 is invalid; an integer in [1, 1000] is required"),
        (["--steps", "2.5"], "argument --steps: '2.5' is not an integer"),
        (["--apg-scale", "2"], "argument --apg-scale: 2 is invalid; a number in [0, 1] is required"),
        (["--cfg-scale", "-1"], "argument --cfg-scale: -1 is invalid; a number in [0, 100] is required"),
        (["--sampler", "ddim"], "argument --sampler/--sampler-type: invalid choice: 'ddim'"),
        (["--seed", "-2"], "argument --seed: -2 is invalid; an integer in [-1, "),
        (["--dist-shift", "{"], "argument --dist-shift: '{' is not valid JSON"),
        (["--cfg-interval", "0.8", "0.2"],
         "stable-audio: error: --cfg-interval=(0.8, 0.2) is invalid; (low, high) with 0 <= low <= high <= 1 is "
         "required\n"),
        (["--inpaint-start", "1"], "stable-audio: error: --inpaint-start was given without --inpaint-end; give both"),
        (["--inpaint-start", "2", "--inpaint-end", "1"],
         "stable-audio: error: --inpaint-end=1.0 is not after --inpaint-start=2.0; each region must end after it "
         "starts\n"),
        (["--continuation"], "stable-audio: error: --continuation needs --inpaint-audio: the audio to continue\n"),
        (["--paste-back"], "stable-audio: error: --paste-back needs --inpaint-audio and the regions to regenerate"),
        (["--init-audio", "missing.wav"], "stable-audio: error: --init-audio: audio file not found: missing.wav\n"),
        (["-p", "b", "--batch-size", "3"],
         "stable-audio: error: --prompt has 2 values but --batch-size=3; give one per item or one\n"),
        (["--batch-size", "3", "--seed", "1", "2"], "stable-audio: error: --seed has 2 values but --batch-size=3"),
        (["--duration", "1", "2", "3", "--seed", "1", "2"],
         "stable-audio: error: --duration has 3 values but --seed has 2; per-item lists must have the same length"),
        (["--lora-configs", '[{"lora_index": -1}]'],
         "stable-audio: error: --lora-configs[0].lora_index=-1 is invalid; an integer >= 0 is required\n"),
        (["--precision", "int8", "--device", "cuda"],
         "stable-audio: error: --precision='int8' runs on the CPU only; got --device='cuda'\n"),
        (["--precision", "int8", "--lora-ckpt-path", "x.safetensors"],
         "--precision int8 cannot be combined with --lora-ckpt-path (int8 layers take no LoRA)"),
        (["--precision", "bfloat16", "--dtype", "float32"],
         "stable-audio: error: --precision='bfloat16' sets the dtypes; it cannot be combined with --dtype='float32'\n"),
        (["-o", "x.aiff"], "-o/--output: unsupported extension '.aiff'"),
        (["-o", "x.flac", "--bit-depth", "32"], "--bit-depth 32 does not apply to .flac output"),
        (["-o", "x.wav", "--mp3-bitrate", "128"], "--mp3-bitrate applies to .mp3 output only"),
        (["-o", "x.mp3", "--mp3-bitrate", "100"], "argument --mp3-bitrate: invalid choice: 100"),
        (["-o", "x.flac", "--no-clamp"], "--no-clamp keeps samples beyond [-1, 1], which only a 32-bit float .wav"),
        (["--no-clamp", "--peak-ceiling", "-1"], "--peak-ceiling applies with --clamp only"),
        (["--lora-strength", "0.5"], "--lora-strength/--lora-index need --lora-ckpt-path"),
        (["--peak-ceiling", "3"], "argument --peak-ceiling: 3 is invalid; a number in [-60, 0] is required"),
    ],
)
def test_usage_errors_exit_2_naming_the_flag(tmp_path: Path, args: list[str], message: str) -> None:
    output = [] if "-o" in args else ["-o", str(tmp_path / "o.wav")]
    res = run("-p", "a", "--model", "no-model-needed-for-this", *args, *output)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr, res.stderr
    assert res.stderr.startswith("usage: stable-audio")


def test_lora_index_errors_exit_2(tmp_path: Path) -> None:
    lora = str(fixture_dir("tiny-small") / "lora" / "lora_a.safetensors")
    res = run("-p", "a", "--lora-ckpt-path", lora, "--lora-strength", "1", "--lora-index", "1")
    assert res.returncode == 2 and "--lora-index 1 is out of range: 1 LoRA file(s) given" in res.stderr
    res = run("-p", "a", "--lora-ckpt-path", lora, "--lora-strength", "1", "--lora-strength", "2")
    assert res.returncode == 2 and "several --lora-strength values need a --lora-index each" in res.stderr


def test_demo_loras_by_name_are_checked_before_loading(tmp_path: Path) -> None:
    parser = cli.build_generate_parser()
    args = parser.parse_args(["-p", "x", "--lora-ckpt-path", "octave-up", "--lora-strength", "0.5", "-o",
                              str(tmp_path / "x.wav")])
    request, load, loras = cli.check_generate_args(parser, args)
    assert loras == [("octave-up", 0.5)] and request.prompt == "x" and load.attention_padding == "exclude"
    res = run("-p", "x", "--lora-ckpt-path", "octave-down", "-o", str(tmp_path / "x.wav"))
    assert res.returncode == 2
    assert "--lora-ckpt-path: file not found: octave-down (LoRAs shipped with demo: octave-up)" in res.stderr


def test_invalid_options_exit_2_before_any_model_loads(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    from stable_audio_3.api import StableAudioModel

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(StableAudioModel, "from_pretrained", no_load)
    for args, message in [
        ("--cfg-interval 0.5 0.4", "--cfg-interval=(0.5, 0.4) is invalid"),
        ("-p y --duration 1 2 3", "--prompt has 2 values but --duration has 3; per-item lists must have"),
        ("--dist-shift 3", "--dist-shift=3 is invalid; None, a dict of shift options"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["-q", "-p", "x", *shlex.split(args)])
        assert exit_.value.code == 2
        assert f"stable-audio: error: {message}" in capsys.readouterr().err


def test_every_request_field_has_one_flag_with_its_default_and_bounds() -> None:
    from stable_audio_3.request import FIELDS, LOAD_FIELDS, PYTHON_ONLY

    parser = cli.build_generate_parser()
    flags = cli.generation_flags(parser)
    fields = {**{n: f for n, f in FIELDS.items() if n not in PYTHON_ONLY}, **LOAD_FIELDS}
    assert set(flags) == set(fields)
    for name, field in fields.items():
        meta, action = field.metadata, flags[name]
        assert [a for a in parser._actions if a.dest == name and a.help != argparse.SUPPRESS] == [action], name
        assert "--" + name.replace("_", "-") in action.option_strings, name
        assert action.default == (None if meta["from_model"] else field.default), name
        if meta["kind"] in ("number", "pair", "regions"):
            bounds = {k: getattr(action.type, k) for k in ("low", "high", "low_open", "integer")}
            assert bounds == {k: meta[k] for k in bounds}, name
        if meta["choices"]:
            assert tuple(action.choices) == tuple(meta["choices"]), name
        if meta["per_item"]:
            assert action.nargs == "+", name
        if meta["kind"] == "bool":
            assert isinstance(action, argparse.BooleanOptionalAction), name
    assert flags["cfg_interval"].nargs == 2 and flags["chunked_decode"].default is None
    aliases = [("-p", "prompt"), ("--sampler", "sampler_type"), ("--inpaint-start", "inpaint_mask_start_seconds"),
               ("--inpaint-end", "inpaint_mask_end_seconds"), ("--paste-back", "inpaint_paste_back"),
               ("--duration-padding", "duration_padding_sec"), ("--no-chunked-decode", "chunked_decode")]
    for alias, name in aliases:
        assert alias in flags[name].option_strings
    args = parser.parse_args(["-p", "x", "--no-half"])
    assert args.dtype == "float32"  # the old spelling of --dtype float32, kept hidden


def test_help_states_the_models_defaults() -> None:
    flags = cli.generation_flags(cli.build_generate_parser())
    expected = {"steps": "(default: the model's recommended: 32 for demo; post-trained models 8, -base 50)",
                "cfg_scale": "(default: the model's recommended: 4 for demo; post-trained models 1, -base 7)",
                "sampler_type": "(default: the model's recommended: euler for demo; post-trained models pingpong, "
                "-base euler)",
                "duration": "(default: the model's recommended: 3 s for demo; others 120 s or their maximum if "
                "shorter)",
                "inpaint_paste_back": "(default: the model's recommended: on for demo; off unless a model's card "
                "recommends it)"}
    for name, text in expected.items():
        assert flags[name].help.endswith(text), flags[name].help
    assert "used when --cfg-scale != 1" in flags["negative_prompt"].help  # Python names in flag spelling
    assert "(default: 6.0)" in flags["duration_padding_sec"].help


def test_one_value_is_one_value_for_the_batch_and_lists_are_per_item() -> None:
    parser = cli.build_generate_parser()
    r = cli.request_from_args(parser.parse_args(shlex.split("-p x --seed 7 --batch-size 2 --inpaint-start 1")))
    assert (r.prompt, r.seed, r.batch_size, r.inpaint_mask_start_seconds) == ("x", 7, 2, [1.0])
    r = cli.request_from_args(parser.parse_args(shlex.split("-p x -p y --seed 7 8 --cfg-interval 0.1 0.9")))
    assert (r.prompt, r.seed, r.batch_size, r.cfg_interval) == (["x", "y"], [7, 8], None, (0.1, 0.9))
    r = cli.request_from_args(parser.parse_args(["-p", "x", "--dist-shift", '{"type": "none"}']))
    assert r.dist_shift == {"type": "none"} and r.init_noise_level is None and r.clamp is True


def test_one_seed_for_a_batch_is_one_shared_generator(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main(f"-p x --seed 7 --batch-size 2 --duration 1 --duration-padding 0 --model {q(tiny())}",
         "-o", str(tmp_path / "b.wav"))
    out = capsys.readouterr().out
    for i in range(2):
        path = tmp_path / f"b_{i}.wav"
        comment = human(path)
        assert comment.startswith(f"seed=7 batch_size=2 item={i} model={tiny()} steps=8 cfg_scale=1 "), comment
        assert f"wrote {path} (1.00 s, seed 7, item {i} of a batch" in out
    a, b = (read_audio(tmp_path / f"b_{i}.wav")[0] for i in range(2))
    assert not torch.allclose(a, b, atol=1e-3)  # one generator: the items differ


def test_no_clamp_writes_the_models_samples_as_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stable_audio_3.api import StableAudioModel

    run_ = StableAudioModel.run

    def loud(self, request, callback=None):  # the model's output, twice as loud: peaks well above 0 dBFS
        assert request.clamp is False  # the CLI never asks the model to clip
        gen = run_(self, request, callback)
        return dataclasses.replace(gen, audio=gen.audio / gen.audio.abs().max() * 2)

    monkeypatch.setattr(StableAudioModel, "run", loud)
    common = f"-p x --seed 1 --duration 0.5 --duration-padding 0 --model {q(tiny())}"
    main(f"{common} --no-clamp", "-o", str(tmp_path / "raw.wav"))
    main(common, "-o", str(tmp_path / "limited.wav"))
    raw, limited = read_audio(tmp_path / "raw.wav")[0], read_audio(tmp_path / "limited.wav")[0]
    assert raw.abs().max() == pytest.approx(2.0)
    torch.testing.assert_close(limited, raw * 10 ** (-0.1 / 20) / 2, atol=1e-6, rtol=0)  # one gain, no clipping


def test_too_long_for_the_model_is_a_usage_error_after_loading(tmp_path: Path) -> None:
    res = run("-p", "a", "--model", "no-such-model", "-o", str(tmp_path / "x.wav"))
    assert res.returncode == 1
    assert res.stderr.startswith("stable-audio: error: unknown model 'no-such-model'")
    assert "Traceback" not in res.stderr
    res = run("-q", "-p", "a", "--model", tiny(), "--duration", "500", "-o", str(tmp_path / "x.wav"))
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "stable-audio: error: --duration=500 is too long; this model allows at most 120.00 seconds"
    )
    assert not list(tmp_path.iterdir())


def test_limit_peak_applies_one_gain_and_never_boosts() -> None:
    loud = torch.tensor([[0.5, -2.0, 1.0], [0.1, 0.2, 0.3]])
    out, gain_db = output.limit_peak(loud, -0.1)
    assert gain_db == pytest.approx(-0.1 - 20 * math.log10(2.0))
    assert out.abs().max() == pytest.approx(10 ** (-0.1 / 20))
    assert torch.allclose(out / loud, torch.full_like(loud, out[0, 1].item() / -2.0))  # one gain for all samples
    quiet = torch.tensor([[0.5, -0.9]])
    same, gain_db = output.limit_peak(quiet, -0.1)
    assert gain_db == 0.0 and torch.equal(same, quiet)


def readme_commands(section: str) -> list[str]:
    """The `stable-audio ...` lines of the README section's bash blocks."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = body.split("```bash\n")[1:]
    return [line for b in blocks for line in b.split("```")[0].splitlines() if line.startswith("stable-audio ")]


def test_readme_examples_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every example of the README's "Command line" section, in order, in an empty folder, exactly as
    written (they use the built-in demo model)."""
    commands = readme_commands("Command line")
    assert len(commands) >= 5
    monkeypatch.chdir(tmp_path)
    for command in commands:
        main(command.removeprefix("stable-audio "))
    for name, seconds in [("loop.wav", 3), ("batch_0.flac", 4), ("batch_1.flac", 6), ("tones_2.ogg", 3),
                          ("a2a.wav", 3), ("fills.mp3", 3), ("longer.flac", 6), ("octave.wav", 3)]:
        info = sf.info(name)
        assert info.samplerate == SR and info.channels == 2, name
        assert abs(info.frames - seconds * SR) <= (2000 if name.endswith(".mp3") else 0), name
    for made, again in (("fills.mp3", "fills-again.mp3"), ("tones_2.ogg", "tones-again.ogg")):
        assert torch.equal(read_audio(made)[0], read_audio(again)[0]), again  # --from-metadata: the same samples


def test_lora_shipped_with_the_model_by_name(tmp_path: Path) -> None:
    from test_lora_model import folder_with_bundled_lora

    folder = folder_with_bundled_lora(tmp_path)
    common = f"-p x --duration 1 --duration-padding 0 --seed 11 --model {q(folder)}"
    main(f"{common} --lora-ckpt-path {q(folder / 'loras' / 'style-a.safetensors')}", "-o", str(tmp_path / "a.wav"))
    main(f"{common} --lora-ckpt-path style-a", "-o", str(tmp_path / "b.wav"))
    assert torch.equal(read_audio(tmp_path / "a.wav")[0], read_audio(tmp_path / "b.wav")[0])
    assert human(tmp_path / "b.wav").endswith(" lora=style-a@1")
    res = run("-p", "x", "--model", str(folder), "--lora-ckpt-path", "style-b", "-o", str(tmp_path / "c.wav"))
    assert res.returncode == 2
    assert f"--lora-ckpt-path: file not found: style-b (LoRAs shipped with {folder}: style-a)" in res.stderr


def test_version_and_help_with_a_named_model(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from stable_audio_3 import __version__

    monkeypatch.setenv("COLUMNS", "1000")  # one help line per flag: no words broken across lines
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"stable-audio {__version__}"
    for model, steps in (("small-music-base", 50), ("small-sfx", 8), (tiny(), 8)):
        with pytest.raises(SystemExit):
            cli.main(["--model", model, "-h"])
        shown = Path(model).name if Path(model).exists() else model
        help_text = capsys.readouterr().out
        assert f"(default: the model's recommended: {steps} for {shown}; post-trained models 8, -base 50)" in help_text
        assert f"(default: the model's recommended: off for {shown};" in help_text  # paste-back


def test_a_missing_output_folder_is_named_and_never_made_unasked(tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "x.wav"
    res = run("-p", "sine wave a4", "--duration", "0.5", "-o", str(target))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        f"stable-audio: error: -o/--output: the folder {target.parent} does not exist; create it, or pass --mkdir")
    assert not (tmp_path / "new").exists()
    main(f"-p 'sine wave a4' --duration 0.5 --steps 2 --mkdir -o {q(target)}")
    assert sf.info(str(target)).frames == SR // 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unavailable_device_is_a_usage_error_before_loading() -> None:
    res = run("-p", "x", "--device", "cuda")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (
        "stable-audio: error: --device cuda is not available: this PyTorch has no usable CUDA GPU; use --device cpu, "
        "or leave --device out to pick the best available")
    assert "None" not in res.stderr
