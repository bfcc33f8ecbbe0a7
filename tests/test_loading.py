"""Loading: Hub cache snapshots, local folders, single files, full-size key mappings, helpful failures,
device / dtype choices and the attention backend override. Everything offline, from the tiny fixtures."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from golden import GOLDEN, assert_close, fixture_dir, load_case
from safetensors.torch import load_file, save_file

from stable_audio_3 import AutoencoderModel, StableAudioModel
from stable_audio_3.api import CHECKPOINT_PARTS, build_autoencoder
from stable_audio_3.audio import write_audio
from stable_audio_3.loading import (
    DIFFUSION_MODELS,
    HUB_REPOS,
    ModelLoadError,
    OffloadedTextEncoder,
    SafetensorsFile,
    check_state,
    demo_folder,
    hub_failure_message,
    module_shapes,
    packaged_config,
    read_safetensors,
    resolve_dtype,
    split_checkpoint_keys,
    t5gemma_encoder_keys,
)
from stable_audio_3.models import attention

COMMIT = "0123456789abcdef0123456789abcdef01234567"
T5 = "t5gemma-b-b-ul2"
T5_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
MANIFESTS = GOLDEN / "manifests"

_REFERENCE: dict[str, StableAudioModel] = {}


def reference(fixture: str = "tiny-small") -> StableAudioModel:
    """The fixture loaded from its own folder: what every other route must reproduce."""
    if fixture not in _REFERENCE:
        _REFERENCE[fixture] = StableAudioModel.from_pretrained(fixture_dir(fixture), device="cpu")
    return _REFERENCE[fixture]


def all_weights(model: StableAudioModel) -> dict[str, torch.Tensor]:
    t5 = model.conditioner.conditioners["prompt"].text_encoder.model
    parts = {"dit": model.dit, "cond": model.conditioner, "ae": model.autoencoder, "t5": t5}
    return {f"{p}.{k}": v for p, m in parts.items() for k, v in m.state_dict().items()}


def assert_same_weights(model: StableAudioModel, fixture: str = "tiny-small") -> None:
    ours, ref = all_weights(model), all_weights(reference(fixture))
    assert ours.keys() == ref.keys()
    different = [k for k in ref if not torch.equal(ours[k], ref[k])]
    assert not different, different[:5]


def assert_conditioner_parity(model: StableAudioModel) -> None:
    case = load_case("tiny-small", "conditioner_batch")
    result = model.conditioner.encode(case.args["batch"], "cpu")
    expected = torch.cat([case.outputs["prompt_embeds"], case.outputs["seconds_embeds"]], dim=1)
    assert_close(result.cross_attn_cond, expected, "conditioner", "cross_attn_cond via loader")


# -- a Hugging Face cache, built by hand -----------------------------------------------------------


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch) -> Path:
    """An empty HF_HOME, offline: huggingface_hub can only answer from the cache we build."""
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    return home / "hub"


def add_snapshot(cache: Path, repo: str, files: dict[str, Path | bytes], commit: str = COMMIT) -> Path:
    """The layout huggingface_hub writes: blobs by hash, snapshot entries as relative symlinks, refs/main."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    for rel, src in files.items():
        data = src.read_bytes() if isinstance(src, Path) else src
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


def hub_files(fixture: str, t5_repo_id: str, with_t5: bool = True) -> dict[str, Path | bytes]:
    """A fixture as its Hub repo holds it: the config's text encoder points at a Hub repo, as the real one."""
    src = fixture_dir(fixture)
    cfg = json.loads((src / "model_config.json").read_text())
    cfg["model"]["conditioning"]["configs"][0]["config"]["repo_id"] = t5_repo_id
    files: dict[str, Path | bytes] = {
        "model_config.json": json.dumps(cfg).encode(),
        "model.safetensors": src / "model.safetensors",
    }
    if with_t5:
        files.update({f"{T5}/{name}": src / T5 / name for name in T5_FILES})
    return files


