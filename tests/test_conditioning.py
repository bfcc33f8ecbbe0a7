"""Text / number conditioning: golden parity, T5 loading rules, full-size key layout, CFG uncond assembly."""

from __future__ import annotations

import ctypes
import json
import math
import struct
from pathlib import Path

import pytest
import torch
from golden import GOLDEN, all_cases, assert_close, fixture_dir, load_case, rel_err
from safetensors.torch import load_file, save_file

from stable_audio_3.guidance import unconditional_cross_cond
from stable_audio_3.loading import ModelLoadError, attach_text_encoder, packaged_config, resolve_text_encoder_dir
from stable_audio_3.models import fourier as C
from stable_audio_3.models.conditioning import Conditioner, PromptTokenizer
from stable_audio_3.models.fourier import expo_frequencies
from stable_audio_3.models.t5gemma import T5GemmaEncoder, T5GemmaEncoderConfig

BF16_TOLERANCE = 2e-2  # README §6: a bf16 T5 on other kernels differs by ~1 %
EXACT_KEYS = ("input_ids", "tokenizer_attention_mask", "prompt_mask", "seconds_mask", "cross_attn_mask")
_CONDITIONERS: dict[tuple[str, str], Conditioner] = {}


def conditioner(fixture: str, config_name: str = "model_config.json") -> Conditioner:
    """The fixture's conditioner with its checkpoint weights and its T5 attached."""
    key = (fixture, config_name)
    if key not in _CONDITIONERS:
        config_path = fixture_dir(fixture) / config_name
        model_cfg = json.loads(config_path.read_text())["model"]
        cond = Conditioner.from_config(model_cfg["conditioning"], model_cfg["diffusion"])
        weights = load_file(fixture_dir(fixture) / "model.safetensors")
        cond.load_state_dict(
            {k.removeprefix("conditioner."): v for k, v in weights.items() if k.startswith("conditioner.")}, strict=True
        )
        attach_text_encoder(cond, config_path)
        _CONDITIONERS[key] = cond
    return _CONDITIONERS[key]


def outputs_of(cond: Conditioner, batch: list[dict]) -> dict[str, torch.Tensor]:
    """Our tensors under the golden case's output names."""
    result = cond.encode(batch)
    prompt, seconds = result.parts["prompt"], result.parts["seconds_total"]
    return {
        "input_ids": prompt.input_ids,
        "tokenizer_attention_mask": prompt.tokenizer_mask,
        "t5_last_hidden_state": prompt.hidden,
        "prompt_embeds": prompt.embeds,
        "prompt_mask": prompt.mask.long(),
        "seconds_embeds": seconds.embeds,
        "seconds_mask": seconds.mask,
        "cross_attn_mask": result.cross_attn_mask,
        "global_cond": result.global_cond,
    }


# -- golden parity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture,name", all_cases("conditioner"))
def test_conditioner_parity(fixture: str, name: str) -> None:
    case = load_case(fixture, name)
    ours = outputs_of(conditioner(fixture, case.meta["config"]), case.args["batch"])
    assert set(ours) == set(case.outputs), "every golden output is checked"
    bf16 = case.outputs["t5_last_hidden_state"].dtype == torch.bfloat16
    for key, golden in case.outputs.items():
        what = f"{fixture}/{name}/{key}"
        assert ours[key].dtype == golden.dtype, f"{what}: dtype {ours[key].dtype} != golden {golden.dtype}"
        if key in EXACT_KEYS:
            assert torch.equal(ours[key], golden), f"{what}: not exactly equal"
        elif bf16 and key in ("t5_last_hidden_state", "prompt_embeds"):
            err = rel_err(ours[key], golden)
            assert err <= BF16_TOLERANCE, f"{what}: relative max error {err:.3g} > {BF16_TOLERANCE}"
        else:
            assert_close(ours[key], golden, "conditioner", what)


