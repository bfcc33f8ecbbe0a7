"""LoRA at inference (spec §6, §3.8): every adapter type against the spec's formulas, strengths,
stacking, filters, exact unload, file safety, and the golden LoRA files against the real key layout."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from golden import FIXTURES, fixture_dir, index
from safetensors.torch import load_file, save_file
from torch import nn

from stable_audio_3.models.lora import (
    ADAPTER_TYPES,
    LoraError,
    LoraFile,
    LoraSet,
    apply_loras,
    expand_ranges,
    matches_any,
    read_lora_file,
    read_svd_bases,
)

T5_PREFIX = "conditioners.prompt.t5"
QKV0 = "model.transformer.layers.0.self_attn.to_qkv"
QKV1 = "model.transformer.layers.1.self_attn.to_qkv"
CONV = "model.postprocess_conv"  # Conv1d with k=3: viewed as (out, in*k)
SECONDS = "conditioners.seconds_total.embedder.embedding.1"


# ----------------------------------------------------------------------------------------------
# A tiny model tree with the official names


def tiny_model(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    dit = nn.Module()
    dit.preprocess_conv = nn.Conv1d(8, 8, 1, bias=False)
    dit.to_cond_embed = nn.Sequential(nn.Linear(12, 16, bias=False), nn.SiLU(), nn.Linear(16, 16, bias=False))
    dit.transformer = nn.Module()
    dit.transformer.project_in = nn.Linear(8, 16, bias=False)
    dit.transformer.layers = nn.ModuleList()
    for _ in range(2):
        layer = nn.Module()
        layer.pre_norm = nn.LayerNorm(16)
        layer.self_attn = nn.Module()
        layer.self_attn.to_qkv = nn.Linear(16, 48, bias=False)
        layer.self_attn.to_out = nn.Linear(16, 16, bias=False)
        dit.transformer.layers.append(layer)
    dit.transformer.project_out = nn.Linear(16, 8, bias=False)
    dit.postprocess_conv = nn.Conv1d(8, 6, 3, padding=1)

    conditioner = nn.Module()
    seconds, prompt = nn.Module(), nn.Module()
    seconds.embedder = nn.Module()
    seconds.embedder.embedding = nn.Sequential(nn.Identity(), nn.Linear(6, 12))
    prompt.t5 = nn.Module()  # stands for the T5 encoder: never a LoRA target
    prompt.t5.proj = nn.Linear(12, 12)
    conditioner.conditioners = nn.ModuleDict({"seconds_total": seconds, "prompt": prompt})
    return dit, conditioner


def new_set(dit: nn.Module, conditioner: nn.Module) -> LoraSet:
    return LoraSet({"model.": dit, "": conditioner}, skip_prefixes=(T5_PREFIX,))


def module_at(dit: nn.Module, conditioner: nn.Module, name: str) -> nn.Module:
    if name.startswith("model."):
        return dit.get_submodule(name[len("model.") :])
    return conditioner.get_submodule(name)


def forward_all(dit: nn.Module, conditioner: nn.Module) -> list[torch.Tensor]:
    """Runs every Linear/Conv1d of both trees on fixed inputs (the modules' own forward)."""
    gen = torch.Generator().manual_seed(123)
    outs = []
    with torch.no_grad():
        for root in (dit, conditioner):
            for _, m in root.named_modules():
                if isinstance(m, nn.Linear):
                    outs.append(m(torch.randn(3, m.in_features, generator=gen)))
                elif isinstance(m, nn.Conv1d):
                    outs.append(m(torch.randn(1, m.in_channels, 7, generator=gen)))
    return outs


def assert_outputs_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def snapshot(dit: nn.Module, conditioner: nn.Module) -> dict:
    return {f"{i}.{k}": v.clone() for i, root in enumerate((dit, conditioner)) for k, v in root.state_dict().items()}


def assert_state_equal(before: dict, after: dict) -> None:
    assert list(before) == list(after)
    assert all(torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------------------------
# Writing LoRA files and the spec's formulas


def lora_tensors(adapter_type: str, weight: torch.Tensor, rank: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    fan_out, fan_in = weight.shape[0], weight[0].numel()
    core, norm = ADAPTER_TYPES[adapter_type]
    w2d = weight.detach().reshape(fan_out, -1)
    t = {}
    if core == "AB":
        t["lora_A"] = torch.randn(rank, fan_in, generator=gen) * 0.3
        t["lora_B"] = torch.randn(fan_out, rank, generator=gen) * 0.3
    else:
        t["M_xs"] = torch.randn(rank, rank, generator=gen)
    if norm == "rows":
        t["magnitude"] = w2d.norm(dim=1) * (1 + 0.2 * torch.randn(fan_out, generator=gen))
    elif norm == "cols":
        t["magnitude"] = w2d.norm(dim=0) * (1 + 0.2 * torch.randn(fan_in, generator=gen))
    elif norm == "both":
        t["magnitude_r"] = w2d.norm(dim=1) * (1 + 0.2 * torch.randn(fan_out, generator=gen))
        t["magnitude_c"] = w2d.norm(dim=0) * (1 + 0.2 * torch.randn(fan_in, generator=gen))
    return t


def write_lora(path: Path, adapter_type: str, modules: dict[str, dict], rank: int, alpha: float, **config) -> Path:
    tensors = {
        f"{name}.parametrizations.weight.0.{param}": t.half()
        for name, params in modules.items()
        for param, t in params.items()
    }
    cfg = {"rank": rank, "alpha": alpha, "adapter_type": adapter_type, "dropout": 0.0, "include": None, "exclude": None}
    cfg.update(config)
    save_file(tensors, str(path), metadata={"lora_config": json.dumps(cfg)})
    return path


def make_lora(tmp_path, dit, conditioner, adapter_type, names, rank=3, alpha=5.0, seed=0, file="l.safetensors", **cfg):
    gen = torch.Generator().manual_seed(seed)
    modules = {n: lora_tensors(adapter_type, module_at(dit, conditioner, n).weight, rank, gen) for n in names}
    path = write_lora(tmp_path / file, adapter_type, modules, rank, alpha, **cfg)
    return path, {n: {k: v.half().double() for k, v in p.items()} for n, p in modules.items()}


def svd_bases(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Spec §6: SVD of W0 (2-D); each U column's largest-|.| entry positive; U[:, :r], V = Vh^T[:, :r]."""
    u, _, vh = torch.linalg.svd(weight.detach().reshape(weight.shape[0], -1).double(), full_matrices=False)
    signs = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True)))[0]
    return (u * signs)[:, :rank], (vh.T * signs)[:, :rank]


def spec_formula(adapter_type, w, t, rank, alpha, strength, bases=None) -> torch.Tensor:
    """The spec §6 table, in float64."""
    core, norm = ADAPTER_TYPES[adapter_type]
    w2 = w.detach().double().reshape(w.shape[0], -1)
    if core == "AB":
        delta = t["lora_B"] @ t["lora_A"]
    else:
        u, v = bases
        delta = u.double() @ t["M_xs"] @ v.double().T
    v_ = w2 + alpha / rank * strength * delta
    if norm == "rows":
        v_ = v_ / (v_.norm(dim=1, keepdim=True) + 1e-12) * t["magnitude"][:, None]
    elif norm == "cols":
        v_ = v_ / (v_.norm(dim=0, keepdim=True) + 1e-12) * t["magnitude"][None, :]
    elif norm == "both":
        h = t["magnitude_r"][:, None] * v_ / (v_.norm(dim=1, keepdim=True) + 1e-12)
        v_ = h / (h.norm(dim=0, keepdim=True) + 1e-12) * t["magnitude_c"][None, :]
    return v_.reshape(w.shape)


def module_output(m: nn.Module, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(module's own output, output computed with `weight`) on one fixed input."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        if isinstance(m, nn.Conv1d):
            x = torch.randn(2, m.in_channels, 9, generator=gen)
            return m(x), F.conv1d(x, weight.float(), m.bias, padding=m.padding)
        x = torch.randn(4, m.in_features, generator=gen)
        return m(x), F.linear(x, weight.float(), m.bias)


# ----------------------------------------------------------------------------------------------
# Adapter math


@pytest.mark.parametrize("adapter_type", list(ADAPTER_TYPES))
def test_every_adapter_type_matches_the_spec_formula(tmp_path, adapter_type):
    dit, cond = tiny_model()
    names = [QKV0, CONV, SECONDS]
    path, tensors = make_lora(tmp_path, dit, cond, adapter_type, names)
    base = {n: module_at(dit, cond, n).weight.detach().clone() for n in names}
    loras = apply_loras({"model.": dit, "": cond}, [path], skip_prefixes=(T5_PREFIX,))
    loras.set_lora_strength(0.6)
    for name in names:
        bases = svd_bases(base[name], 3) if adapter_type.endswith("xs") else None
        expected = spec_formula(adapter_type, base[name], tensors[name], 3, 5.0, 0.6, bases)
        module = module_at(dit, cond, name)
        torch.testing.assert_close(module.weight.double(), expected, rtol=1e-5, atol=1e-5)
        ours, direct = module_output(module, expected)
        torch.testing.assert_close(ours, direct, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(module.weight, base[name], atol=1e-3)  # the LoRA really does something


@pytest.mark.parametrize("adapter_type", list(ADAPTER_TYPES))
def test_strength_zero_is_exactly_the_base(tmp_path, adapter_type):
    dit, cond = tiny_model()
    reference = forward_all(dit, cond)
    path, _ = make_lora(tmp_path, dit, cond, adapter_type, [QKV0, QKV1, CONV, SECONDS])
    loras = apply_loras({"model.": dit, "": cond}, [path], skip_prefixes=(T5_PREFIX,))
    loras.set_lora_strength(0.0)
    assert_outputs_equal(forward_all(dit, cond), reference)
    assert module_at(dit, cond, QKV0).weight is module_at(dit, cond, QKV0)._parameters["weight"]


def test_unload_restores_the_base_exactly(tmp_path):
    dit, cond = tiny_model()
    before, reference = snapshot(dit, cond), forward_all(dit, cond)
    paths = [
        make_lora(tmp_path, dit, cond, t, [QKV0, CONV, SECONDS], seed=i, file=f"{t}.safetensors")[0]
        for i, t in enumerate(["lora", "dora-rows", "bora-xs"])
    ]
    loras = apply_loras({"model.": dit, "": cond}, paths, skip_prefixes=(T5_PREFIX,))
    loras.set_lora_strength(0.8, lora_index=1)
    assert type(module_at(dit, cond, QKV0)) is not nn.Linear
    assert_state_equal(before, snapshot(dit, cond))  # keys and values unchanged while loaded
    assert not all(torch.equal(x, y) for x, y in zip(forward_all(dit, cond), reference, strict=True))

    loras.unload_loras()
    assert len(loras) == 0
    for name in [QKV0, CONV, SECONDS]:
        module = module_at(dit, cond, name)
        assert type(module) in (nn.Linear, nn.Conv1d) and "_lora_adapters" not in module.__dict__
    assert_state_equal(before, snapshot(dit, cond))
    assert_outputs_equal(forward_all(dit, cond), reference)


def test_strict_state_dict_loading_works_while_loaded_and_cached_norms_follow(tmp_path):
    dit, cond = tiny_model()
    path, tensors = make_lora(tmp_path, dit, cond, "dora-rows", [QKV0])
    loras = apply_loras({"model.": dit, "": cond}, [path])
    assert loras.names == ["l"]
    with torch.inference_mode():
        _ = module_at(dit, cond, QKV0).weight  # fills the norm cache
    new_dit, _ = tiny_model(seed=7)
    dit.load_state_dict(new_dit.state_dict(), strict=True)  # in-place copy into the base weights
    new_w0 = new_dit.get_submodule("transformer.layers.0.self_attn.to_qkv").weight
    with torch.inference_mode():
        got = module_at(dit, cond, QKV0).weight
    torch.testing.assert_close(got.double(), spec_formula("dora-rows", new_w0, tensors[QKV0], 3, 5.0, 1.0))


def test_strength_change_takes_effect_on_the_next_forward(tmp_path):
    dit, cond = tiny_model()
    w0 = module_at(dit, cond, QKV0).weight.detach().clone()
    path, tensors = make_lora(tmp_path, dit, cond, "dora-rows", [QKV0])
    loras = apply_loras({"model.": dit, "": cond}, [path])
    module = module_at(dit, cond, QKV0)
    for strength in (1.0, 0.3, 0.0, 2.0):
        loras.set_lora_strength(strength)
        # At strength 0 DoRA short-circuits to W0 (spec §6), it does not renormalise W0.
        expected = w0 if strength == 0 else spec_formula("dora-rows", w0, tensors[QKV0], 3, 5.0, strength)
        for _ in range(2):  # the second pass uses cached norms
            ours, direct = module_output(module, expected)
            torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-5)
    assert loras.strengths == [2.0]


def test_stacking_order_and_per_index_strengths(tmp_path):
    dit, cond = tiny_model()
    w0 = module_at(dit, cond, QKV0).weight.detach().clone()
    path_a, ta = make_lora(tmp_path, dit, cond, "lora", [QKV0, CONV], rank=4, alpha=8.0, seed=1, file="a.safetensors")
    path_b, tb = make_lora(tmp_path, dit, cond, "dora-rows", [QKV0], rank=2, alpha=2.0, seed=2, file="b.safetensors")
    loras = apply_loras({"model.": dit, "": cond}, [path_a, path_b])
    loras.set_lora_strength(1.0, lora_index=0)
    loras.set_lora_strength(0.7, lora_index=1)
    after_a = spec_formula("lora", w0, ta[QKV0], 4, 8.0, 1.0)
    expected = spec_formula("dora-rows", after_a, tb[QKV0], 2, 2.0, 0.7)  # p_1(p_0(W0))
    torch.testing.assert_close(module_at(dit, cond, QKV0).weight.double(), expected, rtol=1e-5, atol=1e-5)

    other_order = spec_formula("lora", spec_formula("dora-rows", w0, tb[QKV0], 2, 2.0, 0.7), ta[QKV0], 4, 8.0, 1.0)
    assert not torch.allclose(expected, other_order, atol=1e-3)  # the order matters and is kept

    loras.set_lora_strength(0.0, lora_index=1)
    torch.testing.assert_close(module_at(dit, cond, QKV0).weight.double(), after_a, rtol=1e-5, atol=1e-5)
    with pytest.raises(IndexError, match="lora_index 2 out of range: 2 LoRA"):
        loras.set_lora_strength(1.0, lora_index=2)

    # A later load() stacks after the loaded ones.
    path_c, _ = make_lora(tmp_path, dit, cond, "lora", [QKV0], seed=3, file="c.safetensors")
    assert loras.load([path_c]) == [2]
    assert loras.names == ["a", "b", "c"]


# ----------------------------------------------------------------------------------------------
# Include / exclude, and where the reference silently drops tensors


def test_range_expansion_and_matching():
    assert expand_ranges("layers[0-2]") == ["layers0", "layers1", "layers2"]
    assert expand_ranges("l[2-0].x[1-2]") == ["l2.x1", "l2.x2", "l1.x1", "l1.x2", "l0.x1", "l0.x2"]
    assert expand_ranges("to_cond_embed") == ["to_cond_embed"]
    # The literal concatenation: "layers[0-1]" never matches the dotted "layers.0".
    assert not matches_any("model.transformer.layers.1.self_attn.to_qkv", ["layers[0-1]"])
    assert matches_any("model.transformer.layers.1.self_attn.to_qkv", ["layers.[0-1]."])
    assert not matches_any("model.transformer.layers.1.self_attn.to_qkv", [])

    file = LoraFile(Path("x"), {"include": ["layers.[0-1]."], "exclude": ["to_out"]}, "lora", 1, 1.0, {})
    assert file.selects("model.transformer.layers.0.self_attn.to_qkv")
    assert not file.selects("model.transformer.layers.0.self_attn.to_out")  # exclude wins
    assert not file.selects("model.transformer.project_in")


def test_tensors_outside_the_own_filter_are_applied_with_a_warning(tmp_path, caplog):
    dit, cond = tiny_model()
    base = module_at(dit, cond, QKV1).weight.detach().clone()
    path, _ = make_lora(tmp_path, dit, cond, "lora", [QKV0, QKV1], include=["layers.[0-0]."])
    with caplog.at_level(logging.WARNING):
        apply_loras({"model.": dit, "": cond}, [path])
    assert "1 modules outside its own include/exclude filter" in caplog.text
    assert not torch.equal(module_at(dit, cond, QKV1).weight, base)


def test_stacking_quirk_is_applied_correctly_and_warned_once(tmp_path, caplog):
    dit, cond = tiny_model()
    w0 = module_at(dit, cond, QKV1).weight.detach().clone()
    path_a, _ = make_lora(tmp_path, dit, cond, "lora", [QKV0], seed=1, file="a.safetensors", include=["layers.0."])
    path_b, tb = make_lora(tmp_path, dit, cond, "lora", [QKV0, QKV1], seed=2, file="b.safetensors")
    with caplog.at_level(logging.WARNING):
        apply_loras({"model.": dit, "": cond}, [path_a, path_b])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 modules that an earlier LoRA's include filter skips" in warnings[0].getMessage()
    expected = spec_formula("lora", w0, tb[QKV1], 3, 5.0, 1.0)
    torch.testing.assert_close(module_at(dit, cond, QKV1).weight.double(), expected, rtol=1e-5, atol=1e-5)


def test_golden_like_stacking_does_not_warn(tmp_path, caplog):
    dit, cond = tiny_model()
    path_a, _ = make_lora(tmp_path, dit, cond, "lora", [QKV0, QKV1, CONV], file="a.safetensors")
    path_b, _ = make_lora(tmp_path, dit, cond, "dora-rows", [QKV0, QKV1], file="b.safetensors", include=["layers"])
    with caplog.at_level(logging.WARNING):
        apply_loras({"model.": dit, "": cond}, [path_a, path_b])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_update_for_sigma_gates_dit_loras_only(tmp_path):
    dit, cond = tiny_model()
    reference = {n: module_at(dit, cond, n).weight.detach().clone() for n in (QKV0, QKV1, SECONDS)}
    path_a, _ = make_lora(tmp_path, dit, cond, "lora", [QKV0, QKV1, SECONDS], seed=1, file="a.safetensors")
    path_b, _ = make_lora(tmp_path, dit, cond, "dora-rows", [QKV0, QKV1], seed=2, file="b.safetensors")
    loras = apply_loras({"model.": dit, "": cond}, [path_a, path_b])
    loaded = {n: module_at(dit, cond, n).weight.detach().clone() for n in reference}

    configs = [{"lora_index": 0, "interval": (0.0, 0.5)}, {"lora_index": 1, "interval": (0.0, 1.0)}]
    loras.update_for_sigma(0.8, configs)  # LoRA 0 is off on the DiT, LoRA 1 stays
    assert torch.equal(module_at(dit, cond, SECONDS).weight, loaded[SECONDS])  # conditioner untouched
    loras.set_lora_strength(0.0, lora_index=1)
    assert torch.equal(module_at(dit, cond, QKV0).weight, reference[QKV0])

    loras.set_lora_strength(1.0)
    loras.update_for_sigma(0.3, [{"lora_index": 0}, {"lora_index": 1, "layer_filter": "Layers.1"}])
    loras.set_lora_strength(0.0, lora_index=0)
    assert torch.equal(module_at(dit, cond, QKV1).weight, reference[QKV1])  # LoRA 1 filtered out there
    assert not torch.equal(module_at(dit, cond, QKV0).weight, reference[QKV0])

    loras.set_lora_strength(1.0)
    loras.update_for_sigma(0.5)  # legacy path: everything on
    assert all(torch.equal(module_at(dit, cond, n).weight, loaded[n]) for n in reference)


# ----------------------------------------------------------------------------------------------
# Reading files


def test_legacy_dora_variant_detection(tmp_path):
    dit, cond = tiny_model()
    w0 = module_at(dit, cond, QKV0).weight.detach().clone()
    gen = torch.Generator().manual_seed(0)
    cols = lora_tensors("dora-cols", w0, 3, gen)
    rows = lora_tensors("dora-rows", w0, 3, gen)

    legacy_cols = {QKV0: {**cols, "magnitude": cols["magnitude"][None, :]}}
    file = read_lora_file(write_lora(tmp_path / "c.safetensors", "dora", legacy_cols, 3, 5.0))
    assert file.adapter_type == "dora-cols" and file.modules[QKV0]["magnitude"].shape == (16,)
    apply_loras({"model.": dit, "": cond}, [file])
    expected = spec_formula("dora-cols", w0, {k: v.half().double() for k, v in cols.items()}, 3, 5.0, 1.0)
    torch.testing.assert_close(module_at(dit, cond, QKV0).weight.double(), expected, rtol=1e-5, atol=1e-5)

    legacy_rows = {QKV0: {**rows, "magnitude": rows["magnitude"][:, None]}}
    assert (
        read_lora_file(write_lora(tmp_path / "r.safetensors", "dora", legacy_rows, 3, 5.0)).adapter_type == "dora-rows"
    )
    assert (
        read_lora_file(write_lora(tmp_path / "d.safetensors", "dora", {QKV0: rows}, 3, 5.0)).adapter_type == "dora-rows"
    )


def test_fp16_tensors_are_upcast_and_rank_alpha_inferred(tmp_path):
    dit, cond = tiny_model()
    gen = torch.Generator().manual_seed(0)
    t = lora_tensors("lora", module_at(dit, cond, QKV0).weight, 3, gen)
    path = tmp_path / "x.safetensors"
    tensors = {f"{QKV0}.parametrizations.weight.0.{k}": v.half() for k, v in t.items()}
    save_file(tensors, str(path), metadata={"lora_config": json.dumps({"adapter_type": "lora"})})
    file = read_lora_file(path)
    assert file.rank == 3 and file.alpha == 3.0 and file.scaling == 1.0 and file.num_tensors == 2
    for k, v in t.items():
        assert file.modules[QKV0][k].dtype == torch.float32
        assert torch.equal(file.modules[QKV0][k], v.half().float())


def test_ckpt_needs_weights_only(tmp_path):
    dit, cond = tiny_model()
    st_path, _ = make_lora(tmp_path, dit, cond, "dora-rows", [QKV0, SECONDS])
    st = read_lora_file(st_path)
    state = {f"{n}.parametrizations.weight.0.{p}": t.half() for n, ps in st.modules.items() for p, t in ps.items()}
    torch.save({"state_dict": state, "lora_config": st.config}, tmp_path / "ok.ckpt")
    ckpt = read_lora_file(tmp_path / "ok.ckpt")
    assert ckpt.adapter_type == "dora-rows" and ckpt.rank == 3 and ckpt.num_tensors == st.num_tensors
    assert all(torch.equal(ckpt.modules[n][p], st.modules[n][p]) for n in st.modules for p in st.modules[n])

    torch.save({"state_dict": state, "lora_config": st.config, "extra": Path("needs-code")}, tmp_path / "code.ckpt")
    with pytest.raises(LoraError, match=r"refusing to load .*code\.ckpt: it needs pickled code"):
        read_lora_file(tmp_path / "code.ckpt")


def _truncated(tmp_path: Path, good: Path) -> Path:
    data = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) - 40])
    return tmp_path / "truncated.safetensors"


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated", r"truncated\.safetensors is not a readable safetensors file"),
        ("random", r"random\.safetensors is not a readable safetensors file"),
        ("random_ckpt", r"random\.ckpt is not a readable torch checkpoint"),
        ("no_metadata", r"no_metadata\.safetensors has no 'lora_config' metadata"),
        ("foreign", r"foreign\.safetensors holds tensors that are not LoRA parameters .*\n  model\.weight"),
        ("empty", r"empty\.safetensors contains no LoRA tensors"),
        ("missing", r"missing\.safetensors does not exist"),
        ("incomplete", r"incomplete\.safetensors: tensors do not match adapter_type 'dora-rows'"),
        ("bad_type", r"bad_type\.safetensors: unknown adapter_type 'lokr'"),
    ],
)
def test_corrupt_or_foreign_files_fail_clearly(tmp_path, kind, message):
    dit, cond = tiny_model()
    good, _ = make_lora(tmp_path, dit, cond, "dora-rows", [QKV0, QKV1])
    path = tmp_path / f"{kind}.safetensors"
    gen = torch.Generator().manual_seed(0)
    if kind == "truncated":
        path = _truncated(tmp_path, good)
    elif kind == "random":
        path.write_bytes(torch.randint(0, 256, (2000,), generator=gen, dtype=torch.uint8).numpy().tobytes())
    elif kind == "random_ckpt":
        path = tmp_path / "random.ckpt"
        path.write_bytes(torch.randint(0, 256, (2000,), generator=gen, dtype=torch.uint8).numpy().tobytes())
    elif kind == "no_metadata":
        save_file({f"{QKV0}.parametrizations.weight.0.lora_A": torch.zeros(3, 16)}, str(path))
    elif kind == "foreign":
        save_file({"model.weight": torch.zeros(3)}, str(path), metadata={"lora_config": "{}"})
    elif kind == "empty":
        save_file({}, str(path), metadata={"lora_config": json.dumps({"rank": 2})})
    elif kind == "incomplete":
        t = lora_tensors("lora", module_at(dit, cond, QKV0).weight, 3, gen)
        write_lora(path, "dora-rows", {QKV0: t}, 3, 5.0)
    elif kind == "bad_type":
        write_lora(path, "lokr", {QKV0: lora_tensors("lora", module_at(dit, cond, QKV0).weight, 3, gen)}, 3, 5.0)
    before, reference = snapshot(dit, cond), forward_all(dit, cond)
    loras = new_set(dit, cond)
    with pytest.raises(LoraError, match=message):
        loras.load([good, path])
    assert len(loras) == 0
    assert_state_equal(before, snapshot(dit, cond))
    assert_outputs_equal(forward_all(dit, cond), reference)


