"""StableAudioModel on a CUDA GPU (H100 / H200): the golden generation cases in float32 and float16,
`compile=True` (the whole sampling step captured as a CUDA graph, latent length bucketed) against
eager, and no host synchronisation inside the captured step. Every test skips without CUDA;
`scripts/gpu_check.sh` runs this file on a GPU machine.

Noise is drawn on the CPU (`noise_device="cpu"`): the fixtures were made on the CPU, and with the CPU
generator the same seed gives the same draws on every device. Float32 runs with TF32 off (cuDNN
enables it for convolutions by default), so they meet the fixtures' own tolerances.
"""

from __future__ import annotations

import pytest
import torch
from golden import FIXTURES, all_cases, assert_close, load_case
from test_compile import COMPILE_CASES, check_lora_after_compilation, rel, run_length
from test_generate import SEMANTICS, _audio_arg
from torch._dynamo.utils import counters

from stable_audio_3 import StableAudioModel

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run scripts/gpu_check.sh there)"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

# -- Half precision ----------------------------------------------------------------------------
# A float16 run is not the float32 computation rounded: the DiT rounds each timestep to the model dtype
# before its Fourier features (as the checkpoints saw it; with frequencies up to 10 kHz that changes the
# high features), and the CPU generator draws another stream for float16 tensors than for float32 ones.
# Measured on the CPU, float16 vs the float32 fixtures: latents 12-18 dB SNR, audio -1..10 dB, while a
# wrong seed scores -3..2 dB; too close to tell a broken half-precision path from a correct one. So the
# float16 reference is the same model in float16 on the CPU with the same CPU-drawn noise: only the
# kernels differ. Two CPU kernels for one float16 model (SDPA vs math attention) measured: latents
# 44-60 dB, tiny-small audio 37-47 dB, and float16 vs float32 semantics on the same device 12-20 dB.
FP16_LATENT_SNR_DB = 30.0  # between the kernel floor (44 dB) and fp32-vs-fp16 semantics (<= 20 dB)
FP16_AUDIO_SNR_DB = 20.0  # tiny-small audio (floor 37 dB, semantics <= 10 dB); tiny-medium's fp16
# decoder is too sensitive to compare audio (17-32 dB between two CPU kernels), its latents are compared
FP16_FIXTURE_SNR_DB = 6.0  # float16 latents vs the float32 fixture: 12-18 dB measured, wrong seed <= 2 dB
COMPILED_TOL = 1e-4  # compiled vs eager, float32: max|a - b| / max|b| (as test_compile.py on the CPU)

FP16_LATENT_CASES = [(f, f"{n}__flash") for f in FIXTURES for n in (
    "gen_t2a_default_latents", "gen_batch3_lists_latents", "gen_base_style_cfg7_neg_euler",
    "gen_inpaint_multi_latents", "gen_a2a_noise0.5", "lora_a_strength1_latents")]
FP16_AUDIO_CASES = [("tiny-small", f"{n}__flash") for n in ("gen_t2a_default", "gen_inpaint_single",
                                                             "lora_stacked_a1.0_b0.7")]
FIXTURE, CASE, LORA_CASE = "tiny-small", "gen_t2a_default__flash", "lora_a_strength1_latents__flash"
_MODELS: dict[tuple, StableAudioModel] = {}


@pytest.fixture(autouse=True)
def no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def model_for(case, device: str = "cuda", dtype: str = "float32", compile: bool = False) -> StableAudioModel:
    padding = SEMANTICS[case.meta["attention_semantics"]]
    key = (case.fixture, case.meta["config"], padding, device, dtype, compile)
    if key not in _MODELS:
        _MODELS[key] = StableAudioModel.from_pretrained(case.dir, device=device, config=case.config_path,
                                                        attention_padding=padding, dtype=dtype, compile=compile)
    return _MODELS[key]


def generate(case, m: StableAudioModel, **overrides) -> torch.Tensor:
    """The case's generate() call (its LoRAs loaded at its strengths), noise drawn on the CPU."""
    kwargs = {**case.args["generate_kwargs"], "noise_device": "cpu", **overrides}
    for name in ("init_audio", "inpaint_audio"):
        value = _audio_arg(case, name)
        if value is not None:
            kwargs[name] = value
    if "lora_files" not in case.args:
        return m.generate(**kwargs)
    m.load_lora([case.dir / f for f in case.args["lora_files"]])
    try:
        for s in case.args["strengths"]:
            m.set_lora_strength(s["strength"], s.get("lora_index"))
        return m.generate(**kwargs)
    finally:
        m.unload_lora()


def snr_db(ref: torch.Tensor, other: torch.Tensor) -> float:
    ref, other = ref.detach().double().cpu(), other.detach().double().cpu()
    assert ref.shape == other.shape, f"shape {tuple(other.shape)} != {tuple(ref.shape)}"
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - other).pow(2).sum().clamp_min(1e-30)))


# -- Golden parity -----------------------------------------------------------------------------


@pytest.mark.parametrize("fixture,name", all_cases("generate") + all_cases("lora_generate"))
def test_generate_parity_float32(fixture: str, name: str) -> None:
    case = load_case(fixture, name)
    ours = generate(case, model_for(case))
    assert ours.device.type == "cuda"
    kind = "generate_latents" if case.args["generate_kwargs"].get("return_latents") else "generate_audio"
    assert_close(ours, case.outputs["result"], kind, f"cuda float32 {fixture}/{name}")


