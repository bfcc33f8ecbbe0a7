"""Shared helpers of the LoRA tests: a tiny model tree with the official names, LoRA files, the spec's formulas."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from stable_audio_3.models.lora import (
    ADAPTER_TYPES,
    LoraSet,
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


def load_loras(dit: nn.Module, conditioner: nn.Module, files: list, svd_bases_path=None, skip_prefixes=()) -> LoraSet:
    loras = LoraSet({"model.": dit, "": conditioner}, skip_prefixes)
    loras.load(files, svd_bases_path=svd_bases_path)
    return loras


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
