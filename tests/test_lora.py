"""LoRA at inference (spec §6, §3.8): every adapter type against the spec's formulas, strengths,
stacking, filters, exact unload, file safety, and the golden LoRA files against the real key layout."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from lora_helpers import (
    CONV,
    QKV0,
    QKV1,
    SECONDS,
    T5_PREFIX,
    assert_outputs_equal,
    assert_state_equal,
    forward_all,
    load_loras,
    make_lora,
    module_at,
    module_output,
    snapshot,
    spec_formula,
    svd_bases,
    tiny_model,
)
from torch import nn

from stable_audio_3.models.lora import (
    ADAPTER_TYPES,
    LoraFile,
    expand_ranges,
    matches_any,
)

# ----------------------------------------------------------------------------------------------
# Adapter math


@pytest.mark.parametrize("adapter_type", list(ADAPTER_TYPES))
def test_every_adapter_type_matches_the_spec_formula(tmp_path, adapter_type):
    dit, cond = tiny_model()
    names = [QKV0, CONV, SECONDS]
    path, tensors = make_lora(tmp_path, dit, cond, adapter_type, names)
    base = {n: module_at(dit, cond, n).weight.detach().clone() for n in names}
    loras = load_loras(dit, cond, [path], skip_prefixes=(T5_PREFIX,))
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
    loras = load_loras(dit, cond, [path], skip_prefixes=(T5_PREFIX,))
    loras.set_lora_strength(0.0)
    assert_outputs_equal(forward_all(dit, cond), reference)
    module = module_at(dit, cond, QKV0)
    with torch.no_grad():  # the materialized copy of W0, not W0 itself: its identity must not change
        assert module.weight is module.__dict__["_lora_weight"]
        assert torch.equal(module.weight, module._parameters["weight"])


def test_unload_restores_the_base_exactly(tmp_path):
    dit, cond = tiny_model()
    before, reference = snapshot(dit, cond), forward_all(dit, cond)
    paths = [
        make_lora(tmp_path, dit, cond, t, [QKV0, CONV, SECONDS], seed=i, file=f"{t}.safetensors")[0]
        for i, t in enumerate(["lora", "dora-rows", "bora-xs"])
    ]
    loras = load_loras(dit, cond, paths, skip_prefixes=(T5_PREFIX,))
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


def test_strict_state_dict_loading_works_while_loaded_and_materialized_weights_follow(tmp_path):
    dit, cond = tiny_model()
    path, tensors = make_lora(tmp_path, dit, cond, "dora-rows", [QKV0])
    loras = load_loras(dit, cond, [path])
    assert loras.names == ["l"]
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
    loras = load_loras(dit, cond, [path])
    module = module_at(dit, cond, QKV0)
    for strength in (1.0, 0.3, 0.0, 2.0):
        loras.set_lora_strength(strength)
        # At strength 0 DoRA short-circuits to W0 (spec §6), it does not renormalise W0.
        expected = w0 if strength == 0 else spec_formula("dora-rows", w0, tensors[QKV0], 3, 5.0, strength)
        for _ in range(2):  # the second pass reads the same materialized weight
            ours, direct = module_output(module, expected)
            torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-5)
    assert loras.strengths == [2.0]


def test_stacking_order_and_per_index_strengths(tmp_path):
    dit, cond = tiny_model()
    w0 = module_at(dit, cond, QKV0).weight.detach().clone()
    path_a, ta = make_lora(tmp_path, dit, cond, "lora", [QKV0, CONV], rank=4, alpha=8.0, seed=1, file="a.safetensors")
    path_b, tb = make_lora(tmp_path, dit, cond, "dora-rows", [QKV0], rank=2, alpha=2.0, seed=2, file="b.safetensors")
    loras = load_loras(dit, cond, [path_a, path_b])
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
        load_loras(dit, cond, [path])
    assert "1 modules outside its own include/exclude filter" in caplog.text
    assert not torch.equal(module_at(dit, cond, QKV1).weight, base)


def test_stacking_quirk_is_applied_correctly_and_warned_once(tmp_path, caplog):
    dit, cond = tiny_model()
    w0 = module_at(dit, cond, QKV1).weight.detach().clone()
    path_a, _ = make_lora(tmp_path, dit, cond, "lora", [QKV0], seed=1, file="a.safetensors", include=["layers.0."])
    path_b, tb = make_lora(tmp_path, dit, cond, "lora", [QKV0, QKV1], seed=2, file="b.safetensors")
    with caplog.at_level(logging.WARNING):
        load_loras(dit, cond, [path_a, path_b])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 modules that an earlier LoRA's include filter skips" in warnings[0].getMessage()
    expected = spec_formula("lora", w0, tb[QKV1], 3, 5.0, 1.0)
    torch.testing.assert_close(module_at(dit, cond, QKV1).weight.double(), expected, rtol=1e-5, atol=1e-5)


def test_golden_like_stacking_does_not_warn(tmp_path, caplog):
    dit, cond = tiny_model()
    path_a, _ = make_lora(tmp_path, dit, cond, "lora", [QKV0, QKV1, CONV], file="a.safetensors")
    path_b, _ = make_lora(tmp_path, dit, cond, "dora-rows", [QKV0, QKV1], file="b.safetensors", include=["layers"])
    with caplog.at_level(logging.WARNING):
        load_loras(dit, cond, [path_a, path_b])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_step_states_gate_dit_loras_only(tmp_path):
    dit, cond = tiny_model()
    reference = {n: module_at(dit, cond, n).weight.detach().clone() for n in (QKV0, QKV1, SECONDS)}
    path_a, _ = make_lora(tmp_path, dit, cond, "lora", [QKV0, QKV1, SECONDS], seed=1, file="a.safetensors")
    path_b, _ = make_lora(tmp_path, dit, cond, "dora-rows", [QKV0, QKV1], seed=2, file="b.safetensors")
    loras = load_loras(dit, cond, [path_a, path_b])
    loaded = {n: module_at(dit, cond, n).weight.detach().clone() for n in reference}

    configs = [{"lora_index": 0, "interval": (0.0, 0.5)}, {"lora_index": 1, "interval": (0.0, 1.0)}]
    steps, states = loras.step_states(configs, [0.8])
    loras.apply_state(states[steps[0]])  # LoRA 0 is off on the DiT, LoRA 1 stays
    assert torch.equal(module_at(dit, cond, SECONDS).weight, loaded[SECONDS])  # conditioner untouched
    loras.set_lora_strength(0.0, lora_index=1)
    assert torch.equal(module_at(dit, cond, QKV0).weight, reference[QKV0])

    loras.set_lora_strength(1.0)
    steps, states = loras.step_states([{"lora_index": 0}, {"lora_index": 1, "layer_filter": "Layers.1"}], [0.3])
    loras.apply_state(states[steps[0]])
    loras.set_lora_strength(0.0, lora_index=0)
    assert torch.equal(module_at(dit, cond, QKV1).weight, reference[QKV1])  # LoRA 1 filtered out there
    assert not torch.equal(module_at(dit, cond, QKV0).weight, reference[QKV0])

    loras.set_lora_strength(1.0)
    assert loras.step_states(None, [0.5, 0.9]) == ([0, 0], [loras.all_enabled_state])  # no configs: all on
    loras.apply_state(loras.all_enabled_state)
    assert all(torch.equal(module_at(dit, cond, n).weight, loaded[n]) for n in reference)
    with pytest.raises(ValueError, match=r"^lora_configs\[1\]\.lora_index=5 is out of range: 2 LoRA\(s\) loaded$"):
        loras.step_states([{"lora_index": 0}, {"lora_index": 5}], [0.5])


# ----------------------------------------------------------------------------------------------
# Materialized weights and per-step states


def per_forward_weight(w0: torch.Tensor, files: list[LoraFile], strengths: list[float], name: str) -> torch.Tensor:
    """The former per-forward computation, op for op: each LoRA's p(W) in stacking order, fp32 adapter math."""
    weight = w0
    for file, strength in zip(files, strengths, strict=True):
        if name not in file.modules or strength == 0.0:
            continue
        t, (_, norm) = file.modules[name], ADAPTER_TYPES[file.adapter_type]
        delta = t["lora_B"] @ t["lora_A"]
        coef = file.scaling * torch.tensor(strength, dtype=torch.float32)
        if norm is None:
            weight = weight + (coef * delta.view(weight.shape)).to(weight.dtype)
            continue
        v = weight.reshape(weight.shape[0], -1).to(delta.dtype) + coef * delta
        if norm == "rows":
            v = v / (v.norm(dim=1, keepdim=True) + 1e-12) * t["magnitude"].unsqueeze(1)
        else:
            v = t["magnitude_r"].unsqueeze(1) * (v / (v.norm(dim=1, keepdim=True) + 1e-12))
            v = v / (v.norm(dim=0, keepdim=True) + 1e-12) * t["magnitude_c"].unsqueeze(0)
        weight = v.view(weight.shape).to(weight.dtype)
    return weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("adapter_type", ["lora", "dora-rows", "bora"])
