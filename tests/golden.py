"""Access to the reference fixtures in $SA3_GOLDEN (default ../shared/golden).

Tests use `load_case(fixture, name)` and `assert_close(ours, golden, kind)`. When the folder is
absent (a user's clone) every parity test skips with a message; `.ci/run` checks it exists.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(os.environ.get("SA3_GOLDEN", REPO_ROOT.parent / "shared" / "golden"))
FIXTURES = ("tiny-small", "tiny-medium")


def golden_root() -> Path:
    if not (GOLDEN / "tiny-small" / "cases" / "index.json").is_file():
        if os.environ.get("SA3_REQUIRE_GOLDEN"):
            pytest.fail(f"golden fixtures required (SA3_REQUIRE_GOLDEN) but not found at {GOLDEN}")
        pytest.skip(f"golden fixtures not found at {GOLDEN} (set SA3_GOLDEN to run parity tests)")
    return GOLDEN


def fixture_dir(fixture: str) -> Path:
    return golden_root() / fixture


@cache
def index(fixture: str) -> dict:
    return json.loads((fixture_dir(fixture) / "cases" / "index.json").read_text())


def case_names(fixture: str, kind: str | None = None, semantics: str | None = None) -> list[str]:
    """Case names of a fixture, read without skipping (usable in parametrize at collection)."""
    path = GOLDEN / fixture / "cases" / "index.json"
    if not path.is_file():
        return []
    cases = json.loads(path.read_text())["cases"]
    return [
        c["name"]
        for c in cases
        if (kind is None or c["kind"] == kind)
        and (semantics is None or c["attention_semantics"] == semantics)
    ]


def all_cases(kind: str, semantics: str | None = None) -> list[tuple[str, str]]:
    """(fixture, case) pairs for parametrize; a placeholder keeps the test (and its skip) visible."""
    pairs = [(f, c) for f in FIXTURES for c in case_names(f, kind, semantics)]
    return pairs or [("tiny-small", "<golden fixtures absent>")]


@cache
def _tensors(path: str) -> dict[str, torch.Tensor]:
    return load_file(path)


@cache
def tolerances() -> dict:
    return json.loads((golden_root() / "tolerances.json").read_text())["recommended"]


@dataclass
class Case:
    fixture: str
    name: str
    meta: dict
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return fixture_dir(self.fixture)

    @property
    def config_path(self) -> Path:
        return self.dir / self.meta["config"]

    @property
    def args(self) -> dict:
        return self.meta.get("args", {})


def _resolve_input(fixture: str, case: str, ref: dict) -> torch.Tensor:
    cases = fixture_dir(fixture) / "cases"
    if "tensor" in ref:
        raise KeyError("direct tensors are read from inputs.safetensors")
    if "signal" in ref:
        sig = _tensors(str(cases / "signals.safetensors"))[ref["signal"]]
        sig = sig[..., ref["start"] : ref["start"] + ref["length"]].clone()
        if ref.get("as_float"):
            sig = (sig.float() / 32767.0).unsqueeze(0)
        return sig
    if "shared" in ref:
        return _tensors(str(cases / "shared_inputs.safetensors"))[ref["shared"]].clone()
    if "from_case" in ref:
        return load_case(fixture, ref["from_case"]).outputs[ref["key"]].clone()
    raise KeyError(f"unknown input reference {ref}")


def load_case(fixture: str, name: str) -> Case:
    if name.startswith("<"):
        golden_root()  # skips
    d = fixture_dir(fixture) / "cases" / name
    meta = json.loads((d / "case.json").read_text())
    case = Case(fixture, name, meta)
    direct = {}
    if (d / "inputs.safetensors").is_file():
        direct = _tensors(str(d / "inputs.safetensors"))
    for key, ref in meta.get("inputs", {}).items():
        case.inputs[key] = direct[key].clone() if "tensor" in ref else _resolve_input(fixture, name, ref)
    if (d / "outputs.safetensors").is_file():
        case.outputs = dict(_tensors(str(d / "outputs.safetensors")))
    return case


def rel_err(ours: torch.Tensor, golden: torch.Tensor) -> float:
    """max|golden - ours| / max|golden| over the whole tensor (the fixtures' metric)."""
    golden = golden.double()
    ours = ours.detach().double().cpu()
    assert ours.shape == golden.shape, f"shape {tuple(ours.shape)} != golden {tuple(golden.shape)}"
    return ((ours - golden).abs().max() / golden.abs().max().clamp_min(1e-30)).item()


def assert_close(ours: torch.Tensor, golden: torch.Tensor, kind: str, what: str = "") -> float:
    """Fails unless `ours` is within the README's recommended tolerance for `kind`."""
    tol = tolerances()[kind]
    err = rel_err(ours, golden)
    assert err <= tol, f"{what}: relative max error {err:.3g} > tolerance {tol:g} ({kind})"
    return err
