"""Every file says exactly how it was made, and `stable-audio --from-metadata FILE` makes it again: the
same samples, bit for bit, on the same machine (the built-in demo model, as a new user runs it)."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stable_audio_3 import __version__, cli, output
from stable_audio_3.audio import read_audio, write_audio
from stable_audio_3.request import FIELDS, GenerationRequest, LoadOptions, ModelDefaults, OptionError

SR = 44100


def main(command: str, *args: str) -> None:
    assert cli.main(["-q", *shlex.split(command), *map(str, args)]) == 0


def refused(capsys: pytest.CaptureFixture, command: str, *args: str) -> str:
    """The one-line error of a command that must exit with code 2 before any model loads."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["-q", *shlex.split(command), *map(str, args)])
    assert exit_.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def same_samples(a, b) -> bool:
    """The same samples; for WAV and FLAC the very same bytes (Ogg streams carry a random serial number)."""
    same = torch.equal(read_audio(a)[0], read_audio(b)[0])
    if str(a).endswith((".wav", ".flac")):
        same = same and Path(a).read_bytes() == Path(b).read_bytes()
    return same


def tone(path, seconds: float = 1.0, freq: float = 330.0):
    t = torch.arange(int(seconds * SR)) / SR
    write_audio(path, torch.stack([torch.sin(2 * math.pi * freq * t), torch.cos(2 * math.pi * freq * t)]) * 0.4)
    return path


def test_text_to_audio_with_a_lora_is_recorded_whole_and_regenerates_bit_for_bit(tmp_path, capsys) -> None:
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    main("-p 'sine wave a4' --seed 7 --duration 1 --lora-ckpt-path octave-up --lora-strength 0.8 -o", a)
    record = output.read_record(a)
    assert (record["model"], record["item"], record["version"]) == ("demo", 0, __version__)
    assert record["loras"] == [{"name": "octave-up", "strength": 0.8}]
    assert record["load"] == {"device": "cpu", "dtype": None, "attention_padding": "exclude", "precision": "float32",
                              "compile": False}
    request = record["request"]
    assert set(request) == set(FIELDS)  # every option, resolved: the demo's 32 steps, cfg 4, Euler
    assert (request["steps"], request["cfg_scale"], request["sampler_type"], request["seed"]) == (32, 4.0, "euler", 7)
    assert request["prompt"] == ["sine wave a4"] and request["duration"] == [1.0]
    human = sf.SoundFile(str(a)).copy_metadata()["comment"].splitlines()[0]
    assert human == "seed=7 model=demo steps=32 cfg_scale=4 sampler=euler lora=octave-up@0.8"
    capsys.readouterr()
    main("--from-metadata", a, "-o", b)
    assert capsys.readouterr().out.startswith(f"wrote {b} (1.00 s, seed 7")
    assert same_samples(a, b)
    assert output.read_record(b) == record  # and the copy records the same
    # the same seed without the LoRA: other audio, and the record says so
    main("-p 'sine wave a4' --seed 7 --duration 1 -o", tmp_path / "plain.wav")
    assert output.read_record(tmp_path / "plain.wav")["loras"] == []
    assert not same_samples(a, tmp_path / "plain.wav")


def test_an_item_of_a_shared_seed_batch_is_regenerated_from_its_own_file(tmp_path) -> None:
    main("-p 'sine wave a4' 'square wave c4' --seed 3 --batch-size 2 --duration 1 0.5 --steps 4 -o",
         tmp_path / "b.flac")
    record = output.read_record(tmp_path / "b_1.flac")
    assert record["item"] == 1 and record["request"]["seed"] == 3 and record["request"]["batch_size"] == 2
    main("--from-metadata", tmp_path / "b_1.flac", "-o", tmp_path / "again.flac")
    assert same_samples(tmp_path / "b_1.flac", tmp_path / "again.flac")
    assert sf.info(str(tmp_path / "again.flac")).frames == SR // 2


