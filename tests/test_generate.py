"""StableAudioModel.generate() against every generate / LoRA case of the reference fixtures."""

from __future__ import annotations

import pytest
import torch
from golden import all_cases, assert_close, load_case

from stable_audio_3 import StableAudioModel

SEMANTICS = {"flash_varlen": "exclude", "reference_cpu_fallback": "zero-values"}
_MODELS: dict[tuple[str, str, str], StableAudioModel] = {}


def model_for(case) -> StableAudioModel:
    padding = SEMANTICS[case.meta["attention_semantics"]]
    key = (case.fixture, case.meta["config"], padding)
    if key not in _MODELS:
        _MODELS[key] = StableAudioModel.from_pretrained(case.dir, device="cpu", config=case.config_path,
                                                        attention_padding=padding)
    return _MODELS[key]


def _audio_arg(case, name: str):
    spec = case.args.get(name)
    if spec is None:
        return None
    audio = case.inputs[name]
    if spec.get("numpy"):
        return spec["sample_rate"], audio.numpy()
    return spec["sample_rate"], audio


def run_case(case) -> torch.Tensor:
    model = model_for(case)
    kwargs = dict(case.args["generate_kwargs"])
    for name in ("init_audio", "inpaint_audio"):
        value = _audio_arg(case, name)
        if value is not None:
            kwargs[name] = value
    return model.generate(**kwargs)


@pytest.mark.parametrize("fixture,name", all_cases("generate"))
def test_generate_parity(fixture: str, name: str) -> None:
    case = load_case(fixture, name)
    ours = run_case(case)
    kind = "generate_latents" if case.args["generate_kwargs"].get("return_latents") else "generate_audio"
    assert_close(ours, case.outputs["result"], kind, f"{fixture}/{name}")


@pytest.mark.parametrize("fixture,name", all_cases("lora_generate"))
def test_lora_generate_parity(fixture: str, name: str) -> None:
    case = load_case(fixture, name)
    model = model_for(case)
    model.load_lora([case.dir / f for f in case.args["lora_files"]])
    try:
        for s in case.args["strengths"]:
            model.set_lora_strength(s["strength"], s.get("lora_index"))
        ours = run_case(case)
    finally:
        model.unload_lora()
    kind = "generate_latents" if case.args["generate_kwargs"].get("return_latents") else "generate_audio"
    assert_close(ours, case.outputs["result"], kind, f"{fixture}/{name}")
