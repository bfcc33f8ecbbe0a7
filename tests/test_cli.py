"""The `stable-audio` command line, run as a user runs it, on the tiny golden models."""

from __future__ import annotations

import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch
from golden import fixture_dir

from stable_audio_3 import cli
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
    assert res.returncode == 1
    assert res.stderr.startswith("stable-audio: error: audio file not found")
    assert "Traceback" not in res.stderr
    res = run("encode", "x.wav", "--model", "no-such-model")
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
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--chunked-decode", "--no-chunked-decode"], "--no-chunked-decode: not allowed with argument --chunked"),
        (["--duration", "0"], "argument --duration: 0 must be > 0"),
        (["--duration", "abc"], "argument --duration: 'abc' is not a number"),
        (["--steps", "0"], "argument --steps: 0 must be >= 1"),
        (["--apg-scale", "2"], "argument --apg-scale: 2 must be <= 1"),
        (["--sampler", "ddim"], "argument --sampler: invalid choice: 'ddim'"),
        (["--seed", "-2"], "argument --seed: -2 must be >= -1"),
        (["--inpaint-start", "1"], "--inpaint-start and --inpaint-end must pair up"),
        (["--inpaint-start", "1", "--inpaint-end", "2"], "--inpaint-start/--inpaint-end needs --inpaint-audio"),
        (["--inpaint-start", "2", "--inpaint-end", "1"], "--inpaint-end 1 must be after --inpaint-start 2"),
        (["--continuation"], "--continuation needs --inpaint-audio"),
        (["--init-audio", "missing.wav"], "--init-audio: file not found: missing.wav"),
        (["-p", "b", "--batch-size", "3"], "--batch-size 3 does not match the 2 --prompt values"),
        (["--batch-size", "3", "--seed", "1", "2"], "--seed: got 2 values for a batch of 3"),
        (["--batch-size", "2", "--duration", "1", "2", "3"], "--duration: got 3 values for a batch of 2"),
        (["-o", "x.aiff"], "-o/--output: unsupported extension '.aiff'"),
        (["-o", "x.flac", "--bit-depth", "32"], "--bit-depth 32 does not apply to .flac output"),
        (["-o", "x.wav", "--mp3-bitrate", "128"], "--mp3-bitrate applies to .mp3 output only"),
        (["-o", "x.mp3", "--mp3-bitrate", "100"], "argument --mp3-bitrate: invalid choice: 100"),
        (["--lora-strength", "0.5"], "--lora-strength/--lora-index need --lora-ckpt-path"),
        (["--peak-ceiling", "3"], "argument --peak-ceiling: 3 must be <= 0"),
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


def test_model_and_value_errors_are_one_line_exit_1(tmp_path: Path) -> None:
    res = run("-p", "a", "--model", "no-such-model", "-o", str(tmp_path / "x.wav"))
    assert res.returncode == 1
    assert res.stderr.startswith("stable-audio: error: unknown model 'no-such-model'")
    assert "Traceback" not in res.stderr
    res = run("-q", "-p", "a", "--model", tiny(), "--duration", "500", "-o", str(tmp_path / "x.wav"))
    assert res.returncode == 1
    assert res.stderr.strip() == (
        "stable-audio: error: duration=500 is too long; this model allows at most 120.00 seconds"
    )
    assert not list(tmp_path.iterdir())


def test_item_seeds_make_every_file_reproducible_alone() -> None:
    assert cli.item_seeds([7], 1) == 7
    assert cli.item_seeds([7], 3) == [7, 8, 9]
    assert cli.item_seeds([-1], 2) == [-1, -1]  # generate() draws each its own
    assert cli.item_seeds([4, 2], 2) == [4, 2]


def test_limit_peak_applies_one_gain_and_never_boosts() -> None:
    loud = torch.tensor([[0.5, -2.0, 1.0], [0.1, 0.2, 0.3]])
    out, gain_db = cli.limit_peak(loud, -0.1)
    assert gain_db == pytest.approx(-0.1 - 20 * math.log10(2.0))
    assert out.abs().max() == pytest.approx(10 ** (-0.1 / 20))
    assert torch.allclose(out / loud, torch.full_like(loud, out[0, 1].item() / -2.0))  # one gain for all samples
    quiet = torch.tensor([[0.5, -0.9]])
    same, gain_db = cli.limit_peak(quiet, -0.1)
    assert gain_db == 0.0 and torch.equal(same, quiet)


def readme_commands(section: str) -> list[str]:
    """The `stable-audio ...` lines of the README section's bash blocks."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = body.split("```bash\n")[1:]
    return [line for b in blocks for line in b.split("```")[0].splitlines() if line.startswith("stable-audio ")]


def test_readme_examples_run_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every example of the README's "Command line" section, in order, in an empty folder; only the
    model is swapped for the tiny fixture (the last --model wins)."""
    commands = readme_commands("Command line")
    assert len(commands) >= 5
    monkeypatch.chdir(tmp_path)
    for command in commands:
        main(command.removeprefix("stable-audio "), "--model", tiny())
    for name, seconds in [
        ("loop.wav", 8),
        ("batch_0.flac", 4),
        ("batch_1.flac", 6),
        ("jazz.wav", 8),
        ("fills.mp3", 8),
        ("longer.flac", 12),
    ]:
        info = sf.info(name)
        assert (info.samplerate, info.channels) == (SR, 2) and info.frames == seconds * SR, name


def test_lora_shipped_with_the_model_by_name(tmp_path: Path) -> None:
    from test_lora_model import folder_with_bundled_lora

    folder = folder_with_bundled_lora(tmp_path)
    common = f"-p x --duration 1 --duration-padding 0 --seed 11 --model {q(folder)}"
    main(f"{common} --lora-ckpt-path {q(folder / 'loras' / 'style-a.safetensors')}", "-o", str(tmp_path / "a.wav"))
    main(f"{common} --lora-ckpt-path style-a", "-o", str(tmp_path / "b.wav"))
    assert torch.equal(read_audio(tmp_path / "a.wav")[0], read_audio(tmp_path / "b.wav")[0])
    res = run("-p", "x", "--model", str(folder), "--lora-ckpt-path", "style-b", "-o", str(tmp_path / "c.wav"))
    assert res.returncode == 2
    assert f"--lora-ckpt-path: file not found: style-b (LoRAs shipped with {folder}: style-a)" in res.stderr