def test_audio_to_audio_needs_the_same_input_again(tmp_path, capsys) -> None:
    source, out = tone(tmp_path / "in.wav"), tmp_path / "a2a.ogg"
    main(f"-p 'sine wave a4' --init-audio {source} --init-noise-level 0.6 --seed 5 --duration 1 -o", out)
    recorded = output.read_record(out)["request"]["init_audio"]
    digest = output.audio_digests(GenerationRequest(prompt="x", init_audio=str(source)))["init_audio"]
    assert recorded == digest and recorded["name"] == "in.wav" and len(recorded["sha256"]) == 64
    assert output.read_record(out)["request"]["init_noise_level"] == 0.6
    assert refused(capsys, "--from-metadata", out, "-o", tmp_path / "x.ogg") == (
        f"stable-audio: error: --from-metadata {out}: --init-audio: the recorded request used --init-audio 'in.wav' "
        f"(sha256 {digest['sha256'][:12]}...); give that audio again")
    other = tone(tmp_path / "other.wav", freq=331.0)
    assert refused(capsys, f"--from-metadata {out} --init-audio {other} -o", tmp_path / "x.ogg").endswith(
        "--init-audio: other.wav is not the audio the recorded request used ('in.wav'): its samples' sha256 differs")
    assert refused(capsys, f"--from-metadata {out} --init-audio {source} --steps 3 -o", tmp_path / "x.ogg") == (
        "stable-audio: error: --steps cannot be combined with --from-metadata: the file's request is regenerated "
        "as recorded (leave it out, or generate without --from-metadata)")
    main(f"--from-metadata {out} --init-audio {source} -o", tmp_path / "again.ogg")
    assert same_samples(out, tmp_path / "again.ogg")


def test_inpainting_takes_the_models_paste_back_records_it_and_regenerates(tmp_path, capsys) -> None:
    source, out = tone(tmp_path / "in.wav"), tmp_path / "fills.mp3"
    common = (f"-p 'sine wave a4' --inpaint-audio {source} --inpaint-start 0.2 --inpaint-end 0.4 --inpaint-start 0.6 "
              "--inpaint-end 0.8 --seed 9 --duration 1")
    main(f"{common} -o", out)
    assert "paste-back on (the model's recommendation; --paste-back / --no-paste-back choose)" in \
        capsys.readouterr().out
    request = output.read_record(out)["request"]
    assert request["inpaint_paste_back"] is True
    assert (request["inpaint_mask_start_seconds"], request["inpaint_mask_end_seconds"]) == ([0.2, 0.6], [0.4, 0.8])
    main(f"{common} --no-paste-back -o", tmp_path / "raw.mp3")
    assert "(1.00 s, seed 9, paste-back off)" in capsys.readouterr().out
    assert output.read_record(tmp_path / "raw.mp3")["request"]["inpaint_paste_back"] is False
    main(f"--from-metadata {out} --inpaint-audio {source} -o", tmp_path / "again.mp3")
    assert same_samples(out, tmp_path / "again.mp3")


def test_the_page_records_its_files_and_names_them_by_their_settings(tmp_path) -> None:
    from stable_audio_3 import ui

    holder = ui.ModelHolder(LoadOptions(device="cpu"))
    values = {"model": "demo", "prompt": "sine wave a4", "duration": 1.0, "seed": 4, "steps": 4,
              "lora_names": ["octave-up"], "lora_strengths": "0.5"}
    first = ui.generate(holder, tmp_path, values).paths[0]
    other = ui.generate(holder, tmp_path, values | {"steps": 5}).paths[0]
    name, other_name = first.rsplit("/", 1)[1], other.rsplit("/", 1)[1]
    assert name.startswith("sine_wave_a4.cfg4.seed4.") and name.endswith(".wav") and name != other_name
    record = output.read_record(first)
    assert record["loras"] == [{"name": "octave-up", "strength": 0.5}] and record["model"] == "demo"
    main(f"--from-metadata {first} --bit-depth 16 -o", tmp_path / "again.wav")  # the page writes 16-bit WAV
    assert same_samples(first, tmp_path / "again.wav")