def test_dit_cross_attention_input_is_prompt_then_seconds() -> None:
    case = load_case("tiny-small", "conditioner_batch")
    result = conditioner("tiny-small").encode(case.args["batch"])
    expected = torch.cat([case.outputs["prompt_embeds"], case.outputs["seconds_embeds"]], dim=1)
    assert result.cross_attn_cond.shape == (6, 65, 768)
    assert_close(result.cross_attn_cond, expected, "conditioner", "cross_attn_cond")
    assert torch.equal(result.global_cond, result.parts["seconds_total"].embeds[:, 0])


def test_empty_prompt_is_all_learned_padding() -> None:
    cond = conditioner("tiny-small")
    prompt = cond.encode([{"prompt": "", "seconds_total": 1.0}]).parts["prompt"]
    assert not prompt.mask.any()
    pad = cond.conditioners["prompt"].padding_embedding
    assert torch.equal(prompt.embeds[0], pad.detach().expand(prompt.embeds.shape[1], -1))


def test_seconds_are_clamped_to_the_configured_range() -> None:
    cond = conditioner("tiny-small")
    ours = cond.encode([{"prompt": "x", "seconds_total": s} for s in (384.0, 1000.0, 0.0, -5.0)]).global_cond
    assert torch.equal(ours[0], ours[1]) and torch.equal(ours[2], ours[3])
    assert not torch.equal(ours[0], ours[2])


def test_list_values_are_unwrapped_like_collated_metadata() -> None:
    cond = conditioner("tiny-small")
    plain = cond.encode([{"prompt": "rain", "seconds_total": 3.0}])
    wrapped = cond.encode([{"prompt": ["rain"], "seconds_total": (3.0,)}])
    assert torch.equal(plain.cross_attn_cond, wrapped.cross_attn_cond)
    with pytest.raises(ValueError, match="'seconds_total' missing"):
        cond.encode([{"prompt": "rain"}])


# -- tokenizer -------------------------------------------------------------------------------------


def test_tokenizer_flags_come_from_tokenizer_config_not_tokenizer_json(tmp_path: Path) -> None:
    """tiny-small's tokenizer.json has no BOS/EOS template; the config flags alone switch them on."""
    folder = fixture_dir("tiny-small") / "t5gemma-b-b-ul2"
    config = json.loads((folder / "tokenizer_config.json").read_text())
    plain = PromptTokenizer(folder / "tokenizer.json", config, max_length=8)
    both = PromptTokenizer(folder / "tokenizer.json", {**config, "add_bos_token": True, "add_eos_token": True}, 8)
    ids, mask = plain(["lofi house loop"])
    assert ids[0].tolist() == [337, 346, 358, 426, 321, 337, 425, 0] and mask[0].tolist() == [1] * 7 + [0]
    ids, mask = both(["lofi house loop"])  # 7 tokens + 2 specials > 8: the text is cut, BOS/EOS stay
    assert ids[0].tolist() == [2, 337, 346, 358, 426, 321, 337, 1] and mask[0].all()
    left = PromptTokenizer(folder / "tokenizer.json", {**config, "padding_side": "left"}, 10)
    assert left(["lofi"])[0][0].tolist()[-1] != 0 and left(["lofi"])[0][0, 0] == 0


def test_tokenizer_defaults_follow_gemma_when_flags_are_absent() -> None:
    folder = fixture_dir("tiny-small") / "t5gemma-b-b-ul2"
    tok = PromptTokenizer(folder / "tokenizer.json", {}, max_length=12)
    assert (tok.add_bos, tok.add_eos, tok.padding_side) == (True, False, "left")
    ids, _ = tok(["lofi"])
    assert ids[0, 0] == 0 and 2 in ids[0].tolist() and 1 not in ids[0].tolist()


# -- text encoder location -------------------------------------------------------------------------


