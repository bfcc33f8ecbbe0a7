"""The sampling step compiles whole: torch.compile(fullgraph=True) of the real per-step function
(guided denoiser + sampler update) equals eager, and one compiled graph serves every step of a run.

fullgraph=True fails on any graph break, so these tests also prove the step does no host
synchronisation and no Python branching on tensor values.
"""

from __future__ import annotations

import pytest
import torch
from golden import load_case

from stable_audio_3 import GenerationRequest, StableAudioModel
from stable_audio_3.compiling import bucket_length, compile_components
from stable_audio_3.plan import make_plan

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FIXTURE, CASE = "tiny-small", "gen_t2a_default"
_MODELS: dict[str, StableAudioModel] = {}


def model(padding: str = "exclude") -> StableAudioModel:
    if padding not in _MODELS:
        case = load_case(FIXTURE, CASE)
        _MODELS[padding] = StableAudioModel.from_pretrained(case.dir, device="cpu", config=case.config_path,
                                                            attention_padding=padding)
    return _MODELS[padding]


class Counting:
    """A torch.compile backend that counts the graphs it is given, then hands them to `backend`."""

    def __init__(self, backend: str):
        self.backend, self.graphs = backend, 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        if self.backend == "inductor":
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs)
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend(self.backend)(gm, example_inputs)


def eager_and_compiled(m: StableAudioModel, backend: str, **kwargs) -> tuple[torch.Tensor, torch.Tensor, int]:
    kwargs = {"prompt": "lofi house loop", "duration": 1.5, "seed": 3, "steps": 4, "return_latents": True, **kwargs}
    eager = m.generate(**kwargs)
    torch._dynamo.reset()
    counting = Counting(backend)
    m.components.compile_step = lambda f: torch.compile(f, fullgraph=True, backend=counting)
    try:
        compiled = m.generate(**kwargs)
    finally:
        m.components.compile_step = None
    return eager, compiled, counting.graphs


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


SIGNAL = (44100, torch.sin(torch.arange(3 * 44100) / 20.0).repeat(2, 1) * 0.5)
CASES = {
    "t2a": {},
    "unequal_durations": dict(prompt=["lofi house loop", "rain"], duration=[1.0, 2.5], seed=[1, 2]),
    "cfg_negative_apg": dict(cfg_scale=4.0, negative_prompt="noise", apg_scale=0.5),
    "inpaint_two_regions": dict(inpaint_audio=SIGNAL, inpaint_mask_start_seconds=[0.2, 1.0],
                                inpaint_mask_end_seconds=[0.6, 1.3], cfg_scale=2.0),
    "audio_to_audio": dict(init_audio=SIGNAL, init_noise_level=0.6, sampler_type="euler"),
    "dpmpp_rk4": dict(sampler_type="dpmpp"),
}


@pytest.mark.parametrize("padding", ["exclude", "zero-values"])
def test_compiled_step_equals_eager_inductor(padding: str) -> None:
    eager, compiled, graphs = eager_and_compiled(model(padding), "inductor", cfg_scale=3.0, negative_prompt="hiss")
    assert rel(compiled, eager) <= 1e-5
    assert graphs == 1  # one graph for all 4 steps: nothing recompiles between steps


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_step_equals_eager(name: str) -> None:
    eager, compiled, graphs = eager_and_compiled(model(), "aot_eager", **CASES[name])
    assert rel(compiled, eager) <= 1e-5
    assert graphs == 1


def test_partial_cfg_interval_uses_one_graph_per_kind_of_step() -> None:
    """Guided and plain steps are two step functions, each compiled once for the whole run."""
    eager, compiled, graphs = eager_and_compiled(model(), "aot_eager", cfg_scale=3.0, cfg_interval=(0.5, 1.0),
                                                 steps=6)
    assert rel(compiled, eager) <= 1e-5
    assert graphs == 2


def test_lora_and_lora_configs_switching_part_way() -> None:
    case = load_case(FIXTURE, "lora_a_strength1_latents")
    m = model()
    m.load_lora([case.dir / f for f in case.args["lora_files"]])
    try:
        eager, compiled, graphs = eager_and_compiled(m, "aot_eager")
        assert rel(compiled, eager) <= 1e-5 and graphs == 1
        switched = dict(lora_configs=[{"lora_index": 0, "interval": (0.5, 1.0)}], steps=6)
        eager_s, compiled_s, graphs = eager_and_compiled(m, "aot_eager", **switched)
        assert rel(compiled_s, eager_s) <= 1e-5
        assert graphs == 1  # the LoRA switch changes weights in place and the conditioning argument only
        assert rel(eager_s, eager) > 1e-4  # the switch did change the result
        m.set_lora_strength(0.5)  # re-weighted after compilation: still equal to eager
        eager_w, compiled_w, _ = eager_and_compiled(m, "aot_eager")
        assert rel(compiled_w, eager_w) <= 1e-5 and rel(eager_w, eager) > 1e-4
    finally:
        m.unload_lora()


# -- compile=True: the shipped compile paths against eager --------------------------------------
# Regional (the CPU default: each DiT and SAME block compiled) and step (the CUDA default: the whole
# step, latent length bucketed), both with inductor on the CPU; tolerance 1e-4 relative.