@pytest.mark.parametrize("fixture,name", FP16_LATENT_CASES)
def test_generate_float16_latents(fixture: str, name: str) -> None:
    case = load_case(fixture, name)
    ours = generate(case, model_for(case, dtype="float16"), return_latents=True)
    cpu = generate(case, model_for(case, "cpu", "float16"), return_latents=True)
    assert ours.dtype == torch.float16 and torch.isfinite(ours).all()
    snr = snr_db(cpu, ours)
    assert snr >= FP16_LATENT_SNR_DB, f"{fixture}/{name}: float16 CUDA vs CPU latents {snr:.1f} dB"
    if case.args["generate_kwargs"].get("return_latents"):  # the fixture holds float32 latents
        snr = snr_db(case.outputs["result"], ours)
        assert snr >= FP16_FIXTURE_SNR_DB, f"{fixture}/{name}: float16 vs the float32 fixture {snr:.1f} dB"


@pytest.mark.parametrize("fixture,name", FP16_AUDIO_CASES)
def test_generate_float16_audio(fixture: str, name: str) -> None:
    case = load_case(fixture, name)
    ours = generate(case, model_for(case, dtype="float16"))
    cpu = generate(case, model_for(case, "cpu", "float16"))
    assert ours.dtype == torch.float32 and torch.isfinite(ours).all() and ours.abs().max() <= 1
    snr = snr_db(cpu, ours)
    assert snr >= FP16_AUDIO_SNR_DB, f"{fixture}/{name}: float16 CUDA vs CPU audio {snr:.1f} dB"


# -- compile=True on CUDA: the whole step as a CUDA graph ---------------------------------------


def eager(dtype: str = "float32") -> StableAudioModel:
    return model_for(load_case(FIXTURE, CASE), dtype=dtype)


def compiled(dtype: str = "float32") -> StableAudioModel:
    m = model_for(load_case(FIXTURE, CASE), dtype=dtype, compile=True)
    assert m.components.compile_step is not None and m.components.bucket is not None  # "step" mode
    return m


@pytest.mark.parametrize("name", list(COMPILE_CASES))
def test_compiled_equals_eager(name: str) -> None:
    kwargs = {"prompt": "lofi house loop", "seed": 3, "steps": 4, **COMPILE_CASES[name]}
    ref = eager().generate(**kwargs)
    out = compiled().generate(**kwargs)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert rel(out, ref) <= COMPILED_TOL
    if name == "inside_a_bucket":
        length, bucketed = run_length(compiled(), duration=5.0)
        assert bucketed > length  # the step really ran at a longer, padded length


def test_compiled_lora_loaded_and_reweighted_after_compilation() -> None:
    check_lora_after_compilation(eager(), compiled(), COMPILED_TOL)


def test_compiled_float16_equals_eager() -> None:
    kwargs = dict(prompt="lofi house loop", duration=2.0, seed=3, steps=4, cfg_scale=2.0, return_latents=True)
    ref = eager("float16").generate(**kwargs)
    out = compiled("float16").generate(**kwargs)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert snr_db(ref, out) >= FP16_LATENT_SNR_DB


def test_captured_step_replays_without_host_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Steady state: every step call replays a recorded CUDA graph under sync-debug "error" (any host
    synchronisation, e.g. .item() or a pageable copy, raises), and no duration of the bucket recompiles."""
    case = load_case(FIXTURE, CASE)
    m = StableAudioModel.from_pretrained(case.dir, device="cuda", config=case.config_path, dtype="float32",
                                         compile=True)
    compile_step, strict, calls, replays = m.components.compile_step, [False], [0], [0]

    def compile_strict(f):
        step = compile_step(f)

        def call(*args):
            if not strict[0]:
                return step(*args)
            calls[0] += 1
            torch.cuda.set_sync_debug_mode("error")
            try:
                return step(*args)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        return call

    replay = torch.cuda.CUDAGraph.replay

    def counting_replay(graph):
        replays[0] += 1
        return replay(graph)

    m.components.compile_step = compile_strict
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", counting_replay)
    (a, bucket_a), (b, bucket_b) = run_length(m, duration=4.6), run_length(m, duration=5.0)
    assert a != b and bucket_a == bucket_b
    kwargs = dict(prompt="rain", seed=1, steps=4, return_latents=True)  # latents: only the step is compiled
    skips = counters["inductor"]["cudagraph_skips"]
    m.generate(duration=4.6, **kwargs)  # compiles, warms up and records the graph
    graphs = counters["stats"]["unique_graphs"]
    m.generate(duration=5.0, **kwargs)  # another duration, same bucket
    assert counters["stats"]["unique_graphs"] == graphs, "a duration of the same bucket recompiled the step"
    strict[0], replays[0] = True, 0
    out = m.generate(duration=4.6, **kwargs)
    assert out.shape[-1] == a and torch.isfinite(out).all()
    assert counters["stats"]["unique_graphs"] == graphs, "a second generation recompiled the step"
    assert counters["inductor"]["cudagraph_skips"] == skips, "inductor ran the step without a CUDA graph"
    # every step call replays its recorded graph(s): more than one each if inductor partitioned the step
    assert calls[0] == kwargs["steps"] and replays[0] >= calls[0] and replays[0] % calls[0] == 0, \
        f"{replays[0]} CUDA graph replays for {calls[0]} step calls"