# ----------------------------------------------------------------------------------------------
# A LoRA made for another model


def _assert_untouched(dit, cond, before, reference, loras):
    assert len(loras) == 0
    assert type(module_at(dit, cond, QKV0)) is nn.Linear
    assert_state_equal(before, snapshot(dit, cond))
    assert_outputs_equal(forward_all(dit, cond), reference)


@pytest.mark.parametrize(
    "bad_name, why",
    [
        ("model.transformer.layers.5.self_attn.to_qkv", "names no module of this model"),
        ("model.transformer.layers.0.pre_norm", "is a LayerNorm, not a Linear or Conv1d"),
        ("conditioners.prompt.t5.proj", "is inside a module that is never a LoRA target"),
        ("seconds_total.embedder.embedding.1", "names no module of this model"),
    ],
)
def test_unknown_keys_are_rejected_and_nothing_changes(tmp_path, bad_name, why):
    dit, cond = tiny_model()
    before, reference = snapshot(dit, cond), forward_all(dit, cond)
    good, _ = make_lora(tmp_path, dit, cond, "lora", [QKV0, CONV], file="good.safetensors")
    gen = torch.Generator().manual_seed(0)
    modules = {QKV0: lora_tensors("lora", module_at(dit, cond, QKV0).weight, 3, gen)}
    modules[bad_name] = {"lora_A": torch.randn(3, 16, generator=gen), "lora_B": torch.randn(16, 3, generator=gen)}
    bad = write_lora(tmp_path / "other_model.safetensors", "lora", modules, 3, 5.0)
    loras = new_set(dit, cond)
    with pytest.raises(LoraError) as err:
        loras.load([good, bad])
    text = str(err.value)
    assert f"LoRA file {bad} does not fit this model" in text
    assert f"{bad_name}.parametrizations.weight.0.lora_A" in text and why in text
    assert "Nothing was loaded; the model is unchanged." in text and "good.safetensors" not in text
    _assert_untouched(dit, cond, before, reference, loras)