def test_materialized_weight_is_the_per_forward_formula_bit_exactly(tmp_path, adapter_type, dtype):
    dit, cond = tiny_model()
    dit.to(dtype).requires_grad_(False)
    cond.requires_grad_(False)
    names = [QKV0, CONV, SECONDS]
    path_a, _ = make_lora(tmp_path, dit, cond, "lora", [QKV0, CONV], seed=1, file="a.safetensors")
    path_b, _ = make_lora(tmp_path, dit, cond, adapter_type, names, seed=2, file="b.safetensors")
    base = {n: module_at(dit, cond, n).weight.clone() for n in names}
    loras = load_loras(dit, cond, [path_a, path_b])
    for strengths in ([1.0, 1.0], [0.3, 0.7], [0.0, 1.5], [1.0, 0.0]):
        for i, strength in enumerate(strengths):
            loras.set_lora_strength(strength, lora_index=i)
        for n in names:
            got = module_at(dit, cond, n).weight
            assert got.dtype == (dtype if n.startswith("model.") else torch.float32)
            assert torch.equal(got, per_forward_weight(base[n], loras.files, strengths, n)), (n, strengths)


def test_apply_state_toggles_a_lora_and_back_bit_identically_in_the_same_tensors(tmp_path):
    dit, cond = tiny_model()
    dit.requires_grad_(False)
    cond.requires_grad_(False)
    names = [QKV0, QKV1, SECONDS]
    path_a, _ = make_lora(tmp_path, dit, cond, "lora", names, seed=1, file="a.safetensors")
    path_b, _ = make_lora(tmp_path, dit, cond, "bora", [QKV0], seed=2, file="b.safetensors")
    loras = load_loras(dit, cond, [path_a, path_b])
    tensors = {n: module_at(dit, cond, n).weight for n in names}
    loaded = {n: t.clone() for n, t in tensors.items()}
    steps, states = loras.step_states([{"lora_index": 0, "interval": (0.5, 1.0)}], [0.2])
    off = states[steps[0]]  # adapters in file key order: SECONDS, QKV0, QKV1 of LoRA 0, then QKV0 of LoRA 1
    assert off == (True, False, False, True) and loras.state == loras.all_enabled_state == (True,) * 4

    loras.apply_state(off)  # LoRA 0 off on the DiT: its conditioner adapter (SECONDS) stays on
    assert loras.state == off
    after = [per_forward_weight(module_at(dit, cond, QKV0)._parameters["weight"], loras.files, [0.0, 1.0], QKV0)]
    assert torch.equal(tensors[QKV0], after[0])  # LoRA 1 alone
    assert torch.equal(tensors[QKV1], module_at(dit, cond, QKV1)._parameters["weight"])
    assert torch.equal(tensors[SECONDS], loaded[SECONDS])
    versions = {n: t._version for n, t in tensors.items()}
    loras.apply_state(off)  # the current state again: nothing is rewritten
    assert {n: t._version for n, t in tensors.items()} == versions

    loras.apply_state(loras.all_enabled_state)
    loras.set_lora_strength(0.5, lora_index=0)
    loras.set_lora_strength(1.0, lora_index=0)
    for n in names:
        module = module_at(dit, cond, n)
        assert module.weight is tensors[n]  # one tensor object through every change of state
        assert torch.equal(module.weight, loaded[n])
    with pytest.raises(ValueError, match="a LoRA state has 4 flags, got 2"):
        loras.apply_state((True, False))