_COMPILED: dict[str, StableAudioModel] = {}


def compiled(mode: str) -> StableAudioModel:
    if mode not in _COMPILED:
        case = load_case(FIXTURE, CASE)
        if mode == "regional":  # the public switch picks regional on the CPU
            m = StableAudioModel.from_pretrained(case.dir, device="cpu", config=case.config_path, compile=True)
            assert m.components.compile_step is None and m.components.bucket is None
        else:
            m = StableAudioModel.from_pretrained(case.dir, device="cpu", config=case.config_path)
            assert compile_components(m.components, "step") == "step"
        _COMPILED[mode] = m
    return _COMPILED[mode]


def run_length(m: StableAudioModel, **kwargs) -> tuple[int, int]:
    """(the request's latent length, the length the compiled step runs at)."""
    request = GenerationRequest(**{"prompt": "x", **kwargs}).resolve(m.defaults)
    length = make_plan(m.components, request).latent_length
    return length, (m.components.bucket or (lambda n: n))(length)


COMPILE_CASES = {
    "t2a": dict(duration=1.5),
    "inpaint": dict(inpaint_audio=SIGNAL, inpaint_mask_start_seconds=[0.2, 1.0], inpaint_mask_end_seconds=[0.6, 1.3],
                    cfg_scale=2.0, duration=2.0),
    "unequal_durations": dict(prompt=["lofi house loop", "rain"], duration=[1.0, 2.5], seed=[1, 2], cfg_scale=3.0,
                              negative_prompt="hiss"),
    "inside_a_bucket": dict(duration=5.0, sampler_type="euler", cfg_scale=2.0, apg_scale=0.5),
}


@pytest.mark.parametrize("mode", ["regional", "step"])
@pytest.mark.parametrize("name", list(COMPILE_CASES))
def test_compiled_model_equals_eager(mode: str, name: str) -> None:
    kwargs = {"prompt": "lofi house loop", "seed": 3, "steps": 4, **COMPILE_CASES[name]}
    eager = model().generate(**kwargs)
    out = compiled(mode).generate(**kwargs)
    assert out.shape == eager.shape and torch.isfinite(out).all()
    assert rel(out, eager) <= 1e-4
    if name == "inside_a_bucket" and mode == "step":
        length, bucketed = run_length(compiled(mode), duration=5.0)
        assert bucketed > length  # the step really ran at a longer, padded length


def test_durations_of_one_bucket_share_one_graph() -> None:
    m = StableAudioModel.from_pretrained(load_case(FIXTURE, CASE).dir, device="cpu",
                                         config=load_case(FIXTURE, CASE).config_path)
    compile_components(m.components, "step")
    torch._dynamo.reset()
    counting = Counting("aot_eager")
    m.components.compile_step = lambda f: torch.compile(f, fullgraph=True, dynamic=False, backend=counting)
    (a, bucket_a), (b, bucket_b) = run_length(m, duration=4.6), run_length(m, duration=5.0)
    assert a != b and bucket_a == bucket_b
    for duration in (4.6, 5.0, 4.6):
        out = m.generate(prompt="rain", duration=duration, seed=1, steps=2)
        assert out.shape[-1] == int(duration * m.sample_rate)
    assert counting.graphs == 1


def check_lora_after_compilation(eager_m: StableAudioModel, compiled_m: StableAudioModel, tol: float) -> None:
    """A LoRA loaded, re-weighted and unloaded after compilation: compiled equals eager throughout."""
    lora = load_case(FIXTURE, "lora_a_strength1_latents")
    files = [lora.dir / f for f in lora.args["lora_files"]]
    kwargs = dict(prompt="lofi house loop", duration=1.5, seed=3, steps=4)
    plain = compiled_m.generate(**kwargs)  # compiled (and on CUDA captured) before any LoRA
    for m in (eager_m, compiled_m):
        m.load_lora(files)
    try:
        for strength in (1.0, 0.4):
            for m in (eager_m, compiled_m):
                m.set_lora_strength(strength)
            eager, out = eager_m.generate(**kwargs), compiled_m.generate(**kwargs)
            assert rel(out, eager) <= tol and rel(out, plain) > 1e-3
    finally:
        for m in (eager_m, compiled_m):
            m.unload_lora()
    assert rel(compiled_m.generate(**kwargs), plain) <= 1e-5  # unloaded: back to the plain model


def test_lora_loaded_and_reweighted_after_compilation() -> None:
    check_lora_after_compilation(model(), compiled("regional"), 1e-4)


def test_bucket_lengths() -> None:
    assert [bucket_length(n) for n in (1, 32, 33, 65, 108, 174, 1000)] == [32, 32, 40, 80, 112, 192, 1024]
    assert bucket_length(1292, maximum=1292) == 1292 and bucket_length(1200, maximum=1292) == 1280
    sizes = {bucket_length(n, maximum=4096) for n in range(1, 4097)}
    assert len(sizes) == 29 and max(bucket_length(n) / n for n in range(33, 4097)) <= 1.25
    with pytest.raises(ValueError, match="compile mode 'fast' is invalid; allowed: 'regional', 'step'"):
        compile_components(model().components, "fast")