def test_mis_shaped_tensors_are_rejected_and_nothing_changes(tmp_path):
    dit, cond = tiny_model()
    before, reference = snapshot(dit, cond), forward_all(dit, cond)
    gen = torch.Generator().manual_seed(0)
    modules = {
        QKV0: {"lora_A": torch.randn(3, 16, generator=gen), "lora_B": torch.randn(40, 3, generator=gen)},
        CONV: {"lora_A": torch.randn(3, 8, generator=gen), "lora_B": torch.randn(6, 3, generator=gen)},  # needs 8*3
    }
    bad = write_lora(tmp_path / "medium.safetensors", "lora", modules, 3, 5.0)
    loras = new_set(dit, cond)
    with pytest.raises(LoraError) as err:
        loras.load([bad])
    text = str(err.value)
    assert f"{QKV0}.parametrizations.weight.0.lora_B: shape (40, 3), but the weight (48, 16) needs (48, 3)" in text
    assert f"{CONV}.parametrizations.weight.0.lora_A: shape (3, 8), but the weight (6, 8, 3) needs (3, 24)" in text
    _assert_untouched(dit, cond, before, reference, loras)


# ----------------------------------------------------------------------------------------------
# -XS bases from a svd_bases_path file


def test_xs_bases_from_svd_bases_file(tmp_path):
    dit, cond = tiny_model()
    names = [QKV0, SECONDS]
    w0 = {n: module_at(dit, cond, n).weight.detach().clone() for n in names}
    gen = torch.Generator().manual_seed(3)
    given = {}
    for n in names:  # random orthonormal bases with more columns than the rank: the file's first r are used
        fan_out, fan_in = w0[n].shape
        u = torch.linalg.qr(torch.randn(fan_out, 5, generator=gen)).Q
        v = torch.linalg.qr(torch.randn(fan_in, 5, generator=gen)).Q
        official = f"model.{n}.weight" if n.startswith("model.") else f"conditioner.{n}.weight"
        given[official] = {"U": u, "V": v, "S": torch.ones(5)}
    torch.save({**given, "pretransform.model.x.weight": {"U": torch.zeros(1)}}, tmp_path / "bases.pt")
    assert sorted(read_svd_bases(tmp_path / "bases.pt")) == sorted(names)

    path, tensors = make_lora(tmp_path, dit, cond, "dora-rows-xs", names)
    apply_loras({"model.": dit, "": cond}, [path], svd_bases_path=tmp_path / "bases.pt")
    for n in names:
        entry = given[f"model.{n}.weight" if n.startswith("model.") else f"conditioner.{n}.weight"]
        bases = (entry["U"][:, :3], entry["V"][:, :3])
        expected = spec_formula("dora-rows-xs", w0[n], tensors[n], 3, 5.0, 1.0, bases)
        torch.testing.assert_close(module_at(dit, cond, n).weight.double(), expected, rtol=1e-5, atol=1e-5)