def test_text_encoder_resolves_next_to_the_config_not_the_cwd(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # "." must not mean the working directory
    config_path = fixture_dir("tiny-medium") / "model_config_t5bf16.json"
    cfg = json.loads(config_path.read_text())["model"]["conditioning"]["configs"][0]["config"]
    found = resolve_text_encoder_dir(config_path, cfg)
    assert found.samefile(fixture_dir("tiny-medium") / "t5gemma-b-b-ul2-bf16")
    explicit = fixture_dir("tiny-small") / "t5gemma-b-b-ul2"
    assert resolve_text_encoder_dir(config_path, cfg, text_encoder=explicit) == explicit


def test_text_encoder_not_found_names_the_paths_tried(tmp_path: Path) -> None:
    config_path = tmp_path / "model_config.json"
    cfg = {"repo_id": "stabilityai/stable-audio-3-small-music", "subfolder": "t5gemma-b-b-ul2"}
    with pytest.raises(FileNotFoundError, match="tried: .*t5gemma-b-b-ul2") as err:
        resolve_text_encoder_dir(config_path, cfg)
    assert str(tmp_path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="lacks config.json"):
        resolve_text_encoder_dir(config_path, cfg, text_encoder=tmp_path / "nowhere")
    calls = []
    got = resolve_text_encoder_dir(config_path, cfg, download=lambda repo, sub: calls.append((repo, sub)) or tmp_path)
    assert got == tmp_path and calls == [("stabilityai/stable-audio-3-small-music", "t5gemma-b-b-ul2")]


# -- T5 checkpoint loading rules -------------------------------------------------------------------

TINY_T5 = {
    "model_type": "t5gemma",
    "encoder": {
        "vocab_size": 11,
        "hidden_size": 8,
        "intermediate_size": 12,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 4,
        "query_pre_attn_scalar": 4,
        "attn_logit_softcapping": 50.0,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "sliding_window": 4096,
        "layer_types": ["sliding_attention"],
        "hidden_activation": "gelu_pytorch_tanh",
    },
}


def write_t5(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(TINY_T5))
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def tiny_t5_tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = T5GemmaEncoder(T5GemmaEncoderConfig.from_hf(TINY_T5))
    return {f"model.encoder.{k}": torch.randn(v.shape) * 0.1 for k, v in model.state_dict().items()}


def test_t5_loader_skips_decoder_keys_by_name(tmp_path: Path) -> None:
    tensors = tiny_t5_tensors()
    extra = {
        "model.decoder.layers.0.self_attn.q_proj.weight": torch.ones(3, 3),
        "lm_head.out_proj.weight": torch.ones(2),
    }
    model = T5GemmaEncoder.from_pretrained(write_t5(tmp_path / "t5", {**tensors, **extra}))
    assert set(model.state_dict()) == {k.removeprefix("model.encoder.") for k in tensors}
    assert torch.equal(model.norm.weight, tensors["model.encoder.norm.weight"])


def test_t5_loader_names_a_missing_encoder_key(tmp_path: Path) -> None:
    tensors = tiny_t5_tensors()
    del tensors["model.encoder.layers.0.mlp.up_proj.weight"]
    with pytest.raises(ModelLoadError, match=r"missing tensors: layers\.0\.mlp\.up_proj\.weight"):
        T5GemmaEncoder.from_pretrained(write_t5(tmp_path / "t5", tensors))


def test_t5_loader_names_an_unknown_key(tmp_path: Path) -> None:
    tensors = {**tiny_t5_tensors(), "model.vision_tower.proj": torch.ones(2)}
    with pytest.raises(ModelLoadError, match=r"unexpected tensors: model\.vision_tower\.proj"):
        T5GemmaEncoder.from_pretrained(write_t5(tmp_path / "t5", tensors))
    tensors = {**tiny_t5_tensors(), "model.encoder.layers.0.extra.weight": torch.ones(2)}
    with pytest.raises(ModelLoadError, match=r"unexpected tensors: layers\.0\.extra\.weight"):
        T5GemmaEncoder.from_pretrained(write_t5(tmp_path / "t5b", tensors))


def test_t5_loader_names_a_misshaped_key(tmp_path: Path) -> None:
    tensors = {**tiny_t5_tensors(), "model.encoder.norm.weight": torch.ones(9)}
    with pytest.raises(ModelLoadError, match=r"mis-shaped tensors: norm\.weight \(file \(9,\), model \(8,\)\)"):
        T5GemmaEncoder.from_pretrained(write_t5(tmp_path / "t5", tensors))


def test_t5_runs_in_the_dtype_of_its_file() -> None:
    model = T5GemmaEncoder.from_pretrained(fixture_dir("tiny-medium") / "t5gemma-b-b-ul2-bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = model(torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.long))
    assert out.dtype == torch.bfloat16


# -- attention variants the fixtures do not exercise -----------------------------------------------


def test_grouped_query_attention_equals_repeated_heads() -> None:
    gqa = T5GemmaEncoder(T5GemmaEncoderConfig.from_hf(TINY_T5))
    mha_cfg = json.loads(json.dumps(TINY_T5))
    mha_cfg["encoder"]["num_key_value_heads"] = 2
    mha = T5GemmaEncoder(T5GemmaEncoderConfig.from_hf(mha_cfg))
    state = {k: torch.randn(v.shape) * 0.3 for k, v in gqa.state_dict().items()}
    gqa.load_state_dict(state)
    for name in ("k_proj", "v_proj"):  # one KV head shared by both query heads = that head written twice
        key = f"layers.0.self_attn.{name}.weight"
        state = {**state, key: state[key].repeat(2, 1)}
    mha.load_state_dict(state)
    ids, mask = torch.tensor([[1, 2, 3, 4, 0]]), torch.tensor([[1, 1, 1, 1, 0]])
    torch.testing.assert_close(gqa(ids, mask), mha(ids, mask), rtol=1e-5, atol=1e-6)


def test_sliding_window_hides_far_keys_only_in_sliding_layers() -> None:
    cfg = json.loads(json.dumps(TINY_T5))
    cfg["encoder"]["sliding_window"] = 2  # |i - j| < 2
    model = T5GemmaEncoder(T5GemmaEncoderConfig.from_hf(cfg))
    torch.manual_seed(1)
    model.load_state_dict({k: torch.randn(v.shape) * 0.3 for k, v in model.state_dict().items()})
    mask = torch.ones(1, 5, dtype=torch.long)
    a = model(torch.tensor([[1, 2, 3, 4, 5]]), mask)
    b = model(torch.tensor([[1, 2, 3, 9, 10]]), mask)  # changes tokens 3, 4: outside the window of 0, 1
    assert torch.equal(a[0, :2], b[0, :2]) and not torch.equal(a[0, 2:], b[0, 2:])
    model.layers[0].sliding = False  # the same layer as full attention sees every key
    assert not torch.equal(
        model(torch.tensor([[1, 2, 3, 4, 5]]), mask)[0, 0], model(torch.tensor([[1, 2, 3, 9, 10]]), mask)[0, 0]
    )


# -- full-size key layout --------------------------------------------------------------------------


def manifest(name: str) -> dict:
    path = GOLDEN / "manifests" / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"manifest {path} not found")
    return json.loads(path.read_text())


def test_full_size_t5_encoder_matches_the_manifest() -> None:
    m = manifest("t5gemma-b-b-ul2.encoder")
    with torch.device("meta"):
        model = T5GemmaEncoder(T5GemmaEncoderConfig.from_hf(m["config_used"]))
    ours = {f"model.encoder.{k}": list(v.shape) for k, v in model.state_dict().items()}
    assert ours == {t["key"]: t["shape"] for t in m["tensors"]}


@pytest.mark.parametrize("name", ["small-music", "medium"])
def test_full_size_conditioner_matches_the_manifest(name: str) -> None:
    m = manifest(name)
    model_cfg = packaged_config(name)["model"]
    with torch.device("meta"):
        cond = Conditioner.from_config(model_cfg["conditioning"], model_cfg["diffusion"])
    ours = {f"conditioner.{k}": list(v.shape) for k, v in cond.state_dict().items()}
    assert ours == {t["key"]: t["shape"] for t in m["tensors"] if t["key"].startswith("conditioner.")}
    assert cond.conditioners["prompt"].max_length == 256


# -- classifier-free guidance: the unconditional cross-attention input -----------------------------


def test_uncond_without_negative_prompt_is_all_zeros() -> None:
    cond = conditioner("tiny-small").encode([{"prompt": "lofi", "seconds_total": 3.0}] * 2)
    uncond = unconditional_cross_cond(cond.cross_attn_cond)
    assert uncond.shape == cond.cross_attn_cond.shape == (2, 65, 768)
    assert uncond.dtype == cond.cross_attn_cond.dtype and not uncond.any()


def test_uncond_with_negative_prompt_zeroes_its_masked_tokens() -> None:
    cond = conditioner("tiny-medium")
    positive = cond.encode(
        [{"prompt": "lofi house loop", "seconds_total": 3.0}, {"prompt": "rain", "seconds_total": 8.0}]
    )
    negative = cond.encode([{"prompt": "noise", "seconds_total": 3.0}, {"prompt": "", "seconds_total": 8.0}])
    uncond = unconditional_cross_cond(
        positive.cross_attn_cond, negative.cross_attn_cond, negative.cross_attn_mask
    )
    assert uncond.shape == positive.cross_attn_cond.shape
    keep = negative.cross_attn_mask.bool()
    # Masked tokens are zeros, not the learned padding vector the negative conditioning holds there.
    assert not uncond[~keep].any()
    assert negative.cross_attn_cond[~keep].abs().sum() > 0
    assert torch.equal(uncond[keep], negative.cross_attn_cond[keep])
    # The seconds token (last) is always kept; the empty negative prompt keeps BOS/EOS (tiny-medium flags).
    assert keep[:, -1].all() and torch.equal(uncond[:, -1], negative.parts["seconds_total"].embeds[:, 0])
    assert keep[1].sum() == 3
    with pytest.raises(ValueError, match="negative_cross_attn_cond has shape"):
        other = cond.encode([{"prompt": "x", "seconds_total": 1.0}]).cross_attn_cond
        unconditional_cross_cond(positive.cross_attn_cond, other)


# -- Fourier frequencies ---------------------------------------------------------------------------


def test_expo_frequencies_span_the_configured_range() -> None:
    freqs = expo_frequencies(128, 0.5, 10000.0)
    assert freqs.dtype == torch.float32 and freqs.shape == (128,)
    assert freqs[0].item() == 0.5 and abs(freqs[-1].item() - 10000.0) < 1e-3
    assert (freqs[1:] > freqs[:-1]).all()


def test_unit_ramp_equals_the_vectorised_linspace() -> None:
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("torch.linspace takes its scalar path here")
    for n in (2, 3, 64, 127, 128, 129, 1000):
        assert torch.equal(C._unit_ramp(n), torch.linspace(0, 1, n)), n


def test_expf_emulation_equals_glibc() -> None:
    try:
        libm = ctypes.CDLL("libm.so.6")
    except OSError:
        pytest.skip("glibc libm not available")
    libm.expf.restype, libm.expf.argtypes = ctypes.c_float, [ctypes.c_float]
    gen = torch.Generator().manual_seed(0)
    xs = torch.cat([torch.rand(20000, generator=gen) * 170 - 85, torch.rand(20000, generator=gen) * 10 - 1])
    for x in xs.tolist():
        assert C._expf_as_glibc(x) == libm.expf(x), x
    # Where the emulation is needed: these two differ between glibc, SLEEF and correct rounding.
    assert struct.pack("<f", C._expf_as_glibc(8.976400375366211)) == struct.pack("<f", 7914.09326171875)
    assert abs(C._expf_as_glibc(1.0) - math.e) < 1e-6