def test_step_states_on_a_four_step_schedule(tmp_path):
    dit, cond = tiny_model()
    path_a, _ = make_lora(tmp_path, dit, cond, "lora", [QKV0, SECONDS], seed=1, file="a.safetensors")
    path_b, _ = make_lora(tmp_path, dit, cond, "dora-rows", [QKV1], seed=2, file="b.safetensors")
    loras = load_loras(dit, cond, [path_a, path_b])
    steps, states = loras.step_states([{"lora_index": 0, "interval": (0.5, 1.0)}], [1.0, 0.75, 0.5, 0.25])
    assert steps == [0, 0, 0, 1]
    assert states == [(True, True, True), (True, False, True)]  # LoRA 0's QKV0 off; its SECONDS and LoRA 1 on
    steps, states = loras.step_states(
        [{"lora_index": 1, "interval": (0.0, 0.6), "layer_filter": "layers.0"}], [1.0, 0.75, 0.5, 0.25]
    )
    assert steps == [0, 0, 1, 1] and states == [(True, True, False), (True, True, True)]


def test_training_computes_the_weight_on_the_fly_so_gradients_flow(tmp_path):
    dit, cond = tiny_model()
    path, _ = make_lora(tmp_path, dit, cond, "dora-rows", [QKV0])
    load_loras(dit, cond, [path])
    module = module_at(dit, cond, QKV0)
    with torch.no_grad():
        materialized = module.weight
    live = module.weight  # W0 requires grad and autograd records: a fresh tensor on the graph
    assert live is not materialized and live.grad_fn is not None and torch.equal(live, materialized)
    module(torch.randn(2, 16)).sum().backward()
    assert module._parameters["weight"].grad is not None