def test_half_precision_base_weights(tmp_path):
    dit, cond = tiny_model()
    path, tensors = make_lora(tmp_path, dit, cond, "bora", [QKV0])
    dit.half()
    w0 = module_at(dit, cond, QKV0).weight.detach().clone()
    apply_loras({"model.": dit, "": cond}, [path])
    got = module_at(dit, cond, QKV0).weight
    assert got.dtype == torch.float16  # computed in fp32, cast back to the weight's dtype
    torch.testing.assert_close(got.double(), spec_formula("bora", w0, tensors[QKV0], 3, 5.0, 1.0), rtol=2e-3, atol=2e-3)


# ----------------------------------------------------------------------------------------------
# The golden LoRA files against the official key layout

MANIFESTS = {"tiny-small": "small-music.json", "tiny-medium": "medium.json"}


def _official_weight_key(module_name: str) -> str:
    return f"model.{module_name}.weight" if module_name.startswith("model.") else f"conditioner.{module_name}.weight"


def _skeleton(weights: dict[str, torch.Tensor]) -> nn.Module:
    """Linear/Conv1d modules at the checkpoint's names, holding the checkpoint's weights."""
    root = nn.Module()
    for key, weight in weights.items():
        *path, leaf = key[: -len(".weight")].split(".")
        parent = root
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        out_dim, in_dim, *kernel = weight.shape
        module = nn.Conv1d(in_dim, out_dim, kernel[0], bias=False) if kernel else nn.Linear(in_dim, out_dim, bias=False)
        module.weight.data.copy_(weight)
        parent.add_module(leaf, module)
    return root


