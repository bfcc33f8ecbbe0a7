"""One request type for every surface: the CLI, the HTTP server and the web page expose every option of
`GenerationRequest` with its default and bounds, and the same request gives the same audio everywhere."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from golden import fixture_dir

from stable_audio_3 import StableAudioModel, cli
from stable_audio_3.request import FIELDS, LOAD_FIELDS, PYTHON_ONLY

# Surfaces may lack only what cannot cross them (an object dist_shift is still a dict on every surface).
EXPOSED = [name for name in FIELDS if name not in PYTHON_ONLY]


def default_of(name: str):
    f = FIELDS[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def meta_bounds(name: str) -> tuple:
    m = FIELDS[name].metadata
    return m["low"], m["high"]


def test_every_field_is_a_cli_flag_with_the_type_default_and_bounds() -> None:
    flags = {k: v for k, v in cli.generation_flags(cli.build_generate_parser()).items() if k not in LOAD_FIELDS}
    assert sorted(flags) == sorted(EXPOSED)
    for name in EXPOSED:
        action, f, default = flags[name], FIELDS[name], default_of(name)
        if name == "cfg_interval":
            assert tuple(action.default) == default
        else:
            assert action.default == default, name
        if f.metadata["kind"] == "number":
            assert (action.type.low, action.type.high) == meta_bounds(name), name
        if f.metadata["choices"]:
            assert tuple(action.choices) == tuple(f.metadata["choices"]), name


def test_load_options_are_flags_of_the_cli_the_page_and_the_server() -> None:
    pytest.importorskip("fastapi")
    from stable_audio_3.server import build_parser as server_parser
    from stable_audio_3.ui import build_parser as ui_parser

    for parser in (cli.build_generate_parser(), ui_parser(), server_parser()):
        for name, f in LOAD_FIELDS.items():
            action = parser._option_string_actions.get("--" + name.replace("_", "-"))
            assert action is not None and action.dest == name, (parser.prog, name)
            assert action.default == f.default, (parser.prog, name)
            if f.metadata["choices"]:
                assert tuple(action.choices) == tuple(f.metadata["choices"]), (parser.prog, name)


def test_every_field_is_in_the_server_schema_with_the_type_default_and_bounds() -> None:
    pytest.importorskip("fastapi")
    from stable_audio_3.server.app import create_app
    from stable_audio_3.server.settings import ServerConfig

    schema = create_app(ServerConfig(), models={}).openapi()
    props = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    form = schema_form_fields(schema)
    for name in EXPOSED:
        f = FIELDS[name]
        if f.metadata["kind"] == "audio":  # uploads: multipart form fields
            assert name in form, name
            continue
        assert name in props, name
        p, default = props[name], default_of(name)
        assert p.get("default") == (list(default) if isinstance(default, tuple) else default), name
        if f.metadata["kind"] == "number":
            low, high = meta_bounds(name)
            text = repr(p)
            if low is not None:
                key = "exclusiveMinimum" if f.metadata["low_open"] else "minimum"
                assert f"'{key}': {low}" in text or f"'{key}': {float(low)}" in text, (name, p)
            if high is not None:
                assert f"'maximum': {high}" in text or f"'maximum': {float(high)}" in text, (name, p)


def schema_form_fields(schema: dict) -> set[str]:
    names = set()
    for path in schema["paths"].values():
        for op in path.values():
            content = op.get("requestBody", {}).get("content", {})
            for media in content.values():
                ref = media.get("schema", {}).get("$ref", "")
                body = schema["components"]["schemas"].get(ref.rsplit("/", 1)[-1], media.get("schema", {}))
                names |= set(body.get("properties", {}))
    return names


def test_every_field_is_a_page_control_with_the_type_default_and_bounds() -> None:
    pytest.importorskip("gradio")
    from stable_audio_3.ui.controls import control_specs

    specs = control_specs()
    assert sorted(specs) == sorted(EXPOSED)
    for name in EXPOSED:
        f, spec = FIELDS[name], specs[name]
        if f.metadata["from_model"] or name in ("batch_size", "init_noise_level"):
            continue  # the loaded model's value / what resolve() gives for None (tests/test_ui.py checks them)
        assert spec["default"] == default_of(name), name
        if f.metadata["kind"] == "number":
            low, high = meta_bounds(name)
            assert low is None or spec["minimum"] == low, name
            assert high is None or spec["maximum"] == high, name


# -- the same request, the same audio ----------------------------------------------------------------

MODELS = {"demo": "demo", "fixture": str(fixture_dir("tiny-small"))}
REQUESTS = {
    "batch1": dict(prompt=["sine wave a4"], seed=[5]),
    "per_item_seeds": dict(prompt=["sine wave a4", "pink noise"], seed=[3, 4]),
}


@pytest.fixture
def recorded(monkeypatch) -> list[torch.Tensor]:
    """The float arrays every surface gets back from the model, before peak handling and encoding."""
    seen: list[torch.Tensor] = []
    real = StableAudioModel.run

    def run(self, request, callback=None):
        result = real(self, request, callback)
        seen.append(result.audio.detach().cpu().clone())
        return result

    monkeypatch.setattr(StableAudioModel, "run", run)
    return seen


@pytest.mark.parametrize("which", list(MODELS))
@pytest.mark.parametrize("kind", list(REQUESTS))
def test_api_cli_page_and_server_return_identical_audio(which: str, kind: str, recorded, tmp_path,
                                                        monkeypatch) -> None:
    model_name, req = MODELS[which], REQUESTS[kind]
    steps, duration = 4, 1.0
    model = StableAudioModel.from_pretrained(model_name, device="cpu")
    api = model.generate(req["prompt"], duration=duration, steps=steps, seed=req["seed"], clamp=False)

    argv = ["--model", model_name, "--device", "cpu", "-q", "--steps", str(steps), "--duration", str(duration),
            "-o", str(tmp_path / "cli.wav"), "-p", *req["prompt"], "--seed", *map(str, req["seed"])]
    assert cli.main(argv) == 0
    surfaces = {"api": api, "cli": recorded[-1]}

    if _importable("gradio"):
        from stable_audio_3.ui.app import ModelHolder, generate

        holder = ModelHolder()
        values = dict(model=model_name, prompt=req["prompt"][0] if len(req["prompt"]) == 1 else req["prompt"],
                      seed=req["seed"], steps=steps, duration=duration, batch_size=len(req["prompt"]))
        generate(holder, tmp_path, values)
        surfaces["page"] = recorded[-1]

    server_audio = server_run(model, dict(prompt=req["prompt"], seed=req["seed"], steps=steps, duration=duration,
                                          clamp=False), tmp_path, recorded)
    if server_audio is not None:
        surfaces["server"] = server_audio
    for name, audio in surfaces.items():
        assert audio.shape == api.shape, name
        assert torch.equal(audio, api), (name, float((audio - api).abs().max()))
    assert math.isfinite(float(api.abs().max()))


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def server_run(model, body: dict, tmp_path, recorded) -> torch.Tensor | None:
    """The request through the HTTP API (in-process client, the real worker thread)."""
    if not _importable("fastapi"):
        return None
    from server_client import run_job

    run_job(model, body, tmp_path)
    return recorded[-1]