def test_hub_snapshot_loads_offline_and_matches_the_fixture(hub_cache: Path) -> None:
    repo = HUB_REPOS["small-music"]
    snapshot = add_snapshot(hub_cache, repo, hub_files("tiny-small", repo))
    model = StableAudioModel.from_pretrained("small-music", device="cpu")
    assert model.config_path == snapshot / "model_config.json"  # the snapshot path, not the blob
    assert_same_weights(model)
    assert_conditioner_parity(model)


def test_hub_revision_is_honoured(hub_cache: Path) -> None:
    repo = HUB_REPOS["small-music"]
    add_snapshot(hub_cache, repo, hub_files("tiny-small", repo))
    model = StableAudioModel.from_pretrained("small-music", device="cpu", revision=COMMIT)
    assert_same_weights(model)
    with pytest.raises(ModelLoadError) as err:
        StableAudioModel.from_pretrained("small-music", device="cpu", revision="v9")
    assert "at revision 'v9'" in str(err.value)


def test_medium_base_takes_the_text_encoder_of_its_own_repo(hub_cache: Path) -> None:
    """Its config names the gated medium repo; the medium-base repo has its own copy (and medium is absent)."""
    snapshot = add_snapshot(hub_cache, HUB_REPOS["medium-base"], hub_files("tiny-medium", HUB_REPOS["medium"]))
    model = StableAudioModel.from_pretrained("medium-base", device="cpu")
    assert_same_weights(model, "tiny-medium")
    assert not (hub_cache / "models--stabilityai--stable-audio-3-medium").exists()
    assert model.config_path.parent == snapshot


def test_hub_repo_without_text_encoder_uses_the_repo_its_config_names(hub_cache: Path) -> None:
    add_snapshot(hub_cache, HUB_REPOS["medium-base"], hub_files("tiny-medium", HUB_REPOS["medium"], with_t5=False))
    with pytest.raises(ModelLoadError) as err:  # offline, and the medium repo is not cached either
        StableAudioModel.from_pretrained("medium-base", device="cpu")
    assert HUB_REPOS["medium-base"] in str(err.value) and "hf auth login" in str(err.value)
    src = fixture_dir("tiny-medium") / T5
    add_snapshot(hub_cache, HUB_REPOS["medium"], {f"{T5}/{n}": src / n for n in T5_FILES})
    assert_same_weights(StableAudioModel.from_pretrained("medium-base", device="cpu"), "tiny-medium")


def test_truncated_download_names_the_blob_to_delete(hub_cache: Path) -> None:
    repo = HUB_REPOS["small-music"]
    files = hub_files("tiny-small", repo)
    files["model.safetensors"] = files["model.safetensors"].read_bytes()[:-1000]
    snapshot = add_snapshot(hub_cache, repo, files)
    with pytest.raises(ModelLoadError) as err:
        StableAudioModel.from_pretrained("small-music", device="cpu")
    text = str(err.value)
    blob = (snapshot / "model.safetensors").resolve()
    assert "truncated" in text and f"Delete {blob}" in text


def test_same_s_reuses_a_cached_small_model(hub_cache: Path) -> None:
    """No SAME-S download when a small checkpoint (which holds SAME-S) is cached; only its AE is read."""
    files = hub_files("tiny-small", HUB_REPOS["small-sfx"], with_t5=False)
    add_snapshot(hub_cache, HUB_REPOS["small-sfx"], files)
    ae = AutoencoderModel.from_pretrained("same-s", device="cpu")
    case = load_case("tiny-small", "ae_encode")
    assert_close(ae.encode(case.inputs["audio"], 44100), case.outputs["latents"], "autoencoder", "same-s from cache")


def test_same_s_standalone_repo(hub_cache: Path) -> None:
    src = fixture_dir("tiny-small")
    cfg = json.loads((src / "model_config.json").read_text())
    standalone = {
        "model_type": "autoencoder",
        "sample_rate": 44100,
        "audio_channels": 2,
        "model": cfg["model"]["pretransform"]["config"],
    }
    state = read_safetensors(src / "model.safetensors", prefix="pretransform.model.")
    ckpt = hub_cache.parent / "same.safetensors"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(ckpt))
    add_snapshot(
        hub_cache,
        HUB_REPOS["same-s"],
        {"model_config.json": json.dumps(standalone).encode(), "model.safetensors": ckpt},
    )
    ae = AutoencoderModel.from_pretrained("same-s", device="cpu")
    case = load_case("tiny-small", "ae_encode")
    assert_close(ae.encode(case.inputs["audio"], 44100), case.outputs["latents"], "autoencoder", "SAME-S repo")