def test_the_request_round_trips_through_json_with_audio_as_its_digest(tmp_path) -> None:
    audio = torch.randn(2, 4410) * 0.1
    request = GenerationRequest(prompt=["a", "b"], seed=[1, 2], inpaint_audio=(SR, audio), continuation=True,
                                cfg_interval=(0.1, 0.9), dist_shift={"type": "none"},
                                lora_configs=[{"lora_index": 0, "interval": [0.0, 0.5]}])
    data = json.loads(json.dumps(request.to_json(output.audio_digests(request))))  # JSON all the way
    assert data["inpaint_audio"]["name"] == "<array>" and data["inpaint_audio"]["frames"] == 4410

    def from_json(data, audio=None):
        return GenerationRequest.from_json(data, audio, output.audio_digests(audio or {}))

    again = from_json(data, {"inpaint_audio": (SR, audio.clone())})
    assert again.replace(inpaint_audio=None) == request.replace(inpaint_audio=None)
    # the digest is of the decoded samples: the same audio as a float WAV file matches it
    write_audio(tmp_path / "same.wav", audio, SR, subtype="FLOAT")
    from_json(data, {"inpaint_audio": str(tmp_path / "same.wav")})
    with pytest.raises(OptionError, match="its samples' sha256 differs"):
        from_json(data, {"inpaint_audio": (SR, audio * 0.5)})
    with pytest.raises(ValueError, match="inpaint_audio is given but digests has no entry for it"):
        request.to_json()
    with pytest.raises(OptionError, match="the recorded request used inpaint_audio '<array>'"):
        from_json(data)
    with pytest.raises(OptionError, match="warp is not an option of this version"):
        from_json({**data, "warp": 1})


@pytest.mark.parametrize("suffix", output.OUTPUT_FORMATS)
def test_the_record_survives_every_format_even_a_long_prompt_in_a_wav(tmp_path, suffix: str) -> None:
    """A WAV field holds at most 2045 bytes (libsndfile 1.2.2 drops longer ones): a long record goes in
    compressed. Non-ASCII text is escaped, so MP3's ID3 tag keeps it too."""
    prompt = "ünïcode ♪ " + " ".join(f"word{i}" for i in range(300))  # ~2.7 kB
    request = GenerationRequest(prompt=prompt, seed=1).resolve(ModelDefaults.from_config(
        {"model": {"diffusion": {"diffusion_objective": "rf_denoiser"}}, "sample_size": 44100}))
    record = output.file_record(request, [1], 0, "demo")
    meta = output.file_metadata(request, [1], 0, "demo", suffix=suffix, record=record)
    if suffix == ".wav":
        assert len(meta["comment"].encode()) <= output.WAV_FIELD_BYTES
    path = output.save_item(tmp_path / f"x{suffix}", torch.zeros(2, 4410), SR, meta)[0]
    assert output.read_record(path) == json.loads(json.dumps(record))
    assert output.read_record(path)["request"]["prompt"] == [prompt]


def test_a_file_without_a_record_is_refused_by_name(tmp_path, capsys) -> None:
    plain = tmp_path / "plain.wav"
    sf.write(str(plain), np.zeros((100, 2), np.float32), SR)
    assert refused(capsys, "--from-metadata", plain) == (
        f"stable-audio: error: --from-metadata: {plain}: its metadata holds no stable-audio-3 request (files written "
        "by stable-audio-3 0.1.0 or later carry one in their comment)")


def test_a_lora_file_is_given_again(tmp_path, capsys) -> None:
    from golden import fixture_dir

    tiny, lora = fixture_dir("tiny-small"), fixture_dir("tiny-small") / "lora" / "lora_a.safetensors"
    out = tmp_path / "a.flac"
    main(f"-p x --duration 0.5 --seed 2 --model {tiny} --lora-ckpt-path {lora} --lora-strength 0.5 -o", out)
    assert output.read_record(out)["loras"] == [{"name": "lora_a.safetensors", "strength": 0.5}]
    assert refused(capsys, "--from-metadata", out) == (
        "stable-audio: error: --from-metadata: the recorded request used the LoRA file 'lora_a.safetensors'; give it "
        "again with --lora-ckpt-path")
    main(f"--from-metadata {out} --lora-ckpt-path {lora} -o", tmp_path / "b.flac")
    assert same_samples(out, tmp_path / "b.flac")
