"""HTTP API (stable_audio_3.server) on the tiny fixture model: jobs, batching, restarts, limits, refusals."""

from __future__ import annotations

import io
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch


def _missing(reason: str, strict_env: str = "SA3_REQUIRE_SERVER") -> None:
    """Skip here when an optional tool is absent, but fail in CI, where a skipped test would hide a gap."""
    if os.environ.get("CI") or os.environ.get(strict_env):
        pytest.fail(f"CI needs it ({strict_env}): {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


for _package in ("fastapi", "uvicorn", "httpx", "python_multipart"):  # the [server] extra, and httpx
    try:
        __import__(_package)
    except ImportError:
        _missing(f"{_package} is not installed (pip install -e '.[server,test]')")
import httpx  # noqa: E402
import soundfile as sf  # noqa: E402
import uvicorn  # noqa: E402
from golden import fixture_dir, rel_err  # noqa: E402

from stable_audio_3 import StableAudioModel  # noqa: E402
from stable_audio_3.server import ServerConfig, build_parser, create_app, main  # noqa: E402
from stable_audio_3.server.config import config_from_args  # noqa: E402

SR = 44100
_MODEL: dict[str, StableAudioModel] = {}


def model() -> StableAudioModel:
    if "m" not in _MODEL:
        _MODEL["m"] = StableAudioModel.from_pretrained(fixture_dir("tiny-small"), device="cpu")
    return _MODEL["m"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The workers generate on their own threads; reference calls on this one run single-threaded, which on a
    small shared CPU is many times faster than 2 OpenMP threads competing with the worker."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextmanager
def live_server(app) -> Iterator[str]:
    """uvicorn serving `app` on a free 127.0.0.1 port in a thread (lifespan included); yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound here and handed over: no race for the port
    port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        end = time.monotonic() + 30
        while not srv.started:
            assert thread.is_alive() and time.monotonic() < end, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(30)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@contextmanager
def server(tmp_path: Path, **settings) -> Iterator[httpx.Client]:
    """A real server on the tiny model; the client's `.app` is the FastAPI app, to reach its job store."""
    config = ServerConfig(data_dir=tmp_path / "data", poll_interval_s=0.05, **settings)
    app = create_app(config, models={"tiny": model()})
    with live_server(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        client.app = app
        yield client


def wait(client: httpx.Client, job_id: str, timeout: float = 30.0, until=("completed", "failed", "cancelled")) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = client.get(f"/v1/jobs/{job_id}").json()
        if info["status"] in until:
            return info
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not reach {until} in {timeout} s: {info}")


def submit(client: httpx.Client, **body) -> str:
    r = client.post("/v1/generate", json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def fetch(client: httpx.Client, job_id: str, index: int = 0, fmt: str = "wav") -> tuple[np.ndarray, int]:
    r = client.get(f"/v1/jobs/{job_id}/audio", params={"index": index, "format": fmt})
    assert r.status_code == 200, r.text
    data, sr = sf.read(io.BytesIO(r.content), dtype="float32", always_2d=True)
    return data, sr


def wav_bytes(seconds: float, sr: int = 22050, channels: int = 1, freq: float = 330.0) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    audio = (0.4 * np.sin(2 * math.pi * freq * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([audio] * channels, 1), sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def error_of(r) -> tuple[int, str | None]:
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return r.status_code, body["error"]["field"]


# -- jobs end to end ------------------------------------------------------------------------------
def test_text_to_audio_job_gives_the_python_api_audio_in_every_format(tmp_path: Path) -> None:
    with server(tmp_path) as client:
        r = client.post("/v1/generate", json={"prompt": "lofi house loop", "duration": 1.5, "seed": 7})
        assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        assert r.json()["seeds"] == [7]
        info = wait(client, r.json()["id"])
        assert info["status"] == "completed", info
        assert info["progress"] == 1.0 and info["step"] == info["total_steps"] == 8
        assert info["seeds"] == [7] and info["durations"] == [1.5] and info["error"] is None
        assert info["timings"]["generate_s"] > 0 and info["timings"]["total_s"] >= info["timings"]["generate_s"]
        assert info["audio_urls"] == [f"/v1/jobs/{info['id']}/audio?index=0"]
        audio, sr = fetch(client, info["id"])
        assert sr == SR and audio.shape == (int(1.5 * SR), 2)
        alone = model().generate("lofi house loop", duration=1.5, seed=[7])[0]
        assert rel_err(torch.from_numpy(audio.T.copy()), alone) < 1e-3
        for fmt in ("flac", "ogg", "mp3"):
            coded, sr = fetch(client, info["id"], fmt=fmt)
            assert sr == SR and coded.shape[1] == 2
            assert abs(coded.shape[0] - int(1.5 * SR)) < 0.06 * SR, (fmt, coded.shape)  # mp3 adds codec padding
        # a finished job can be deleted with its audio
        assert client.delete(f"/v1/jobs/{info['id']}").json() == {"id": info["id"], "deleted": True}
        assert error_of(client.get(f"/v1/jobs/{info['id']}")) == (404, "job_id")


def test_random_seeds_are_reported_per_item_and_reproduce(tmp_path: Path) -> None:
    with server(tmp_path) as client:
        first = wait(client, submit(client, prompt=["a", "b"], batch_size=2, duration=1.0))
        assert first["status"] == "completed" and first["num_outputs"] == 2 and len(first["audio_urls"]) == 2
        seeds = first["seeds"]
        again = wait(client, submit(client, prompt=["a", "b"], batch_size=2, duration=1.0, seed=seeds))
        for i in range(2):
            assert np.array_equal(fetch(client, first["id"], i)[0], fetch(client, again["id"], i)[0])
        # an int seed s gives the items the seeds s, s+1, ...
        assert wait(client, submit(client, prompt="a", batch_size=3, duration=0.5, seed=40))["seeds"] == [40, 41, 42]


def test_batching_merges_compatible_jobs_and_each_keeps_its_own_audio(tmp_path: Path) -> None:
    """Jobs queued while no worker runs (a front end, or a server that was down) are taken together."""
    bodies = [
        {"prompt": "lofi house loop", "duration": 1.0, "seed": 3},
        {"prompt": ["rain on a tin roof", "a"], "batch_size": 2, "duration": 1.0, "seed": [11, 12]},
        {"prompt": "cellos", "duration": 1.0, "seed": 5, "steps": 4},  # other steps: runs alone
        {"prompt": "birdsong", "duration": 1.0, "seed": 9},
    ]
    with server(tmp_path, run_workers=False) as client:
        ids = [submit(client, **b) for b in bodies]
        assert [client.get(f"/v1/jobs/{i}").json()["queue_position"] for i in ids] == [0, 1, 2, 3]
    with server(tmp_path, max_batch=4) as client:
        infos = [wait(client, i) for i in ids]
    assert all(i["status"] == "completed" for i in infos), infos
    merged = [infos[0], infos[1], infos[3]]
    assert len({i["batch"]["id"] for i in merged}) == 1
    assert all(i["batch"]["jobs"] == 3 and i["batch"]["items"] == 4 for i in merged)
    assert infos[2]["batch"]["jobs"] == 1 and infos[2]["batch"]["id"] != infos[0]["batch"]["id"]
    with server(tmp_path) as client:  # finished jobs survive a restart too
        for body, info in zip(bodies, infos, strict=True):
            prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
            for i, (prompt, seed) in enumerate(zip(prompts, info["seeds"], strict=True)):
                # each item again, alone: a job of one item, submitted only after the previous one finished
                single = {**body, "prompt": prompt, "batch_size": 1, "seed": seed}
                alone_info = wait(client, submit(client, **single))
                assert alone_info["batch"]["items"] == 1
                alone = torch.from_numpy(fetch(client, alone_info["id"])[0].T.copy())
                got = torch.from_numpy(fetch(client, info["id"], i)[0].T.copy())
                assert rel_err(got, alone) < 1e-3, (body, i)


def test_batch_wait_merges_requests_arriving_together_on_a_running_server(tmp_path: Path) -> None:
    with server(tmp_path, batch_wait_s=2.0, max_batch=3) as client:
        ids = [submit(client, prompt=f"p{i}", duration=0.5, seed=i) for i in range(4)]
        infos = [wait(client, i) for i in ids]
    assert [i["batch"]["jobs"] for i in infos] == [3, 3, 3, 1]
    assert len({i["batch"]["id"] for i in infos[:3]}) == 1
    assert infos[0]["timings"]["queued_s"] < 1.5  # the batch was full: no need to wait any longer
    assert infos[3]["timings"]["queued_s"] >= 1.9  # alone: held batch_wait_s for company that never came


def test_restart_resumes_queued_and_interrupted_jobs_and_expires_old_ones(tmp_path: Path) -> None:
    with server(tmp_path) as client:
        done = wait(client, submit(client, prompt="x", duration=0.5, seed=1))["id"]
    with server(tmp_path, run_workers=False) as client:
        queued = [submit(client, prompt=f"p{i}", duration=0.5, seed=i) for i in range(3)]
        store = client.app.state.server.store
        (interrupted,) = store.claim_batch("tiny", max_items=1, owner="worker-that-dies")  # then the server "dies"
        assert interrupted.id == queued[0]
        assert client.get(f"/v1/jobs/{queued[0]}").json()["status"] == "running"
    with server(tmp_path) as client:
        infos = [wait(client, i) for i in queued]
        assert [i["status"] for i in infos] == ["completed"] * 3
        assert infos[0]["attempts"] == 2 and infos[1]["attempts"] == 1
        assert client.get(f"/v1/jobs/{done}").json()["status"] == "completed"
    with server(tmp_path, expiry_s=1e-3, run_workers=False) as client:
        for job_id in [done, *queued]:
            assert client.get(f"/v1/jobs/{job_id}").status_code == 404
        assert not any((tmp_path / "data" / "files").iterdir())


def test_audio_to_audio_inpainting_and_continuation_from_uploads(tmp_path: Path) -> None:
    upload = wav_bytes(2.0, sr=22050, channels=1)
    source, src_sr = sf.read(io.BytesIO(upload), dtype="float32", always_2d=True)
    requests = {
        "a2a": ({"prompt": "x", "duration": 2.0, "seed": 2, "init_noise_level": 0.5}, "init_audio", 2.0),
        "regions": (
            {
                "prompt": "x",
                "duration": 2.0,
                "seed": 2,
                "inpaint_mask_start_seconds": [0.2, 1.0],
                "inpaint_mask_end_seconds": [0.5, 1.4],
            },
            "inpaint_audio",
            2.0,
        ),
        "continue": ({"prompt": "x", "duration": 3.0, "seed": 2, "continuation": True}, "inpaint_audio", 3.0),
    }
    with server(tmp_path) as client:
        ids = {}
        for name, (body, role, _) in requests.items():
            r = client.post(
                "/v1/generate",
                data={"request": json.dumps(body)},
                files={role: ("../../etc/evil.wav", upload, "audio/wav")},
            )
            assert r.status_code == 202, r.text
            ids[name] = r.json()["id"]
        for name, (body, role, seconds) in requests.items():
            info = wait(client, ids[name])
            assert info["status"] == "completed", info
            assert info["request"]["inputs"] == [role]
            audio, sr = fetch(client, ids[name])
            assert audio.shape == (int(seconds * SR), 2)
            kwargs = {k: v for k, v in body.items() if k != "prompt"}
            alone = model().generate("x", **{**kwargs, "seed": [2]}, **{role: (src_sr, source)})[0]
            assert rel_err(torch.from_numpy(audio.T.copy()), alone) < 1e-3, name
        files = tmp_path / "data" / "files"
        assert not list(files.rglob("input_*")), "uploads are removed once their job is done"
        assert not list((tmp_path / "data").rglob("evil*")) and not Path("/etc/evil.wav").exists()


def noise_wav(seconds: float, scale: float, seed: int = 0) -> bytes:
    """44.1 kHz stereo float WAV of noise: the server keeps it as decoded (no resampling, rounding or clamping)."""
    audio = (scale * np.random.default_rng(seed).standard_normal((int(seconds * SR), 2))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, audio, SR, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_inpaint_paste_back_keeps_the_uploaded_audio_exactly(tmp_path: Path) -> None:
    quiet, loud = noise_wav(1.0, 0.2), noise_wav(1.0, 0.6, seed=1)  # loud: peaks past 1
    # the server stores each upload as decoded to float32 (a float WAV, unclamped) and generate() reads that back
    decoded = {
        name: sf.read(io.BytesIO(data), dtype="float32", always_2d=True)[0]
        for name, data in (("quiet", quiet), ("loud", loud))
    }
    assert np.abs(decoded["quiet"]).max() < 1 < np.abs(decoded["loud"]).max()
    regions = {"inpaint_mask_start_seconds": [0.25], "inpaint_mask_end_seconds": [0.5]}
    body = {"prompt": "x", "duration": 1.0, "seed": 4, "steps": 4, **regions}
    requests = {
        "plain": (body, quiet),
        "pasted": ({**body, "inpaint_paste_back": True}, quiet),
        # continuation, unclamped: the loud upload comes back with its peaks
        "continued": (
            {
                "prompt": "x",
                "duration": 1.5,
                "seed": 4,
                "steps": 4,
                "continuation": True,
                "inpaint_paste_back": True,
                "clamp": False,
            },
            loud,
        ),
    }
    with server(tmp_path) as client:
        ids = {}
        for name, (request, upload) in requests.items():
            r = client.post(
                "/v1/generate",
                data={"request": json.dumps(request)},
                files={"inpaint_audio": ("a.wav", upload, "audio/wav")},
            )
            assert r.status_code == 202, r.text
            ids[name] = r.json()["id"]
        out = {}
        for name, job_id in ids.items():
            info = wait(client, job_id)
            assert info["status"] == "completed", info
            assert info["request"]["inpaint_paste_back"] is (name != "plain")
            out[name] = fetch(client, job_id)[0]
        # paste-back without regions (or without audio) is refused, naming the field
        r = client.post(
            "/v1/generate",
            data={"request": json.dumps({"prompt": "x", "inpaint_paste_back": True})},
            files={"inpaint_audio": ("a.wav", quiet, "audio/wav")},
        )
        assert error_of(r) == (422, "inpaint_paste_back")
    source = decoded["quiet"]
    start, end, fade = int(0.25 * SR), int(0.5 * SR), int(0.02 * SR)
    pasted, plain = out["pasted"], out["plain"]
    assert pasted.shape == plain.shape == source.shape
    # outside the region: the uploaded samples, bit for bit; without paste-back they went through the autoencoder
    assert np.array_equal(pasted[:start], source[:start]) and np.array_equal(pasted[end:], source[end:])
    assert not np.allclose(plain[:start], source[:start], atol=1e-3)
    # inside, past the 20 ms crossfades: the generated audio, as without paste-back
    inner = slice(start + fade + 1, end - fade - 1)
    assert np.abs(pasted[inner] - plain[inner]).max() < 1e-6
    assert not np.allclose(pasted[start:end], source[start:end], atol=1e-3)
    # continuation: all of the given second is kept exactly (peaks past 1 included), the rest is new
    continued = out["continued"]
    assert continued.shape == (int(1.5 * SR), 2)
    assert np.array_equal(continued[:SR], decoded["loud"]) and np.abs(continued[SR + fade + 1 :]).max() > 0


def test_clamp_dist_shift_and_sample_size_reach_generate(tmp_path: Path) -> None:
    body = {"prompt": "x", "duration": 1.0, "seed": 1, "steps": 4}
    shift = {"type": "flux", "alpha_min": 3.0, "alpha_max": 3.0}
    variants = {
        "default": {},
        "unclamped": {"clamp": False},
        "shifted": {"dist_shift": shift},
        "capped": {"sample_size": 12 * 4096},
    }
    with server(tmp_path) as client:
        ids = {name: submit(client, **body, **extra) for name, extra in variants.items()}
        out = {}
        for name, job_id in ids.items():
            info = wait(client, job_id)
            assert info["status"] == "completed", info
            for key, value in variants[name].items():
                assert info["request"][key] == value
            out[name] = fetch(client, job_id)[0]
        assert error_of(client.post("/v1/generate", json={**body, "dist_shift": {"type": "flux", "alpha": 2}})) == (
            422,
            "dist_shift",
        )
    # unclamped: the tiny model overshoots [-1, 1] for this seed; clamping it gives the default job's audio
    assert np.abs(out["unclamped"]).max() > 1 >= np.abs(out["default"]).max()
    assert np.array_equal(np.clip(out["unclamped"], -1, 1), out["default"])
    # the shift and the sample cap change the audio, exactly as they do in the Python API
    for name, kwargs in (("shifted", {"dist_shift": shift}), ("capped", {"sample_size": 12 * 4096})):
        assert not np.allclose(out[name], out["default"], atol=1e-3), name
        alone = model().generate("x", duration=1.0, seed=[1], steps=4, **kwargs)[0]
        assert rel_err(torch.from_numpy(out[name].T.copy()), alone) < 1e-3, name


def test_default_duration_is_the_models(tmp_path: Path) -> None:
    m = model()
    with server(tmp_path, run_workers=False) as client:
        (info,) = client.get("/v1/models").json()
        assert info["default_duration"] == pytest.approx(m.default_duration, abs=1e-3)
        assert info["max_sample_size"] == m.components.max_samples and info["loras"] == []
        job = client.get(f"/v1/jobs/{submit(client, prompt='x')}").json()
        assert job["durations"] == [m.default_duration]
        # a config's own default_duration (as the demo model has) is what a request without duration gets
        m.model_config["default_duration"] = 0.75
        try:
            assert client.get("/v1/models").json()[0]["default_duration"] == 0.75
            job = client.get(f"/v1/jobs/{submit(client, prompt='x', batch_size=2)}").json()
            assert job["durations"] == [0.75, 0.75]
        finally:
            del m.model_config["default_duration"]


def lora_files() -> dict[str, str]:
    folder = fixture_dir("tiny-small") / "lora"
    return {"a": str(folder / "lora_a.safetensors"), "b": str(folder / "lora_b_dora.safetensors")}


def test_loras_by_name_strengths_and_removal(tmp_path: Path) -> None:
    m = model()
    body = {"prompt": "x", "duration": 1.0, "seed": 5, "steps": 4}

    def run(client, **extra) -> np.ndarray:
        info = wait(client, submit(client, **body, **extra))
        assert info["status"] == "completed", info
        return fetch(client, info["id"])[0]

    with server(tmp_path, loras=lora_files()) as client:
        assert client.get("/v1/models").json()[0]["loras"] == ["a", "b"]
        base = run(client)
        full = run(client, loras=[{"name": "a", "strength": 1.0}])
        assert not np.allclose(full, base, atol=1e-4)
        loaded = list(m.loras.files)
        assert [f.path.name for f in loaded] == ["lora_a.safetensors"]
        half = run(client, loras=[{"name": "a", "strength": 0.5}])
        assert not np.allclose(half, base, atol=1e-4) and not np.allclose(half, full, atol=1e-4)
        assert all(a is b for a, b in zip(m.loras.files, loaded, strict=True))  # a new strength: no reload
        assert np.array_equal(run(client), base)  # the same job without LoRA: the LoRA is fully removed
        assert len(m.loras) == 0
        stacked = run(client, loras=[{"name": "a"}, {"name": "b", "strength": 0.5}])
        assert not np.allclose(stacked, full, atol=1e-4)
        assert m.loras.strengths == [1.0, 0.5]
        refused = [
            ([{"name": "nope"}], "loras[0].name"),
            ([{"name": "a"}, {"name": "/etc/passwd"}], "loras[1].name"),
            ([{"name": "a", "strength": "high"}], "loras[0].strength"),
            ([{"name": "a", "path": lora_files()["a"]}], "loras[0].path"),  # callers never give paths
            ([{"name": "a"}] * 9, "loras"),
        ]
        for loras, field in refused:
            assert error_of(client.post("/v1/generate", json={**body, "loras": loras})) == (422, field), loras
    assert len(m.loras) == 0  # a stopped server hands its model back without LoRA
    m.load_lora([lora_files()["a"]])
    try:
        alone = m.generate("x", duration=1.0, seed=[5], steps=4)[0]
    finally:
        m.unload_lora()
    assert rel_err(torch.from_numpy(full.T.copy()), alone) < 1e-3


def test_new_controls_persist_across_a_restart_and_split_batches(tmp_path: Path) -> None:
    body = {"prompt": "x", "duration": 1.0, "steps": 4}
    extra = {
        "loras": [{"name": "a", "strength": 0.7}],
        "dist_shift": {"type": "logsnr", "rate": 0.5},
        "clamp": False,
        "sample_size": 12 * 4096,
    }
    with server(tmp_path, run_workers=False, loras=lora_files()) as client:
        ids = [
            submit(client, **body, seed=7),
            submit(client, **body, **extra, seed=7),
            submit(client, **body, seed=8),
            submit(client, **body, loras=[{"name": "a", "strength": 0.3}], seed=9),
        ]
    with server(tmp_path, loras=lora_files(), max_batch=4) as client:
        infos = [wait(client, i) for i in ids]
        assert [i["status"] for i in infos] == ["completed"] * 4, infos
        assert infos[0]["batch"]["id"] == infos[2]["batch"]["id"] and infos[0]["batch"]["jobs"] == 2
        assert infos[1]["batch"]["jobs"] == infos[3]["batch"]["jobs"] == 1  # other LoRA settings: never merged
        assert {k: infos[1]["request"][k] for k in extra} == extra
        audio = fetch(client, ids[1])[0]
    m = model()
    assert len(m.loras) == 0
    m.load_lora([lora_files()["a"]])
    try:
        m.set_lora_strength(0.7, lora_index=0)
        kwargs = {k: v for k, v in extra.items() if k != "loras"}
        alone = m.generate("x", duration=1.0, seed=[7], steps=4, **kwargs)[0]
    finally:
        m.unload_lora()
    assert rel_err(torch.from_numpy(audio.T.copy()), alone) < 1e-3


def test_lora_files_are_checked_at_start(tmp_path: Path) -> None:
    wrong = fixture_dir("tiny-medium") / "lora" / "lora_a.safetensors"  # another model's LoRA: other shapes
    for loras, message in (
        ({"x": str(tmp_path / "missing.safetensors")}, "file not found"),
        ({"x": str(wrong)}, "cannot be used with any model served"),
    ):
        app = create_app(ServerConfig(data_dir=tmp_path / "data", loras=loras), models={"tiny": model()})
        with pytest.raises(ValueError, match=message):
            app.state.server.check_loras()
        assert len(model().loras) == 0
    with pytest.raises(SystemExit, match="--lora x=/nonexistent/x.safetensors: file not found"):
        main(["--lora", "x=/nonexistent/x.safetensors"])
    with pytest.raises(ValueError, match="LoRA name"):
        ServerConfig(loras={"a b": "/x"})


# -- cancel and timeout -----------------------------------------------------------------------------
def test_cancel_queued_and_running_jobs(tmp_path: Path) -> None:
    with server(tmp_path, run_workers=False) as client:
        job = submit(client, prompt="x", duration=1.0)
        r = client.delete(f"/v1/jobs/{job}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        assert error_of(client.get(f"/v1/jobs/{job}/audio")) == (409, None)
    with server(tmp_path) as client:
        long = submit(client, prompt="x", duration=4.0, steps=1000)
        end = time.monotonic() + 20
        while client.get(f"/v1/jobs/{long}").json()["step"] < 2 and time.monotonic() < end:
            time.sleep(0.01)
        r = client.delete(f"/v1/jobs/{long}")
        assert r.status_code == 200 and r.json()["cancel_requested"] is True
        info = wait(client, long)
        assert info["status"] == "cancelled" and 2 <= info["step"] < 1000
        assert client.get("/healthz").json()["status"] == "ok"
        # shutting down stops a running job at its next step and puts it back in the queue
        long = submit(client, prompt="x", duration=4.0, steps=1000)
        wait(client, long, until=("running",))
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 5
    with server(tmp_path, run_workers=False) as client:
        info = client.get(f"/v1/jobs/{long}").json()
        assert info["status"] == "queued" and info["attempts"] == 1 and info["worker"] is None


def test_job_timeout_stops_a_running_job(tmp_path: Path) -> None:
    with server(tmp_path, job_timeout_s=0.3) as client:
        info = wait(client, submit(client, prompt="x", duration=4.0, steps=1000))
        assert info["status"] == "failed" and "timed out" in info["error"] and info["step"] < 1000
        assert wait(client, submit(client, prompt="x", duration=0.5))["status"] == "completed"


# -- refusals ---------------------------------------------------------------------------------------
BAD_JSON = [
    ({}, 422, "prompt"),
    ({"prompt": 3}, 422, "prompt"),
    ({"prompt": "x", "steps": 0}, 422, "steps"),
    ({"prompt": "x", "steps": "many"}, 422, "steps"),
    ({"prompt": "x", "steps": "8"}, 422, "steps"),
    ({"prompt": "x", "steps": 8.5}, 422, "steps"),
    ({"prompt": "x", "duration": True}, 422, "duration"),
    ({"prompt": "x", "duration": 1e6}, 422, "duration"),
    ({"prompt": "x", "duration": -1}, 422, "duration"),
    ({"prompt": "x", "duration": 100, "batch_size": 2}, 422, "duration"),  # duration x items > 150 s
    ({"prompt": "x", "bogus": 1}, 422, "bogus"),
    ({"prompt": "x", "sampler_type": "magic"}, 422, "sampler_type"),
    ({"prompt": "x", "model": "nope"}, 422, "model"),
    ({"prompt": ["a", "b"], "batch_size": 3}, 422, "prompt"),
    ({"prompt": "x", "batch_size": 99}, 422, "batch_size"),
    ({"prompt": "x", "seed": [1, 2]}, 422, "seed"),
    ({"prompt": "x", "seed": -5}, 422, "seed"),
    ({"prompt": "x", "seed": 2**64}, 422, "seed"),
    ({"prompt": "x", "cfg_interval": [0.9, 0.1]}, 422, "cfg_interval"),
    ({"prompt": "x", "apg_scale": 2}, 422, "apg_scale"),
    (
        {"prompt": "x", "inpaint_mask_start_seconds": 0.5, "inpaint_mask_end_seconds": 1.0},
        422,
        "inpaint_mask_start_seconds",
    ),
    ({"prompt": "x", "continuation": True}, 422, "continuation"),
    ({"prompt": "x", "inpaint_paste_back": True}, 422, "inpaint_paste_back"),
    ({"prompt": "x", "clamp": "no"}, 422, "clamp"),
    ({"prompt": "x", "dist_shift": {"type": "magic"}}, 422, "dist_shift"),
    ({"prompt": "x", "dist_shift": {"type": ["full"]}}, 422, "dist_shift"),
    ({"prompt": "x", "dist_shift": {"type": "full", "bogus": 1}}, 422, "dist_shift"),
    ({"prompt": "x", "dist_shift": {"type": "logsnr", "rate": "fast"}}, 422, "dist_shift"),
    ({"prompt": "x", "dist_shift": {"type": "full", "use_sine": 1}}, 422, "dist_shift"),
    ({"prompt": "x", "dist_shift": {"type": "full", "min_length": 256, "max_length": 256}}, 422, "dist_shift"),
    ({"prompt": "x", "dist_shift": [1]}, 422, "dist_shift"),
    ({"prompt": "x", "sample_size": 100}, 422, "sample_size"),  # less than one latent
    ({"prompt": "x", "sample_size": 10**9}, 422, "sample_size"),  # more than the model's maximum
    ({"prompt": "x", "duration": 1.0, "sample_size": 4096}, 422, "sample_size"),  # shorter than the duration
    ({"prompt": "x", "loras": [{"name": "a"}]}, 422, "loras[0].name"),  # this server offers no LoRA
    ({"prompt": "x", "prompt_extra": None}, 422, "prompt_extra"),
    ([1, 2], 422, "body"),
]


def test_bad_requests_get_4xx_json_naming_the_field_and_the_server_lives_on(tmp_path: Path) -> None:
    with server(tmp_path, max_total_seconds=150, max_upload_seconds=10) as client:
        for body, status, field in BAD_JSON:
            assert error_of(client.post("/v1/generate", json=body)) == (status, field), body
        raw = [
            (b"not json", "application/json", 400, "body"),
            (b'{"prompt": "x", "cfg_scale": NaN}', "application/json", 400, "body"),
            (b"prompt=x", "text/plain", 415, None),
        ]
        for content, ctype, status, field in raw:
            r = client.post("/v1/generate", content=content, headers={"content-type": ctype})
            assert error_of(r) == (status, field), content
        ok = json.dumps({"prompt": "x", "duration": 1.0, "init_noise_level": 0.5})
        multipart = [
            ({"request": ok}, {"init_audio": ("a.wav", b"RIFF garbage", "audio/wav")}, 422, "init_audio"),
            ({"request": ok}, {"init_audio": ("a.wav", b"", "audio/wav")}, 422, "init_audio"),
            ({"request": ok}, {"script": ("a.sh", b"rm -rf /", "text/plain")}, 422, "script"),
            ({}, {"init_audio": ("a.wav", wav_bytes(0.5), "audio/wav")}, 422, "request"),
            ({"request": "{"}, {"init_audio": ("a.wav", wav_bytes(0.5), "audio/wav")}, 400, "request"),
            ({"request": ok}, {"init_audio": ("a.wav", wav_bytes(30.0, sr=8000), "audio/wav")}, 422, "init_audio"),
            (
                {"request": json.dumps({"prompt": "x", "duration": 1.0, "inpaint_paste_back": True})},
                {"inpaint_audio": ("a.wav", wav_bytes(0.5), "audio/wav")},
                422,
                "inpaint_paste_back",
            ),
        ]
        for data, files, status, field in multipart:
            assert error_of(client.post("/v1/generate", data=data, files=files)) == (status, field), (data, files)
        job = wait(client, submit(client, prompt="x", duration=0.5, batch_size=2))["id"]
        assert error_of(client.get(f"/v1/jobs/{job}/audio", params={"index": 2})) == (422, "index")
        assert error_of(client.get(f"/v1/jobs/{job}/audio", params={"format": "aiff"})) == (422, "format")
        assert error_of(client.get(f"/v1/jobs/{job}/audio", params={"index": -1})) == (422, "index")
        assert error_of(client.get("/v1/jobs/..%2F..%2Fetc%2Fpasswd"))[0] == 404
        assert error_of(client.get("/v1/jobs/not-a-job-id/audio")) == (404, "job_id")
        assert error_of(client.get("/v1/jobs/" + "0" * 32)) == (404, "job_id")
        assert error_of(client.delete("/v1/jobs/" + "0" * 32)) == (404, "job_id")
        assert client.get("/v1/nothing-here").status_code == 404
        assert client.get("/healthz").json()["status"] == "ok"
        assert wait(client, submit(client, prompt="still alive", duration=0.5))["status"] == "completed"


def test_odd_values_in_every_field_never_give_a_5xx(tmp_path: Path) -> None:
    """A small schema fuzz: each field of the OpenAPI request schema gets values of every JSON type."""
    odd = [None, True, 0, -1, 2**70, 1e308, -1e-9, "", "x" * 5000, [], [None], [1, "a"], {}, {"a": 1}, [0.5, 0.2]]
    with server(tmp_path, run_workers=False, max_queue=10_000) as client:
        schema = client.get("/openapi.json").json()["paths"]["/v1/generate"]["post"]["requestBody"]["content"]
        fields = list(schema["application/json"]["schema"]["properties"])
        assert len(fields) == 24
        for field in fields:
            for value in odd:
                body = {"prompt": "x", "duration": 0.5, field: value}
                r = client.post("/v1/generate", json=body)
                assert r.status_code in (202, 400, 422), (body, r.status_code, r.text)
                if r.status_code != 202:
                    error = r.json()["error"]
                    assert error["field"].split("[")[0] == field or field in error["message"], (body, error)
        assert client.get("/healthz").json()["status"] == "ok"


def test_schemathesis_fuzzing_of_the_openapi_document_finds_no_5xx(tmp_path: Path) -> None:
    """Every operation of /openapi.json, with valid and invalid inputs generated from the schema, against a real
    server whose limits keep the jobs it accepts short (tiny durations, a short queue, a per-job timeout)."""
    try:
        import schemathesis
        from hypothesis import HealthCheck, given, settings
    except ImportError:
        _missing("schemathesis is not installed (pip install -e '.[test]')")
    limits = {
        "max_total_seconds": 240.0,  # the model's 120 s x 2: schema-valid requests get accepted too
        "max_batch": 2,
        "max_queue": 4,
        "job_timeout_s": 2.0,  # so an accepted long job cannot hold the worker
        "max_upload_bytes": 256 * 1024,
        "max_upload_seconds": 2.0,
    }
    with server(tmp_path, **limits) as client:
        base = str(client.base_url).rstrip("/")
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=10)
        operations = [result.ok() for result in schema.get_all_operations()]
        labels = sorted(op.label for op in operations)
        assert labels == sorted(
            [
                "POST /v1/generate",
                "GET /v1/jobs/{job_id}",
                "DELETE /v1/jobs/{job_id}",
                "GET /v1/jobs/{job_id}/audio",
                "GET /v1/models",
                "GET /healthz",
                "GET /metrics",
            ]
        )
        # random job ids only meet 404s: the job endpoints are fuzzed on a real finished job too (deletes last)
        done = wait(client, submit(client, prompt="x", duration=0.5, seed=1))["id"]
        targets = [(op, None) for op in operations] + [
            (op, {"job_id": done}) for op in operations if "{job_id}" in op.path
        ]
        targets.sort(key=lambda target: target[0].method.upper() == "DELETE")
        statuses: dict[str, set[int]] = {}
        for op, path_parameters in targets:
            modes = [schemathesis.GenerationMode.POSITIVE]
            if len(op.query) + len(op.body):  # a free-form string path (job_id) has no invalid value to make
                modes.append(schemathesis.GenerationMode.NEGATIVE)
            for mode in modes:

                @given(case=op.as_strategy(generation_mode=mode, path_parameters=path_parameters))
                @settings(
                    max_examples=30,
                    deadline=None,  # a request may wait behind a running job; the server's limits bound it
                    derandomize=True,  # the same examples on every run: CI stays reproducible
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                def fuzz(case) -> None:
                    response = case.call(base_url=base, timeout=30)
                    statuses.setdefault(case.operation.label, set()).add(response.status_code)
                    assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text)

                fuzz()
        print("\nschemathesis statuses:", {k: sorted(v) for k, v in sorted(statuses.items())})
        assert statuses["POST /v1/generate"] & {400, 413, 415, 422} and 202 in statuses["POST /v1/generate"]
        assert {200, 404} <= statuses["GET /v1/jobs/{job_id}"] and 200 in statuses["GET /v1/jobs/{job_id}/audio"]
        assert {200, 404} <= statuses["DELETE /v1/jobs/{job_id}"]
        assert client.get("/healthz").json()["status"] == "ok"  # and the server lives on


def test_full_queue_gets_429_with_retry_after(tmp_path: Path) -> None:
    with server(tmp_path, run_workers=False, max_queue=2) as client:
        submit(client, prompt="a", duration=0.5)
        submit(client, prompt="b", duration=0.5)
        r = client.post("/v1/generate", json={"prompt": "c", "duration": 0.5})
        assert error_of(r) == (429, None) and r.json()["error"]["type"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 1
        assert 'sa3_requests_refused_total{reason="429"} 1' in client.get("/metrics").text


def test_upload_size_limit_gives_413(tmp_path: Path) -> None:
    with server(tmp_path, max_upload_bytes=10_000) as client:
        r = client.post(
            "/v1/generate",
            data={"request": json.dumps({"prompt": "x", "duration": 1.0})},
            files={"init_audio": ("a.wav", wav_bytes(1.0), "audio/wav")},
        )
        assert error_of(r) == (413, "init_audio")


def test_api_key_is_required_everywhere_but_healthz(tmp_path: Path) -> None:
    with server(tmp_path, api_key="s3cret") as client:
        for path in ("/v1/models", "/metrics", "/openapi.json", "/docs", "/v1/jobs/" + "0" * 32):
            r = client.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/v1/generate", json={"prompt": "x"}).status_code == 401
        assert client.get("/healthz").status_code == 200
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/v1/models", headers=good).status_code == 200
        r = client.post("/v1/generate", json={"prompt": "x", "duration": 0.5}, headers=good)
        assert r.status_code == 202


def test_models_health_metrics_and_openapi(tmp_path: Path) -> None:
    with server(tmp_path) as client:
        (info,) = client.get("/v1/models").json()
        assert info["name"] == "tiny" and info["sample_rate"] == SR and info["device"] == "cpu"
        assert info["max_duration"] == pytest.approx(model().max_duration, abs=1e-3)
        assert (info["default_steps"], info["default_cfg_scale"], info["is_base"]) == (8, 1.0, False)
        assert info["default_duration"] == pytest.approx(model().default_duration, abs=1e-3) and info["loras"] == []
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["workers"] == {"tiny": True}
        wait(client, submit(client, prompt="x", duration=0.5, batch_size=2))
        text = client.get("/metrics").text
        assert 'sa3_jobs_submitted_total{model="tiny"} 1' in text
        assert 'sa3_jobs{model="tiny",status="completed"} 1' in text
        assert 'sa3_batch_items_total{model="tiny"} 2' in text
        assert 'sa3_audio_seconds_total{model="tiny"} 1' in text
        assert 'sa3_worker_up{model="tiny"} 1' in text
        for line in text.splitlines():  # every sample line is "name{labels} number"
            if not line.startswith("#"):
                float(line.rsplit(" ", 1)[1])
        spec = client.get("/openapi.json").json()
        body = spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]
        assert set(body) == {"application/json", "multipart/form-data"}
        properties = body["application/json"]["schema"]["properties"]
        assert {"prompt", "inpaint_paste_back", "clamp", "dist_shift", "sample_size", "loras"} <= set(properties)
        assert properties["loras"]["anyOf"][0]["items"]["properties"].keys() == {"name", "strength"}
        assert "$ref" not in json.dumps(body)  # every schema is inline: nothing points outside the document
        assert {"default_duration", "max_sample_size", "loras"} <= set(
            spec["components"]["schemas"]["ModelInfo"]["properties"]
        )
        assert {"/v1/jobs/{job_id}", "/v1/jobs/{job_id}/audio", "/v1/models", "/healthz", "/metrics"} <= set(
            spec["paths"]
        )


def test_serve_command_line_defaults_to_localhost() -> None:
    args = build_parser().parse_args(["--model", "tiny=/models/tiny", "--max-batch", "8", "--api-key", "k"])
    assert args.host == "127.0.0.1"
    config = config_from_args(args)
    assert config.models == ["tiny=/models/tiny"] and config.max_batch == 8 and config.api_key == "k"
    args = build_parser().parse_args(["--lora", "drums=/l/d.safetensors", "--lora", "/l/piano.safetensors"])
    assert config_from_args(args).loras == {"drums": "/l/d.safetensors", "piano": "/l/piano.safetensors"}
    assert config.loras == {}
    with pytest.raises(SystemExit, match="the name 'a' is given twice"):
        main(["--lora", "a=/x.safetensors", "--lora", "a=/y.safetensors"])
    with pytest.raises(ValueError, match="max_queue=0 is invalid"):
        ServerConfig(max_queue=0)
    with pytest.raises(SystemExit, match="the name 'a' is given twice"):
        main(["--model", "a=/x", "--model", "a=/y"])


# -- a real server on a free localhost port, under load ---------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_load_on_a_real_server_every_request_completes_or_gets_429(tmp_path: Path) -> None:
    """200 requests from 16 concurrent clients against uvicorn on 127.0.0.1: none lost or duplicated."""
    config = ServerConfig(data_dir=tmp_path / "data", poll_interval_s=0.05, max_queue=24, max_batch=4)
    with live_server(create_app(config, models={"tiny": model()})) as base:
        accepted, refused, lock = [], [], threading.Lock()
        counter = iter(range(200))

        def client_loop() -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                for i in counter:
                    r = http.post("/v1/generate", json={"prompt": f"p{i % 7}", "duration": 0.5, "steps": 2, "seed": i})
                    with lock:
                        (accepted if r.status_code == 202 else refused).append((i, r))

        t0 = time.monotonic()
        clients = [threading.Thread(target=client_loop) for _ in range(16)]
        for c in clients:
            c.start()
        for c in clients:
            c.join(60)
        submit_s = time.monotonic() - t0
        assert len(accepted) + len(refused) == 200
        assert all(r.status_code == 429 and int(r.headers["retry-after"]) >= 1 for _, r in refused)
        ids = [r.json()["id"] for _, r in accepted]
        assert len(set(ids)) == len(ids)
        with httpx.Client(base_url=base, timeout=30) as http:
            deadline = time.monotonic() + 60
            infos = {}
            while len(infos) < len(ids) and time.monotonic() < deadline:
                for job_id in ids:
                    if job_id not in infos:
                        info = http.get(f"/v1/jobs/{job_id}").json()
                        if info["status"] in ("completed", "failed", "cancelled"):
                            infos[job_id] = info
                time.sleep(0.05)
            total_s = time.monotonic() - t0
            assert len(infos) == len(ids) and all(i["status"] == "completed" for i in infos.values())
            seeds = sorted(i["seeds"][0] for i in infos.values())
            assert seeds == sorted(i for i, _ in accepted)  # each accepted request ran exactly once
            batched = sum(1 for i in infos.values() if i["batch"]["jobs"] > 1)
            assert http.get("/healthz").json()["status"] == "ok"
        print(
            f"\nload: 200 requests / 16 clients: {len(accepted)} completed, {len(refused)} refused (429), "
            f"{batched} ran in shared batches; submit {submit_s:.1f} s, all done {total_s:.1f} s"
        )


def start_server_process(data_dir: Path, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "stable_audio_3.server",
        "--model",
        f"tiny={fixture_dir('tiny-small')}",
        "--device",
        "cpu",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--max-batch",
        "1",
        "--log-level",
        "warning",
    ]
    log_path = data_dir / f"server-{port}-{time.monotonic_ns()}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    end = time.monotonic() + 60
    while time.monotonic() < end:
        assert proc.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server process did not come up in 60 s")


def test_killed_server_process_resumes_its_jobs_after_a_restart(tmp_path: Path) -> None:
    """`python -m stable_audio_3.server`, SIGKILLed with one job running and three queued."""

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server_process(tmp_path, port)
    try:
        long = httpx.post(f"{base}/v1/generate", json={"prompt": "x", "duration": 4.0, "steps": 1000}).json()["id"]
        short = [
            httpx.post(f"{base}/v1/generate", json={"prompt": f"p{i}", "duration": 0.5, "seed": i}).json()["id"]
            for i in range(3)
        ]
        end = time.monotonic() + 30
        while httpx.get(f"{base}/v1/jobs/{long}").json()["step"] < 2 and time.monotonic() < end:
            time.sleep(0.05)
        assert httpx.get(f"{base}/v1/jobs/{short[0]}").json()["status"] == "queued"
    finally:
        proc.kill()
        proc.wait(10)
    proc = start_server_process(tmp_path, port)
    try:
        assert httpx.delete(f"{base}/v1/jobs/{long}").status_code == 200  # no need to wait for 1000 steps
        end = time.monotonic() + 60
        while time.monotonic() < end:
            infos = [httpx.get(f"{base}/v1/jobs/{i}").json() for i in [long, *short]]
            if all(i["status"] in ("completed", "failed", "cancelled") for i in infos):
                break
            time.sleep(0.1)
        assert [i["status"] for i in infos] == ["cancelled", "completed", "completed", "completed"], infos
        assert infos[0]["attempts"] == 2  # it was running when the first process died
    finally:
        proc.terminate()
        proc.wait(20)


# -- Ray Serve ---------------------------------------------------------------------------------------
def need_ray_serve() -> None:
    """Ray is big (see README): outside CI the Ray tests skip without it; in CI (CI or SA3_REQUIRE_RAY) they fail."""
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        _missing("ray[serve] is not installed (pip install -e '.[ray]')", strict_env="SA3_REQUIRE_RAY")


def test_ray_deployment_builds_without_starting_ray(tmp_path: Path) -> None:
    need_ray_serve()
    from stable_audio_3.server.ray import build_app, deployment_class

    app = build_app(models=[str(fixture_dir("tiny-small"))], data_dir=tmp_path, num_replicas=2, num_gpus=0, max_batch=2)
    assert type(app).__name__ == "Application"
    autoscaled = build_app(models=["demo"], data_dir=tmp_path, min_replicas=1, max_replicas=3)
    assert type(autoscaled).__name__ == "Application"
    replica = SimpleNamespace(config=ServerConfig(models=["demo"], data_dir=tmp_path, device="cpu"))
    assert type(deployment_class().__serve_build_asgi_app__(replica)).__name__ == "FastAPI"


def test_ray_serve_two_cpu_replicas_serve_the_same_api(tmp_path: Path) -> None:
    """A local Ray cluster (~25 s) with two CPU replicas sharing one job folder."""
    need_ray_serve()
    import ray
    from ray import serve

    from stable_audio_3.server.ray import build_app

    port = free_port()
    ray.init(address="local", num_cpus=3, include_dashboard=False)  # a new cluster, never a running one
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(
            build_app(
                models=[f"tiny={fixture_dir('tiny-small')}"],
                data_dir=tmp_path,
                num_replicas=2,
                num_gpus=0,
                num_cpus=0.5,
                poll_interval_s=0.05,
            ),
            name="sa3",
            route_prefix="/",
        )
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert [m["name"] for m in http.get("/v1/models").json()] == ["tiny"]
            ids = []
            for i in range(6):
                r = http.post("/v1/generate", json={"prompt": f"p{i}", "duration": 0.5, "seed": i})
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            assert http.post("/v1/generate", json={"prompt": "x", "steps": 0}).json()["error"]["field"] == "steps"
            end = time.monotonic() + 60
            infos = {}
            while len(infos) < len(ids) and time.monotonic() < end:
                for job_id in ids:
                    info = http.get(f"/v1/jobs/{job_id}").json()
                    if info["status"] == "completed":
                        infos[job_id] = info
                time.sleep(0.1)
            assert len(infos) == len(ids)
            audio, sr = sf.read(io.BytesIO(http.get(f"/v1/jobs/{ids[0]}/audio").content), always_2d=True)
            assert audio.shape == (int(0.5 * SR), 2)
            assert "sa3_worker_up" in http.get("/metrics").text
            assert len({http.get("/healthz").json()["pid"] for _ in range(30)}) == 2  # both replicas answer
            print("\njobs run by", sorted({i["worker"] for i in infos.values()}))
    finally:
        serve.shutdown()
        ray.shutdown()
