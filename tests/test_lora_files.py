"""LoRA files: reading and checking them, LoRAs made for another model, -XS bases, the golden files."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from golden import FIXTURES, fixture_dir, index
from lora_helpers import (
    CONV,
    QKV0,
    QKV1,
    SECONDS,
    assert_outputs_equal,
    assert_state_equal,
    forward_all,
    load_loras,
    lora_tensors,
    make_lora,
    module_at,
    new_set,
    snapshot,
    spec_formula,
    tiny_model,
    write_lora,
)
from safetensors.torch import load_file, save_file
from torch import nn

from stable_audio_3.models.lora import (
    LoraError,
    read_lora_file,
    read_svd_bases,
)

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
    load_loras(dit, cond, [file])
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
    load_loras(dit, cond, [path], svd_bases_path=tmp_path / "bases.pt")
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
    load_loras(dit, cond, [path])
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
        loras = load_loras(dit, cond, files)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    loras.set_lora_strength(0.7, lora_index=1)
    a, b = ({k: v.double() for k, v in f.modules[QKV0].items()} for f in files)
    w0 = weights[_official_weight_key(QKV0)]
    expected = spec_formula("dora-rows", spec_formula("lora", w0, a, 4, 8.0, 1.0), b, 2, 2.0, 0.7)
    torch.testing.assert_close(module_at(dit, cond, QKV0).weight.double(), expected, rtol=1e-5, atol=1e-5)
    seconds = module_at(dit, cond, SECONDS).weight.double()  # only LoRA 0 reaches the conditioner
    expected = spec_formula("lora", weights[_official_weight_key(SECONDS)], files[0].modules[SECONDS], 4, 8.0, 1.0)
    torch.testing.assert_close(seconds, expected, rtol=1e-5, atol=1e-5)
