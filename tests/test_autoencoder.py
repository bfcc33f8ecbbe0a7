"""SAME autoencoder: reference parity, full-size key layout, strict loading, input validation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from golden import GOLDEN, all_cases, assert_close, fixture_dir, load_case

from stable_audio_3 import AutoencoderModel
from stable_audio_3.api import build_autoencoder
from stable_audio_3.loading import ModelLoadError, packaged_config

_MODELS: dict[str, AutoencoderModel] = {}


def model(fixture: str) -> AutoencoderModel:
    if fixture not in _MODELS:
        _MODELS[fixture] = AutoencoderModel.from_pretrained(fixture_dir(fixture), device="cpu")
    return _MODELS[fixture]


@pytest.mark.parametrize("fixture,name", all_cases("autoencoder"))
def test_autoencoder_parity(fixture: str, name: str) -> None:
    case = load_case(fixture, name)
    args = case.args
    ae = model(fixture)
    if args["op"] == "encode":
        ours = ae.encode(case.inputs["audio"], args["sample_rate"], chunked=args["chunked"],
                         chunk_size=args["chunk_size"], overlap=args["overlap"])
        golden = case.outputs["latents"]
    else:
        if args.get("seed") is not None:
            torch.manual_seed(args["seed"])
        ours = ae.decode(case.inputs["latents"], chunked=args["chunked"], chunk_size=args["chunk_size"],
                         overlap=args["overlap"], noise=args["decoder_noise"])
        golden = case.outputs["audio"]
    assert_close(ours, golden, "autoencoder", f"{fixture}/{name}")


def test_seeded_decode_draws_noise_in_reference_order() -> None:
    """The recorded draws of ae_decode_seeded_noise are what torch.manual_seed(1234) yields, in order."""
    case = load_case("tiny-small", "ae_decode_seeded_noise")
    torch.manual_seed(case.args["seed"])
    dither = torch.randn_like(case.outputs["rng.000.randn_like"])
    mask_noise = torch.randn_like(case.outputs["rng.001.randn_like"])
    assert torch.equal(dither, case.outputs["rng.000.randn_like"])
    assert torch.equal(mask_noise, case.outputs["rng.001.randn_like"])
    # And noise=False differs from the seeded decode by far more than the tolerance.
    latents = case.inputs["latents"]
    quiet = model("tiny-small").decode(latents, noise=False)
    torch.manual_seed(case.args["seed"])
    noisy = model("tiny-small").decode(latents, noise=True)
    assert (quiet - noisy).abs().max() > 1e-3


def test_inputs_of_every_form_give_the_same_latents() -> None:
    ae = model("tiny-small")
    case = load_case("tiny-small", "ae_encode")
    audio = case.inputs["audio"]
    ref = ae.encode(audio, 44100)
    assert torch.equal(ae.encode(audio.unsqueeze(0), 44100), ref)
    assert torch.equal(ae.encode([audio], [44100]), ref)
    assert torch.equal(ae.encode(audio.T.numpy(), 44100), ref)  # soundfile layout (T, C)
    batch = ae.encode([audio, audio[:, :50000]], 44100)
    assert batch.shape == (2, ae.latent_dim, ref.shape[-1])
    assert torch.allclose(batch[:1], ref, atol=1e-5)
    mono = ae.encode(audio[0], 44100)
    assert torch.allclose(mono, ae.encode(audio[:1].repeat(2, 1), 44100))


def test_int16_numpy_is_scaled_like_the_reference() -> None:
    ae = model("tiny-small")
    pcm = (np.sin(np.arange(20000) / 20) * 20000).astype(np.int16)
    as_float = torch.from_numpy(pcm.astype(np.float32) / 32767).unsqueeze(0)
    assert torch.equal(ae.encode(pcm, 44100), ae.encode(as_float, 44100))


def test_chunked_roundtrip_shapes() -> None:
    ae = model("tiny-medium")
    latents = torch.randn(2, ae.latent_dim, 40)
    audio = ae.decode(latents, chunked=True, chunk_size=16, overlap=4, noise=False)
    assert audio.shape == (2, 2, 40 * 4096)
    again = ae.encode(audio, 44100, chunked=True, chunk_size=16, overlap=4)
    assert again.shape == (2, ae.latent_dim, 40)


# -- full-size layout -----------------------------------------------------------------------
@pytest.mark.parametrize("name,manifest", [("same-s", "SAME-S"), ("same-l", "SAME-L"),
                                           ("small-music", "small-music"), ("medium", "medium")])
def test_full_size_autoencoder_matches_manifest(name: str, manifest: str) -> None:
    path = GOLDEN / "manifests" / f"{manifest}.json"
    if not path.is_file():
        pytest.skip(f"manifest {path} not found (set SA3_GOLDEN)")
    data = json.loads(path.read_text())
    prefix = "" if manifest.startswith("SAME") else "pretransform.model."
    expected = {t["key"][len(prefix):]: tuple(t["shape"]) for t in data["tensors"] if t["key"].startswith(prefix)}
    ae = build_autoencoder(packaged_config(name), None, name)
    ours = {k: tuple(v.shape) for k, v in ae.state_dict().items()}
    assert ours == expected
    assert packaged_config(name) == data["config_used"]


# -- strict loading and bad inputs ----------------------------------------------------------
def _copy_fixture(tmp_path: Path, fixture: str = "tiny-small") -> Path:
    src = fixture_dir(fixture)
    dst = tmp_path / fixture
    dst.mkdir()
    shutil.copy(src / "model_config.json", dst / "model_config.json")
    shutil.copy(src / "model.safetensors", dst / "model.safetensors")
    return dst


def _rewrite(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    folder = _copy_fixture(tmp_path)
    _rewrite(folder, lambda s: s.pop("pretransform.model.bottleneck.running_std"))
    with pytest.raises(ModelLoadError, match=r"missing tensors: bottleneck\.running_std"):
        AutoencoderModel.from_pretrained(folder, device="cpu")


def test_unexpected_and_misshaped_tensors_are_named(tmp_path: Path) -> None:
    folder = _copy_fixture(tmp_path)

    def edit(s):
        s["pretransform.model.encoder.extra.weight"] = torch.zeros(3)
        s["pretransform.model.bottleneck.bias"] = torch.zeros(1, 5, 1)

    _rewrite(folder, edit)
    with pytest.raises(ModelLoadError) as err:
        AutoencoderModel.from_pretrained(folder, device="cpu")
    assert "unexpected tensors: encoder.extra.weight" in str(err.value)
    assert "mis-shaped tensors: bottleneck.bias (file (1, 5, 1), model (1, 32, 1))" in str(err.value)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    folder = _copy_fixture(tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated or not a valid safetensors file"):
        AutoencoderModel.from_pretrained(folder, device="cpu")


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    folder = _copy_fixture(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="lacks model.safetensors"):
        AutoencoderModel.from_pretrained(folder, device="cpu")


def test_config_of_another_model_type(tmp_path: Path) -> None:
    folder = _copy_fixture(tmp_path)
    cfg = json.loads((folder / "model_config.json").read_text())
    cfg["model_type"] = "diffusion_cond"
    (folder / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="model_type 'diffusion_cond' is not an autoencoder; allowed"):
        AutoencoderModel.from_pretrained(folder, device="cpu")


def test_unknown_model_name() -> None:
    with pytest.raises(ModelLoadError, match="unknown model 'same-xl'.*allowed names: same-s, same-l"):
        AutoencoderModel.from_pretrained("same-xl", device="cpu")


def test_offline_hub_name_gives_a_helpful_message(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError) as err:
        AutoencoderModel.from_pretrained("same-s", device="cpu")
    text = str(err.value)
    assert "stabilityai/SAME-S" in text and "offline" in text and "model.safetensors" in text


def test_standalone_autoencoder_layout(tmp_path: Path) -> None:
    """A SAME repo layout (model_type autoencoder, keys without prefix) loads and matches."""
    from safetensors.torch import load_file, save_file

    src = fixture_dir("tiny-small")
    cfg = json.loads((src / "model_config.json").read_text())
    standalone = {"model_type": "autoencoder", "sample_rate": 44100, "audio_channels": 2,
                  "model": cfg["model"]["pretransform"]["config"]}
    folder = tmp_path / "same"
    folder.mkdir()
    (folder / "model_config.json").write_text(json.dumps(standalone))
    state = {k[len("pretransform.model."):]: v for k, v in load_file(str(src / "model.safetensors")).items()
             if k.startswith("pretransform.model.")}
    save_file(state, str(folder / "model.safetensors"))
    ae = AutoencoderModel.from_pretrained(folder, device="cpu")
    case = load_case("tiny-small", "ae_encode")
    assert_close(ae.encode(case.inputs["audio"], 44100), case.outputs["latents"], "autoencoder", "standalone")


@pytest.mark.parametrize("audio,sr,message", [
    (torch.zeros(2, 2, 2, 100), 44100, "audio: expected a tensor of shape"),
    (torch.zeros(2, 0), 44100, "audio: audio has zero samples"),
    (torch.tensor([[0.0, float("nan"), 0.1]]), 44100, "audio: audio contains NaN or infinite samples"),
    (torch.tensor([[0.0, float("inf"), 0.1]]), 44100, "audio: audio contains NaN or infinite samples"),
    (torch.zeros(2, 100), 0, r"sr=0 is invalid; an integer number of Hz in \[1000, 768000\] is required"),
    (torch.zeros(2, 100), -44100, "sr=-44100 is invalid"),
    (np.zeros((100, 2), dtype=np.uint8), 44100, "unsupported numpy dtype uint8"),
    ([], 44100, "audio: an empty list was given"),
    ("noise.wav", 44100, "audio: expected a tensor, numpy array or list"),
])
def test_bad_encode_inputs(audio, sr, message: str) -> None:
    ae = model("tiny-small")
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(")):
        ae.encode(audio, sr)


def test_bad_decode_inputs() -> None:
    ae = model("tiny-small")
    with pytest.raises(ValueError, match=r"latents: expected shape \(batch, 32, frames\)"):
        ae.decode(torch.zeros(1, 8, 4))
    with pytest.raises(ValueError, match="latents: zero frames given"):
        ae.decode(torch.zeros(1, 32, 0))
    with pytest.raises(ValueError, match="latents: contains NaN"):
        ae.decode(torch.full((1, 32, 2), float("nan")))
    with pytest.raises(ValueError, match=r"overlap=16 is invalid; an integer in \[0, chunk_size=16\)"):
        ae.decode(torch.zeros(1, 32, 4), chunked=True, chunk_size=16, overlap=16)