# -- helpful failures -----------------------------------------------------------------------------


def _assert_helpful(text: str, repo: str) -> None:
    assert repo in text
    assert f"https://huggingface.co/{repo}" in text
    assert "hf auth login" in text and "HF_TOKEN" in text
    assert "local folder" in text and "config=" in text
    assert "Traceback" not in text


def test_offline_empty_cache_small_music(hub_cache: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        StableAudioModel.from_pretrained("small-music", device="cpu")
    text = str(err.value)
    _assert_helpful(text, "stabilityai/stable-audio-3-small-music")
    assert "not in the local cache" in text and str(hub_cache) in text
    assert "gated" in text and "accept the licence" in text


def test_offline_empty_cache_same_s(hub_cache: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        AutoencoderModel.from_pretrained("same-s", device="cpu")
    _assert_helpful(str(err.value), "stabilityai/SAME-S")
    assert "gated" not in str(err.value)  # SAME-S is open


@pytest.mark.parametrize("args", [["-p", "x", "--model", "small-music"], ["encode", "x.wav", "--model", "small-music"]])
def test_cli_fails_with_the_message_and_no_traceback(tmp_path: Path, args: list[str]) -> None:
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    write_audio(tmp_path / "x.wav", torch.zeros(2, 4410))  # encode reads its input before the model loads
    res = subprocess.run(
        [sys.executable, "-m", "stable_audio_3.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert res.returncode != 0
    _assert_helpful(res.stderr, "stabilityai/stable-audio-3-small-music")


def test_gated_repo_message() -> None:
    import httpx
    from huggingface_hub.errors import GatedRepoError

    response = httpx.Response(403, request=httpx.Request("GET", "https://huggingface.co/x"))
    error = GatedRepoError("Access to model stabilityai/stable-audio-3-medium is restricted.", response=response)
    text = hub_failure_message("medium", HUB_REPOS["medium"], error)
    _assert_helpful(text, HUB_REPOS["medium"])
    assert "GatedRepoError: Access to model" in text and "has no access yet: accept its licence" in text


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ModelLoadError, match="unknown model 'small-musik'.*Did you mean 'small-music'"):
        StableAudioModel.from_pretrained("small-musik", device="cpu")


def test_missing_demo_model_says_so(tmp_path: Path, monkeypatch) -> None:
    import stable_audio_3.loading.resolve as resolve

    monkeypatch.setattr(resolve, "demo_folder", lambda: tmp_path / "demo")  # an install without the assets
    with pytest.raises(ModelLoadError, match="the built-in demo model is not installed"):
        StableAudioModel.from_pretrained(device="cpu")


def test_demo_is_the_default_model() -> None:
    model = StableAudioModel.from_pretrained(device="cpu")
    assert model.config_path.parent == demo_folder()


# -- local folders and single files ------------------------------------------------------------------


def test_plain_local_folder(tmp_path: Path) -> None:
    src = fixture_dir("tiny-small")
    folder = tmp_path / "my model"
    shutil.copytree(src / T5, folder / T5)
    for name in ("model_config.json", "model.safetensors"):
        shutil.copy(src / name, folder / name)
    assert_same_weights(StableAudioModel.from_pretrained(folder, device="cpu"))


def test_single_file_with_config_and_text_encoder(tmp_path: Path) -> None:
    src = fixture_dir("tiny-small")
    ckpt = tmp_path / "sa3_tiny_repackaged.safetensors"
    shutil.copy(src / "model.safetensors", ckpt)
    model = StableAudioModel.from_pretrained(
        ckpt, device="cpu", config=src / "model_config.json", text_encoder=src / T5
    )
    assert_same_weights(model)
    assert_conditioner_parity(model)
    with pytest.raises(ModelLoadError, match="single checkpoint file: pass config= with a model name"):
        StableAudioModel.from_pretrained(ckpt, device="cpu")
    with pytest.raises(ModelLoadError, match="config='small' is neither a config file nor a model name"):
        StableAudioModel.from_pretrained(ckpt, device="cpu", config="small")


def test_text_encoder_missing_is_one_helpful_error(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.safetensors"
    shutil.copy(fixture_dir("tiny-small") / "model.safetensors", ckpt)
    with pytest.raises(ModelLoadError, match=r"text encoder \(T5Gemma\) could not be loaded.*Pass text_encoder="):
        StableAudioModel.from_pretrained(ckpt, device="cpu", config=fixture_dir("tiny-small") / "model_config.json")


def test_text_encoder_file_with_decoder_tensors_loads_in_its_dtype(tmp_path: Path) -> None:
    """The real T5Gemma file is bf16 and holds the decoder too: decoder tensors are skipped unread."""
    src = fixture_dir("tiny-small") / T5
    folder = tmp_path / "t5"
    shutil.copytree(src, folder)
    state = load_file(str(src / "model.safetensors"))
    state.update(
        {
            "model.decoder.embed_tokens.weight": torch.randn(456, 768),
            "model.decoder.layers.0.cross_attn.q_proj.weight": torch.randn(32, 768),
            "model.decoder.norm.weight": torch.randn(768),
            "lm_head.out_proj.weight": torch.randn(456, 768),
        }
    )
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(folder / "model.safetensors"))
    model = StableAudioModel.from_pretrained(fixture_dir("tiny-small"), device="cpu", text_encoder=folder)
    t5 = model.conditioner.conditioners["prompt"].text_encoder.model
    assert {p.dtype for p in t5.parameters()} == {torch.bfloat16}
    assert not any(k.startswith("decoder") for k in t5.state_dict())
    assert next(model.dit.parameters()).dtype == torch.float32
    ref = reference().conditioner.conditioners["prompt"].text_encoder.model.state_dict()
    for key, value in t5.state_dict().items():
        assert torch.equal(value, ref[key].to(torch.bfloat16)), key


# -- full-size key mapping, proven on the meta device -------------------------------------------------


def manifest(name: str) -> dict:
    path = MANIFESTS / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"manifest {path} not found")
    return json.loads(path.read_text())


@pytest.mark.parametrize("name", DIFFUSION_MODELS)
def test_checkpoint_key_mapping_is_complete_for_every_model(name: str) -> None:
    from stable_audio_3.models.conditioning import Conditioner
    from stable_audio_3.models.dit import DiffusionTransformer

    data = manifest(name)
    shapes = {t["key"]: tuple(t["shape"]) for t in data["tensors"]}
    keys = split_checkpoint_keys(list(shapes), CHECKPOINT_PARTS, name)
    assert sum(len(v) for v in keys.values()) == len(shapes) == data["summary"]["num_tensors"]
    cfg = packaged_config(name)
    with torch.device("meta"):
        modules = {
            "dit": DiffusionTransformer.from_config(cfg["model"]["diffusion"]["config"]),
            "conditioner": Conditioner.from_config(cfg["model"]["conditioning"], cfg["model"]["diffusion"]),
        }
    modules["autoencoder"] = build_autoencoder(cfg, None, name)
    for part, module in modules.items():
        check_state(module_shapes(module), {k: shapes[f] for k, f in keys[part].items()}, f"{part} of {name}")


@pytest.mark.parametrize("name,manifest_name", [("same-s", "SAME-S"), ("same-l", "SAME-L")])
def test_standalone_autoencoder_key_mapping_is_complete(name: str, manifest_name: str) -> None:
    shapes = {t["key"]: tuple(t["shape"]) for t in manifest(manifest_name)["tensors"]}
    check_state(module_shapes(build_autoencoder(packaged_config(name), None, name)), shapes, name)


def test_text_encoder_key_mapping_is_complete() -> None:
    from stable_audio_3.models.t5gemma import T5GemmaEncoder, T5GemmaEncoderConfig

    data = manifest("t5gemma-b-b-ul2.encoder")
    shapes = {t["key"]: tuple(t["shape"]) for t in data["tensors"]}
    decoder = {"model.decoder.layers.0.self_attn.q_proj.weight": (768, 768), "lm_head.out_proj.weight": (256000, 768)}
    keys = t5gemma_encoder_keys(list(shapes) + list(decoder))
    with torch.device("meta"):
        model = T5GemmaEncoder(T5GemmaEncoderConfig.from_hf(data["config_used"]))
    check_state(module_shapes(model), {k: {**shapes, **decoder}[f] for k, f in keys.items()}, "T5Gemma")


def write_sparse_checkpoint(path: Path, tensors: dict[str, tuple[int, ...]]) -> None:
    """A full-size float32 safetensors file whose data is a hole: the header is real, the disk holds nothing."""
    header, offset = {}, 0
    for key, shape in tensors.items():
        nbytes = 4 * int(torch.Size(shape).numel())
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.truncate(8 + len(raw) + offset)


def test_full_size_single_file_is_checked_before_any_weight_is_read(tmp_path: Path) -> None:
    """`config="small-music-base"` builds the full model; a missing and a foreign tensor are named at once."""
    shapes = {t["key"]: tuple(t["shape"]) for t in manifest("small-music-base")["tensors"]}
    gone = "model.model.transformer.layers.7.ff.ff.0.proj.weight"
    assert gone in shapes
    del shapes[gone]
    ckpt = tmp_path / "small-music-base.safetensors"
    write_sparse_checkpoint(ckpt, shapes)
    assert ckpt.stat().st_size > 2_000_000_000
    t5 = fixture_dir("tiny-small") / T5
    with pytest.raises(
        ModelLoadError, match=r"DiT of .* missing tensors: transformer\.layers\.7\.ff\.ff\.0\.proj\.weight"
    ):
        StableAudioModel.from_pretrained(ckpt, device="cpu", config="small-music-base", text_encoder=t5)
    write_sparse_checkpoint(ckpt, {**shapes, "model.ema.decay": (1,)})
    with pytest.raises(ModelLoadError, match=r"tensors outside model\.model\.\*.*: model\.ema\.decay"):
        StableAudioModel.from_pretrained(ckpt, device="cpu", config="small-music-base", text_encoder=t5)


def test_tiny_file_with_a_full_size_config_names_the_mismatch(tmp_path: Path) -> None:
    ckpt = tmp_path / "tiny.safetensors"
    shutil.copy(fixture_dir("tiny-small") / "model.safetensors", ckpt)
    with pytest.raises(ModelLoadError, match=r"mis-shaped tensors: .*\(file \(128, .*model \(1024,"):
        StableAudioModel.from_pretrained(ckpt, device="cpu", config="small-music", text_encoder=ckpt.parent)


# -- the safetensors reader ---------------------------------------------------------------------------


def test_reader_matches_safetensors_for_every_dtype(tmp_path: Path) -> None:
    tensors = {
        "f32": torch.randn(3, 5),
        "bf16": torch.randn(7).to(torch.bfloat16),
        "f16": torch.randn(2, 2, 2).to(torch.float16),
        "i64": torch.arange(6).reshape(2, 3),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
    }
    save_file(tensors, str(tmp_path / "t.safetensors"))
    ours = read_safetensors(tmp_path / "t.safetensors")
    for key, value in load_file(str(tmp_path / "t.safetensors")).items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
    cast = SafetensorsFile(tmp_path / "t.safetensors").read({"a": "bf16", "b": "i64"}, "cpu", torch.float32)
    assert cast["a"].dtype == torch.float32 and cast["b"].dtype == torch.int64  # only floats are cast


def test_reader_rejects_a_garbage_header(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelLoadError, match="truncated or not a valid safetensors file: unreadable header"):
        SafetensorsFile(tmp_path / "bad.safetensors")


# -- device, precision, offload, attention backend ------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.int8, "double", 16])
def test_unsupported_dtype_is_a_value_error_naming_the_argument(dtype) -> None:
    with pytest.raises(ValueError, match=r"dtype=.* is not supported; allowed: None .*torch\.bfloat16"):
        StableAudioModel.from_pretrained(fixture_dir("tiny-small"), device="cpu", dtype=dtype)
    with pytest.raises(ValueError, match=r"dtype=.* is not supported"):
        AutoencoderModel.from_pretrained(fixture_dir("tiny-small"), device="cpu", dtype=dtype)


def test_dtype_defaults_and_names() -> None:
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype(None, torch.device("mps")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("torch.float16", torch.device("cpu")) == torch.float16


def test_bfloat16_on_cpu_casts_dit_conditioner_and_autoencoder_but_not_the_text_encoder() -> None:
    model = StableAudioModel.from_pretrained(fixture_dir("tiny-small"), device="cpu", dtype=torch.bfloat16)
    for module in (model.dit, model.conditioner, model.autoencoder):
        dtypes = {name: p.dtype for name, p in module.state_dict().items() if p.is_floating_point()}
        timestep = {dtypes.pop(name) for name in list(dtypes) if name.startswith("to_timestep_embed.")}
        assert set(dtypes.values()) == {torch.bfloat16}
        assert timestep <= {torch.float32} and (module is not model.dit or timestep)  # t not rounded to bf16
    t5 = model.conditioner.conditioners["prompt"].text_encoder.model
    assert {p.dtype for p in t5.parameters()} == {torch.float32}  # the fixture's T5 file is float32
    ref = reference()
    assert torch.equal(
        model.dit.state_dict()["to_cond_embed.0.weight"],
        ref.dit.state_dict()["to_cond_embed.0.weight"].to(torch.bfloat16),
    )
    ae = AutoencoderModel.from_pretrained(fixture_dir("tiny-small"), device="cpu", dtype="bfloat16")
    assert next(ae.autoencoder.parameters()).dtype == torch.bfloat16


def test_unavailable_or_unknown_device_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="device='tpu' is invalid; allowed"):
        StableAudioModel.from_pretrained(fixture_dir("tiny-small"), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda' is not available"):
            AutoencoderModel.from_pretrained(fixture_dir("tiny-small"), device="cuda")


def test_offload_text_encoder_keeps_t5_in_cpu_memory() -> None:
    model = StableAudioModel.from_pretrained(fixture_dir("tiny-small"), device="cpu", offload_text_encoder=True)
    assert model.conditioner.offload_text_encoder is True
    assert reference().conditioner.offload_text_encoder is False
    text_encoder = model.conditioner.conditioners["prompt"].text_encoder
    assert isinstance(text_encoder, OffloadedTextEncoder)
    assert text_encoder.model.embed_tokens.weight.device.type == "cpu"
    assert_conditioner_parity(model)


def test_attention_backend_from_the_environment(monkeypatch, caplog) -> None:
    monkeypatch.setenv("SA3_ATTENTION_BACKEND", "math")
    attention._logged.clear()
    with caplog.at_level(logging.INFO, logger="stable_audio_3.models.attention"):
        assert attention.check_backend(None) == "math"
        assert attention.check_backend(None) == "math"
        assert attention.check_backend("sdpa") == "sdpa"  # an explicit choice wins
    chosen = [r.message for r in caplog.records if "from SA3_ATTENTION_BACKEND" in r.message]
    assert chosen == ["attention backend 'math' (from SA3_ATTENTION_BACKEND)"]
    model = StableAudioModel.from_pretrained(fixture_dir("tiny-small"), device="cpu")
    assert model.dit.attention_backend == "math"
    monkeypatch.setenv("SA3_ATTENTION_BACKEND", "xformers")
    with pytest.raises(ValueError, match="SA3_ATTENTION_BACKEND='xformers' is not supported; allowed: auto"):
        attention.check_backend(None)


def test_models_import_nothing_from_the_rest_of_the_package() -> None:
    """Layering: `models/` is self-contained and `loading` builds on it, never the reverse (no import cycle)."""
    import ast

    import stable_audio_3.models as models

    root = Path(models.__file__).parent
    outside = []
    for path in sorted(root.rglob("*.py")):
        depth = len(path.relative_to(root).parts)  # 1 for models/x.py, 2 for models/lora/x.py
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > depth:
                outside.append(f"{path.relative_to(root)}: from {'.' * node.level}{node.module or ''}")
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            outside += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith("stable_audio_3")
                        and not n.startswith("stable_audio_3.models")]
    assert not outside