@pytest.mark.parametrize("fixture", FIXTURES)
def test_golden_lora_files_fit_the_official_layout(fixture, caplog):
    folder = fixture_dir(fixture)
    manifest = json.loads((folder.parent / "manifests" / MANIFESTS[fixture]).read_text())
    official = {t["key"] for t in manifest["tensors"]}
    weights = load_file(str(folder / "model.safetensors"))

    files = []
    for rel, expected in index(fixture)["lora_files"].items():
        file = read_lora_file(folder / rel)
        files.append(file)
        assert file.config == expected["lora_config"]
        assert file.num_tensors == expected["num_tensors"]
        assert file.adapter_type == expected["lora_config"]["adapter_type"]
        assert (file.rank, file.alpha) == (expected["lora_config"]["rank"], expected["lora_config"]["alpha"])
        for name, params in file.modules.items():
            key = _official_weight_key(name)
            assert key in official, f"{rel}: {name} has no {key} in {MANIFESTS[fixture]}"
            shape = weights[key].shape
            fan_out, fan_in = shape[0], math.prod(shape[1:])
            assert params["lora_A"].shape == (file.rank, fan_in) and params["lora_B"].shape == (fan_out, file.rank)
            if "magnitude" in params:
                assert params["magnitude"].shape == (fan_out,)
            assert all(p.dtype == torch.float32 for p in params.values())
            assert file.selects(name)

    # Both files stack onto the fixture's own Linear/Conv1d weights, as in the lora_stacked golden case.
    targets = {k: w for k, w in weights.items() if k.endswith(".weight") and w.dim() in (2, 3)}
    dit = _skeleton({k[len("model.model.") :]: w for k, w in targets.items() if k.startswith("model.model.")})
    cond = _skeleton({k[len("conditioner.") :]: w for k, w in targets.items() if k.startswith("conditioner.")})
    with caplog.at_level(logging.WARNING):
        loras = apply_loras({"model.": dit, "": cond}, files)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    loras.set_lora_strength(0.7, lora_index=1)
    a, b = ({k: v.double() for k, v in f.modules[QKV0].items()} for f in files)
    w0 = weights[_official_weight_key(QKV0)]
    expected = spec_formula("dora-rows", spec_formula("lora", w0, a, 4, 8.0, 1.0), b, 2, 2.0, 0.7)
    torch.testing.assert_close(module_at(dit, cond, QKV0).weight.double(), expected, rtol=1e-5, atol=1e-5)
    seconds = module_at(dit, cond, SECONDS).weight.double()  # only LoRA 0 reaches the conditioner
    expected = spec_formula("lora", weights[_official_weight_key(SECONDS)], files[0].modules[SECONDS], 4, 8.0, 1.0)
    torch.testing.assert_close(seconds, expected, rtol=1e-5, atol=1e-5)
