"""HTTP API (stable_audio_3.server) on the tiny fixture model: jobs, batching, restarts, limits, refusals."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
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

from stable_audio_3 import StableAudioModel, __version__, output  # noqa: E402
from stable_audio_3.output import decode_record  # noqa: E402
from stable_audio_3.request import FIELDS, LOAD_FIELDS, PYTHON_ONLY, GenerationRequest, OptionError  # noqa: E402
from stable_audio_3.server import ServerConfig, build_parser, create_app, main  # noqa: E402
from stable_audio_3.server.config import config_from_args  # noqa: E402
from stable_audio_3.server.schema import (  # noqa: E402
    JSON_FIELDS,
    GenerateRequest,
    field_bounds,
    field_default,
    generation_fields,
)

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


def mp3_kbps(data: bytes) -> int:
    """The bitrate of an MPEG-1 layer III stream's first frame header (after any ID3v2 tag)."""
    start = 0
    if data[:3] == b"ID3":  # 10-byte header, then a size in four 7-bit bytes
        start = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(data[6:10]))
    while not (data[start] == 0xFF and data[start + 1] & 0xE0 == 0xE0):
        start += 1
    assert (data[start + 1] >> 3) & 3 == 3 and (data[start + 1] >> 1) & 3 == 1, "not MPEG-1 layer III"
    kbps = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
    return kbps[data[start + 2] >> 4]


def error_of(r) -> tuple[int, str | None]:
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return r.status_code, body["error"]["field"]


def refusal(r) -> tuple[int, str | None, str]:
    """(status, field, message) of a refused request."""
    status, field = error_of(r)
    return status, field, r.json()["error"]["message"]


INPAINT_WITHOUT_REGIONS = (
    "inpaint_audio: inpaint_audio needs the regions to regenerate (inpaint_mask_start_seconds / "
    "inpaint_mask_end_seconds, or inpaint_mask) or continuation=True"
)
REGIONS_WITHOUT_AUDIO = (
    "inpaint_mask_start_seconds / inpaint_mask_end_seconds need an 'inpaint_audio' file (multipart upload) "
    "holding the audio to inpaint"
)
PASTE_BACK_WITHOUT_AUDIO = (
    "inpaint_paste_back: inpaint_paste_back=True needs inpaint_audio and the regions to regenerate "
    "(inpaint_mask_start_seconds / inpaint_mask_end_seconds, inpaint_mask, or continuation)"
)


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
        alone = model().generate("lofi house loop", duration=1.5, seed=7)[0]
        assert rel_err(torch.from_numpy(audio.T.copy()), alone) < 1e-3
        # every file says how to make it again (the shared output module's metadata)
        settings = "seed=7 model=tiny steps=8 cfg_scale=1 sampler=pingpong"
        for fmt in ("wav", "flac", "ogg", "mp3"):
            r = client.get(f"/v1/jobs/{info['id']}/audio", params={"format": fmt})
            coded, sr = sf.read(io.BytesIO(r.content), dtype="float32", always_2d=True)
            assert sr == SR and coded.shape[1] == 2
            assert abs(coded.shape[0] - int(1.5 * SR)) < 0.06 * SR, (fmt, coded.shape)  # mp3 adds codec padding
            if fmt != "mp3":  # libsndfile reads no MP3 tags back from memory
                tags = sf.SoundFile(io.BytesIO(r.content)).copy_metadata()
                human, record = tags["comment"].split("\n")
                assert (tags["title"], human) == ("lofi house loop", settings), (fmt, tags)
                record = decode_record(record)  # the job's complete request, the model and the version
                assert (record["model"], record["item"], record["version"]) == ("tiny", 0, __version__)
                assert record["request"]["seed"] == [7] and record["request"]["prompt"] == ["lofi house loop"]
                assert record["load"]["device"] == "cpu" and record["request"]["inpaint_paste_back"] is False
            # a descriptive download name: the prompt, cfg, seed and a digest of every setting
            disposition = r.headers["content-disposition"]
            assert re.fullmatch(rf'attachment; filename="lofi_house_loop\.cfg1\.seed7\.[0-9a-f]{{8}}\.{fmt}"',
                                disposition), disposition
        # MP3 at the shared default of 320 kbps, read from its first frame header
        mp3 = client.get(f"/v1/jobs/{info['id']}/audio", params={"format": "mp3"}).content
        assert mp3_kbps(mp3) == output.DEFAULT_MP3_BITRATE == 320
        # another setting, another name
        r2 = client.post("/v1/generate", json={"prompt": "lofi house loop", "duration": 1.5, "seed": 7, "steps": 4})
        assert wait(client, r2.json()["id"])["status"] == "completed"
        other = client.get(f"/v1/jobs/{r2.json()['id']}/audio").headers["content-disposition"]
        first = client.get(f"/v1/jobs/{info['id']}/audio").headers["content-disposition"]
        assert other != first and other.split(".seed7.")[0] == first.split(".seed7.")[0]
        # a finished job can be deleted with its audio
        assert client.delete(f"/v1/jobs/{info['id']}").json() == {"id": info["id"], "deleted": True}
        assert error_of(client.get(f"/v1/jobs/{info['id']}")) == (404, "job_id")


def test_seeds_follow_the_request_types_rule_and_reproduce(tmp_path: Path) -> None:
    """An int seed is one generator shared by the batch (as the Python API and the reference); a list gives
    each item its own; -1 is drawn in [0, 99999) when the job is queued and reported at once."""
    with server(tmp_path) as client:
        r = client.post("/v1/generate", json={"prompt": ["a", "b"], "duration": 1.0})  # batch 2 from the prompts
        drawn = r.json()["seeds"]
        assert len(drawn) == 2 and drawn[0] == drawn[1] and 0 <= drawn[0] < 99999
        first = wait(client, r.json()["id"])
        assert first["status"] == "completed" and first["num_outputs"] == 2 and len(first["audio_urls"]) == 2
        assert first["seeds"] == drawn and first["request"]["seed"] == drawn[0]
        again = wait(client, submit(client, prompt=["a", "b"], duration=1.0, seed=drawn[0]))
        for i in range(2):
            assert np.array_equal(fetch(client, first["id"], i)[0], fetch(client, again["id"], i)[0])
        # an int seed with batch_size 2: both items report it, and share its generator
        shared = wait(client, submit(client, prompt="a", batch_size=2, duration=0.5, seed=40))
        assert shared["seeds"] == [40, 40] and shared["request"]["seed"] == 40
        items = [torch.from_numpy(fetch(client, shared["id"], i)[0].T.copy()) for i in range(2)]
        alone = model().generate("a", duration=0.5, seed=40, batch_size=2)
        assert all(rel_err(items[i], alone[i]) < 1e-3 for i in range(2))
        assert not torch.allclose(items[0], items[1], atol=1e-3)  # one generator: different noise per item
        tags = sf.SoundFile(io.BytesIO(client.get(f"/v1/jobs/{shared['id']}/audio?index=1").content)).copy_metadata()
        assert tags["comment"].startswith("seed=40 batch_size=2 item=1 model=tiny")
        # a list: each item its own seed (-1 entries drawn), each item equal to a batch-1 run with its seed
        listed = wait(client, submit(client, prompt="a", duration=0.5, seed=[40, -1]))
        assert listed["seeds"][0] == 40 and 0 <= listed["seeds"][1] < 99999
        assert listed["request"]["seed"] == listed["seeds"]
        got = torch.from_numpy(fetch(client, listed["id"], 0)[0].T.copy())
        assert rel_err(got, model().generate("a", duration=0.5, seed=40)[0]) < 1e-3


def test_batching_merges_compatible_jobs_and_each_keeps_its_own_audio(tmp_path: Path) -> None:
    """Jobs queued while no worker runs (a front end, or a server that was down) are taken together."""
    bodies = [
        {"prompt": "lofi house loop", "duration": 1.0, "seed": 3},
        {"prompt": ["rain on a tin roof", "a"], "batch_size": 2, "duration": 1.0, "seed": [11, 12]},
        {"prompt": "cellos", "duration": 1.0, "seed": 5, "steps": 4},  # other steps: runs alone
        {"prompt": "birdsong", "duration": 1.0, "seed": 9},
        # one int seed for 2 items is one shared generator: in a bigger batch it would draw other noise, so alone
        {"prompt": "x", "batch_size": 2, "duration": 1.0, "seed": 21},
    ]
    with server(tmp_path, run_workers=False) as client:
        ids = [submit(client, **b) for b in bodies]
        assert [client.get(f"/v1/jobs/{i}").json()["queue_position"] for i in ids] == [0, 1, 2, 3, 4]
    with server(tmp_path, max_batch=4) as client:
        infos = [wait(client, i) for i in ids]
    assert all(i["status"] == "completed" for i in infos), infos
    merged = [infos[0], infos[1], infos[3]]
    assert len({i["batch"]["id"] for i in merged}) == 1
    assert all(i["batch"]["jobs"] == 3 and i["batch"]["items"] == 4 for i in merged)
    for lone in (infos[2], infos[4]):
        assert lone["batch"]["jobs"] == 1 and lone["batch"]["id"] != infos[0]["batch"]["id"]
    with server(tmp_path) as client:  # finished jobs survive a restart too
        shared = model().generate("x", duration=1.0, seed=21, batch_size=2)
        for i in range(2):
            assert rel_err(torch.from_numpy(fetch(client, ids[4], i)[0].T.copy()), shared[i]) < 1e-3
        for body, info in zip(bodies[:4], infos[:4], strict=True):
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
        "a2a_default": ({"prompt": "x", "duration": 2.0, "seed": 2}, "init_audio", 2.0),  # the type's 0.9
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
            level = {"a2a": 0.5, "a2a_default": 0.9}.get(name, 1.0)  # 1.0: no init audio, the level is unused
            assert info["request"]["init_noise_level"] == level
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
        # inpaint audio without the regions to regenerate (nor continuation) is refused by the request type
        for extra in ({}, {"inpaint_paste_back": True}):
            r = client.post(
                "/v1/generate",
                data={"request": json.dumps({"prompt": "x", **extra})},
                files={"inpaint_audio": ("a.wav", quiet, "audio/wav")},
            )
            assert refusal(r) == (422, "inpaint_audio", INPAINT_WITHOUT_REGIONS), extra
        # and regions or paste-back without inpaint audio
        assert refusal(client.post("/v1/generate", json=body)) == (422, "inpaint_mask_start_seconds",
                                                                    REGIONS_WITHOUT_AUDIO)
        for extra in ({}, regions):
            r = client.post("/v1/generate", json={"prompt": "x", "inpaint_paste_back": True, **extra})
            assert refusal(r) == (422, "inpaint_paste_back", PASTE_BACK_WITHOUT_AUDIO), extra
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
        # the WAV keeps the peaks; a FLAC copy gets one gain down to the shared -0.1 dBFS ceiling, never clipping
        flac = fetch(client, ids["unclamped"], fmt="flac")[0]
        gain = 10 ** (-0.1 / 20) / np.abs(out["unclamped"]).max()
        assert np.abs(flac - out["unclamped"] * gain).max() < 1e-5
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
        assert info["max_sample_size"] == m.defaults.max_samples and info["loras"] == []
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
        # lora_configs: indices count in the request's loras list; LoRA 0 acts only while t is in [0.8, 1]
        configs = [{"lora_index": 0, "interval": [0.8, 1.0], "layer_filter": ""}]
        info = wait(client, submit(client, **body, loras=[{"name": "a"}], lora_configs=configs))
        assert info["status"] == "completed" and info["request"]["lora_configs"] == configs, info
        gated = fetch(client, info["id"])[0]
        assert not np.allclose(gated, full, atol=1e-4) and not np.allclose(gated, base, atol=1e-4)
        refused = [
            ({"loras": [{"name": "nope"}]}, "loras[0].name"),
            ({"loras": [{"name": "a"}, {"name": "/etc/passwd"}]}, "loras[1].name"),
            ({"loras": [{"name": "a", "strength": "high"}]}, "loras[0].strength"),
            ({"loras": [{"name": "a", "path": lora_files()["a"]}]}, "loras[0].path"),  # callers never give paths
            ({"loras": [{"name": "a"}] * 9}, "loras"),
            ({"loras": [{"name": "a"}], "lora_configs": [{"lora_index": 1}]}, "lora_configs[0].lora_index"),
            ({"lora_configs": [{"lora_index": 0}]}, "lora_configs[0].lora_index"),  # no LoRA in the request
            ({"loras": [{"name": "a"}], "lora_configs": [{"lora_index": -1}]}, "lora_configs[0].lora_index"),
            ({"loras": [{"name": "a"}], "lora_configs": [{"lora_index": 0, "interval": [0.9, 0.1]}]},
             "lora_configs[0].interval"),
            ({"loras": [{"name": "a"}], "lora_configs": [{"lora_index": 0, "bogus": 1}]}, "lora_configs[0].bogus"),
        ]
        for extra, field in refused:
            assert error_of(client.post("/v1/generate", json={**body, **extra})) == (422, field), extra
        r = client.post("/v1/generate", json={**body, "loras": [{"name": "a"}], "lora_configs": [{"lora_index": 1}]})
        assert refusal(r)[2] == ("lora_configs[0].lora_index=1 is invalid; this request's loras list has 1 entries "
                                 "(0-based indices)")
    assert len(m.loras) == 0  # a stopped server hands its model back without LoRA
    m.load_lora([lora_files()["a"]])
    try:
        alone = m.generate("x", duration=1.0, seed=[5], steps=4)[0]
        alone_gated = m.generate("x", duration=1.0, seed=[5], steps=4, lora_configs=configs)[0]
    finally:
        m.unload_lora()
    assert rel_err(torch.from_numpy(full.T.copy()), alone) < 1e-3
    assert rel_err(torch.from_numpy(gated.T.copy()), alone_gated) < 1e-3


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


def serve_error(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of `serve` refusing `argv` before it starts anything."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    return code, capsys.readouterr().err


def test_lora_files_are_checked_at_start(tmp_path: Path, capsys) -> None:
    wrong = fixture_dir("tiny-medium") / "lora" / "lora_a.safetensors"  # another model's LoRA: other shapes
    for loras, message in (
        ({"x": str(tmp_path / "missing.safetensors")}, "file not found"),
        ({"x": str(wrong)}, "cannot be used with any model served"),
    ):
        app = create_app(ServerConfig(data_dir=tmp_path / "data", loras=loras), models={"tiny": model()})
        with pytest.raises(ValueError, match=message):
            app.state.server.check_loras()
        assert len(model().loras) == 0
    assert serve_error(["--lora", "x=/nonexistent/x.safetensors"], capsys) == (
        2, "stable-audio serve: error: --lora x=/nonexistent/x.safetensors: file not found\n")
    # a bare name is a LoRA shipped with a served model (the demo, served by default, ships octave-up)
    assert serve_error(["--lora", "octave-down"], capsys) == (
        2, "stable-audio serve: error: --lora octave-down: 'octave-down' is neither a file nor a LoRA shipped with "
        "the served models (shipped: octave-up)\n")
    with pytest.raises(ValueError, match="LoRA name"):
        ServerConfig(loras={"a b": "/x"})


def strongest_hz(audio: np.ndarray, sr: int = 44100) -> float:
    """The strongest spectral peak of (T, C) audio, in Hz."""
    mono = audio.mean(axis=1)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    return float(np.argmax(spectrum) * sr / len(mono))


def test_a_lora_shipped_with_the_model_is_served_by_its_name(tmp_path: Path) -> None:
    """`stable-audio serve --lora octave-up` on the demo model: the file comes from the model's own
    folder, and a request naming it plays "sine wave a4" an octave up; a prompt with words the demo
    does not know is accepted with a warning naming them."""
    args = build_parser().parse_args(["--model", "demo", "--device", "cpu", "--lora", "octave-up"])
    config = config_from_args(args)
    assert config.loras == {"octave-up": "octave-up"}
    config = dataclasses.replace(config, data_dir=tmp_path / "data", poll_interval_s=0.05)
    app = create_app(config)  # loads the demo model itself, as `serve` does
    body = {"prompt": "sine wave a4", "duration": 2.0, "seed": 3}
    with live_server(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        demo = app.state.server.models["demo"]
        assert client.get("/v1/models").json()[0]["loras"] == ["octave-up"]
        plain = wait(client, submit(client, **body))
        shifted = wait(client, submit(client, **body, loras=[{"name": "octave-up", "strength": 1.0}]))
        assert plain["status"] == shifted["status"] == "completed", (plain, shifted)
        assert plain["warnings"] == []
        plain_audio, shifted_audio = fetch(client, plain["id"])[0], fetch(client, shifted["id"])[0]
        typo = client.post("/v1/generate", json={"prompt": "whte noise", "duration": 1.0, "steps": 1})
        assert typo.status_code == 202
        (warning,) = typo.json()["warnings"]
        assert warning.startswith("prompt 'whte noise': ") and "'whte' (nearest known: white" in warning
        assert client.get(typo.json()["url"]).json()["warnings"] == [warning]
        # inpainting without a paste-back choice gets the demo card's recommendation (on); a choice is kept
        inpaint = {"prompt": "sine wave a4", "duration": 1.0, "steps": 2, "inpaint_mask_start_seconds": 0.25,
                   "inpaint_mask_end_seconds": 0.5}
        for extra, expected in (({}, True), ({"inpaint_paste_back": False}, False)):
            r = client.post("/v1/generate", data={"request": json.dumps({**inpaint, **extra})},
                            files={"inpaint_audio": ("a.wav", noise_wav(1.0, 0.2), "audio/wav")})
            assert r.status_code == 202, r.text
            assert client.get(r.json()["url"]).json()["request"]["inpaint_paste_back"] is expected
        shifted_file = tmp_path / "shifted.wav"
        shifted_file.write_bytes(client.get(f"/v1/jobs/{shifted['id']}/audio").content)
    assert abs(strongest_hz(plain_audio) - 440) < 440 * 0.03
    assert abs(strongest_hz(shifted_audio) - 880) < 880 * 0.03
    assert len(demo.loras) == 0
    demo.load_lora("octave-up")
    try:
        alone = demo.generate("sine wave a4", duration=2.0, seed=3)[0]
    finally:
        demo.unload_lora()
    assert rel_err(torch.from_numpy(shifted_audio.T.copy()), alone) < 1e-3
    # the file's metadata names the LoRA and its strength; the command line makes the same audio from it
    assert decode_record(sf.SoundFile(str(shifted_file)).copy_metadata()["comment"])["loras"] == [
        {"name": "octave-up", "strength": 1.0}]
    from stable_audio_3 import cli

    assert cli.main(["-q", "--from-metadata", str(shifted_file), "-o", str(tmp_path / "again.wav")]) == 0
    assert np.array_equal(sf.read(tmp_path / "again.wav", dtype="float32")[0], shifted_audio)


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
TYPE = "the request type's own refusal"  # the message GenerationRequest gives for the same values
BAD_JSON = [
    ({}, 422, "prompt", TYPE),
    ({"prompt": 3}, 422, "prompt", "prompt: Input should be a valid string"),
    ({"prompt": "x", "steps": 0}, 422, "steps", TYPE),
    ({"prompt": "x", "steps": 1001}, 422, "steps", TYPE),  # the type's own cap
    ({"prompt": "x", "steps": "many"}, 422, "steps", "steps: Input should be a valid integer"),
    ({"prompt": "x", "steps": "8"}, 422, "steps", "steps: Input should be a valid integer"),
    ({"prompt": "x", "steps": 8.5}, 422, "steps", "steps: Input should be a valid integer"),
    ({"prompt": "x", "duration": True}, 422, "duration", "duration: Input should be a valid number"),
    ({"prompt": "x", "duration": 1e6}, 422, "duration", TYPE),
    ({"prompt": "x", "duration": -1}, 422, "duration", TYPE),
    ({"prompt": "x", "duration": 100, "batch_size": 2}, 422, "duration",  # duration x items > 150 s
     "duration x batch_size = 200 s is too much; this server allows at most 150 s per request"),
    ({"prompt": "x", "bogus": 1}, 422, "bogus", "bogus: Extra inputs are not permitted"),
    ({"prompt": "x", "sampler_type": "magic"}, 422, "sampler_type",
     "sampler_type: Input should be 'pingpong', 'euler', 'rk4' or 'dpmpp'"),
    ({"prompt": "x", "model": "nope"}, 422, "model", "model='nope' is not served here; available: tiny"),
    ({"prompt": ["a", "b"], "batch_size": 3}, 422, "prompt", TYPE),
    ({"prompt": "x", "batch_size": 99}, 422, "batch_size", TYPE),
    ({"prompt": "x", "batch_size": 5}, 422, "batch_size",
     "batch_size=5 is too large; this server allows at most 4 items per request"),
    ({"prompt": "x", "seed": [1, 2], "batch_size": 3}, 422, "seed", TYPE),
    ({"prompt": "x", "seed": -5}, 422, "seed", TYPE),
    ({"prompt": "x", "seed": 2**64}, 422, "seed", TYPE),
    ({"prompt": "x", "cfg_interval": [0.9, 0.1]}, 422, "cfg_interval", TYPE),
    ({"prompt": "x", "apg_scale": 2}, 422, "apg_scale", TYPE),
    ({"prompt": "x", "init_noise_level": 1.5}, 422, "init_noise_level", TYPE),
    ({"prompt": "x", "inpaint_mask_start_seconds": 0.5, "inpaint_mask_end_seconds": 1.0}, 422,
     "inpaint_mask_start_seconds", REGIONS_WITHOUT_AUDIO),
    ({"prompt": "x", "inpaint_mask_start_seconds": 0.5}, 422, "inpaint_mask_start_seconds", TYPE),
    ({"prompt": "x", "continuation": True}, 422, "continuation", TYPE),
    ({"prompt": "x", "inpaint_paste_back": True}, 422, "inpaint_paste_back", PASTE_BACK_WITHOUT_AUDIO),
    ({"prompt": "x", "clamp": "no"}, 422, "clamp", "clamp: Input should be a valid boolean"),
    ({"prompt": "x", "dist_shift": {"type": "magic"}}, 422, "dist_shift",
     "dist_shift: distribution shift type 'magic' is unknown; allowed: 'logsnr', 'full', 'flux', 'none'"),
    ({"prompt": "x", "dist_shift": {"type": ["full"]}}, 422, "dist_shift",
     "dist_shift.type=['full'] is invalid; a type name is required"),
    ({"prompt": "x", "dist_shift": {"type": "full", "bogus": 1}}, 422, "dist_shift",
     "dist_shift: distribution shift options {'type': 'full', 'bogus': 1} are invalid for type 'full': "
     "FullShift.__init__() got an unexpected keyword argument 'bogus'"),
    ({"prompt": "x", "dist_shift": {"type": "logsnr", "rate": "fast"}}, 422, "dist_shift",
     "dist_shift.rate='fast' is invalid; a finite number is required"),
    ({"prompt": "x", "dist_shift": {"type": "full", "use_sine": 1}}, 422, "dist_shift",
     "dist_shift.use_sine=1 is invalid; true or false is required"),
    ({"prompt": "x", "dist_shift": {"type": "full", "min_length": 256, "max_length": 256}}, 422, "dist_shift",
     "dist_shift: these options give a schedule with NaN or infinite steps"),
    ({"prompt": "x", "dist_shift": [1]}, 422, "dist_shift", "dist_shift: Input should be an object"),
    ({"prompt": "x", "sample_size": 100}, 422, "sample_size",  # less than one latent
     "sample_size=100 is invalid; model 'tiny' allows 4096 (one latent) to 5292032 audio samples"),
    ({"prompt": "x", "sample_size": 10**9}, 422, "sample_size",  # more than the model's maximum
     "sample_size=1000000000 is invalid; model 'tiny' allows 4096 (one latent) to 5292032 audio samples"),
    ({"prompt": "x", "duration": 1.0, "sample_size": 4096}, 422, "duration", TYPE),  # longer than the cap
    ({"prompt": "x", "loras": [{"name": "a"}]}, 422, "loras[0].name",  # this server offers no LoRA
     "LoRA 'a' is not offered for model 'tiny'; available: none (the server was started without --lora)"),
    ({"prompt": "x", "prompt_extra": None}, 422, "prompt_extra", "prompt_extra: Extra inputs are not permitted"),
    ([1, 2], 422, "body", "body: a JSON object is required"),
]


def type_refusal(body: dict) -> tuple[str, str]:
    """How the request type refuses these JSON values (after the JSON schema's typing): (field, message)."""
    req = GenerateRequest.model_validate(body)
    values = {name: getattr(req, name) for name in generation_fields()}
    with pytest.raises(OptionError) as e:
        GenerationRequest(**values).resolve(model().defaults)
    return e.value.field, e.value.spelled(e.value.field)


def test_bad_requests_get_4xx_json_naming_the_field_and_the_server_lives_on(tmp_path: Path) -> None:
    with server(tmp_path, max_total_seconds=150, max_upload_seconds=10) as client:
        for body, status, field, message in BAD_JSON:
            if message == TYPE:
                assert type_refusal(body)[0] == field, body
                message = type_refusal(body)[1]
            assert refusal(client.post("/v1/generate", json=body)) == (status, field, message), body
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
                "inpaint_audio",
            ),
            (  # a region that starts after the output: refused up front, as on every surface
                {"request": json.dumps({"prompt": "x", "duration": 1.0, "inpaint_mask_start_seconds": 1.5,
                                        "inpaint_mask_end_seconds": 2.0})},
                {"inpaint_audio": ("a.wav", wav_bytes(1.0), "audio/wav")},
                422,
                "inpaint_mask_start_seconds",
            ),
            (  # continuing audio that is already longer than the duration
                {"request": json.dumps({"prompt": "x", "duration": 0.5, "continuation": True})},
                {"inpaint_audio": ("a.wav", wav_bytes(1.0), "audio/wav")},
                422,
                "duration",
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
        fields = list(client.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]["properties"])
        assert fields == ["model", *JSON_FIELDS, "loras"] and len(fields) == 25
        for field in fields:
            for value in odd:
                body = {"prompt": "x", "duration": 0.5, field: value}
                r = client.post("/v1/generate", json=body)
                assert r.status_code in (202, 400, 422), (body, r.status_code, r.text)
                if r.status_code != 202:
                    error = r.json()["error"]
                    named = error["field"].split("[")[0] == field or field in error["message"]
                    # the request type counts an empty per-item list as batch_size=0 and names batch_size
                    empty_per_item = value == [] and field in ("duration", "seed") and error["field"] == "batch_size"
                    assert named or empty_per_item, (body, error)
        assert client.get("/healthz").json()["status"] == "ok"


def test_schemathesis_fuzzing_of_the_openapi_document_finds_no_5xx(tmp_path: Path) -> None:
    """Every operation of /openapi.json, with valid and invalid inputs generated from the schema, against a real
    server whose limits keep the jobs it accepts short (tiny durations, a short queue, a per-job timeout). The
    server has a key; every generated case is also sent the way a page of another site, a rebound name and a
    caller without the key would send it, and each of those is refused whatever the rest of the request."""
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
        "max_upload_values": 200_000,
        "api_key": "fuzz-key",
    }
    key = {"Authorization": "Bearer fuzz-key"}
    refused = [({**key, "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}, 403),
               ({**key, "Host": "attacker.example"}, 400), ({"Sec-Fetch-Site": "same-site"}, 403)]
    import requests

    keyed = requests.Session()
    keyed.headers.update(key)
    with server(tmp_path, **limits) as client:
        client.headers.update(key)
        base = str(client.base_url).rstrip("/")
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json", timeout=10, headers=key)
        operations = [result.ok() for result in schema.get_all_operations()]
        labels = sorted(op.label for op in operations)
        assert labels == sorted(
            [
                "POST /v1/generate",
                "GET /v1/jobs/{job_id}",
                "DELETE /v1/jobs/{job_id}",
                "GET /v1/jobs/{job_id}/audio",
                "POST /v1/long",
                "GET /v1/jobs/{job_id}/stream",
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
                    response = case.call(base_url=base, timeout=30, session=keyed)
                    statuses.setdefault(case.operation.label, set()).add(response.status_code)
                    assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text)
                    for headers, status in refused:
                        other = case.call(base_url=base, timeout=30, headers=headers)
                        assert other.status_code == status, (case.as_curl_command(), headers, other.text)
                    no_key = case.call(base_url=base, timeout=30)
                    expected = {200} if case.operation.path == "/healthz" else {401}
                    assert no_key.status_code in expected, (case.as_curl_command(), no_key.text)

                fuzz()
        print("\nschemathesis statuses:", {k: sorted(v) for k, v in sorted(statuses.items())})
        # refusals for the right reasons; whether one of the 30 positive examples happens to be acceptable
        # under the strict schema depends on which examples hypothesis draws (acceptance is the `done` job's)
        assert statuses["POST /v1/generate"] & {400, 413, 415, 422} and statuses["POST /v1/generate"] <= {
            202, 400, 401, 404, 409, 413, 415, 422, 429}
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
        for path in ("/v1/models", "/metrics", "/openapi.json", "/v1/jobs/" + "0" * 32):
            r = client.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.post("/v1/generate", json={"prompt": "x"}).status_code == 401
        assert client.get("/healthz").json() == {"status": "ok"}  # nothing more without the key
        assert client.get("/docs").status_code == 200  # the page holds no secret; it asks for the key
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/healthz", headers=good).json()["models"] == ["tiny"]
        assert client.get("/v1/models", headers=good).status_code == 200
        r = client.post("/v1/generate", json={"prompt": "x", "duration": 0.5}, headers=good)
        assert r.status_code == 202


def test_models_health_metrics_and_openapi(tmp_path: Path) -> None:
    with server(tmp_path) as client:
        (info,) = client.get("/v1/models").json()
        assert info["name"] == "tiny" and info["sample_rate"] == SR and info["device"] == "cpu"
        assert info["max_duration"] == pytest.approx(model().max_duration, abs=1e-3)
        assert (info["default_steps"], info["default_cfg_scale"], info["is_base"]) == (8, 1.0, False)
        assert info["default_sampler"] == "pingpong" and info["max_sample_size"] == model().defaults.max_samples
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
        assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/GenerateRequest"}
        properties = spec["components"]["schemas"]["GenerateRequest"]["properties"]
        assert properties["loras"]["anyOf"][0]["items"]["properties"].keys() == {"name", "strength"}
        configs = properties["lora_configs"]["anyOf"][0]["items"]["properties"]
        assert configs.keys() == {"lora_index", "interval", "layer_filter"}
        # the audio inputs are the multipart file fields, documented with the type's help
        form = body["multipart/form-data"]["schema"]["properties"]
        assert form["request"]["type"] == "string" and set(form) == {"request", "init_audio", "inpaint_audio"}
        for name in ("init_audio", "inpaint_audio"):
            assert form[name] == {"type": "string", "format": "binary", "description": FIELDS[name].metadata["help"]}
        # every reference points inside the document
        refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(spec))
        assert refs and all(r.startswith("#/components/schemas/") and r.split("/")[-1] in spec["components"]["schemas"]
                            for r in refs)
        assert {"default_duration", "max_sample_size", "loras"} <= set(
            spec["components"]["schemas"]["ModelInfo"]["properties"]
        )
        assert {"/v1/jobs/{job_id}", "/v1/jobs/{job_id}/audio", "/v1/models", "/healthz", "/metrics"} <= set(
            spec["paths"]
        )


def test_the_openapi_schema_carries_the_request_types_defaults_bounds_and_help(tmp_path: Path) -> None:
    """GenerateRequest is made from GenerationRequest: every JSON field has the type's default, bounds, choices
    and help, and the type's checks (not a copy of them) refuse what is out of bounds."""
    with server(tmp_path, run_workers=False) as client:
        spec = client.get("/openapi.json").json()
    properties = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    assert spec["components"]["schemas"]["GenerateRequest"]["required"] == ["prompt"]
    assert set(generation_fields()) == set(JSON_FIELDS) == set(FIELDS) - PYTHON_ONLY - {"init_audio", "inpaint_audio"}
    for name in JSON_FIELDS:
        meta, prop = FIELDS[name].metadata, properties[name]
        default = field_default(FIELDS[name])
        assert prop["default"] == (list(default) if isinstance(default, tuple) else default), name
        assert generation_fields()[name].default == default, name
        for key in ("minimum", "maximum", "exclusiveMinimum"):
            assert prop.get(key) == field_bounds(meta).get(key), (name, key)
        if meta["low"] is not None:
            assert prop["exclusiveMinimum" if meta["low_open"] else "minimum"] == meta["low"], name
        if meta["high"] is not None:
            assert prop["maximum"] == meta["high"], name
        if meta["integer"]:
            assert all(isinstance(prop[k], int) for k in ("minimum", "maximum", "exclusiveMinimum") if k in prop)
        if meta["choices"]:
            assert prop["anyOf"][0]["enum"] == list(meta["choices"]), name
        help_for_json = meta["help"].replace("None", "null").replace("True", "true").replace("False", "false")
        assert prop["description"] == help_for_json, name
    # the type's new caps are the schema's: steps <= 1000, batch_size <= 64; init_noise_level follows the type
    assert properties["steps"]["maximum"] == 1000 and properties["batch_size"]["maximum"] == 64
    assert properties["init_noise_level"]["default"] is None and "0 = keep it, 1 = pure noise" in (
        properties["init_noise_level"]["description"])
    assert properties["duration"]["anyOf"][1]["items"]["exclusiveMinimum"] == 0  # per-item lists: on each item


def test_serve_command_line_defaults_to_localhost(capsys) -> None:
    args = build_parser().parse_args(["--model", "tiny=/models/tiny", "--max-batch", "8", "--api-key", "k"])
    assert args.host == "127.0.0.1"
    config = config_from_args(args)
    assert config.models == ["tiny=/models/tiny"] and config.max_batch == 8 and config.api_key == "k"
    args = build_parser().parse_args(["--lora", "drums=/l/d.safetensors", "--lora", "/l/piano.safetensors"])
    assert config_from_args(args).loras == {"drums": "/l/d.safetensors", "piano": "/l/piano.safetensors"}
    assert config.loras == {}
    assert serve_error(["--lora", "a=/x.safetensors", "--lora", "a=/y.safetensors"], capsys) == (
        2, "stable-audio serve: error: --lora: the name 'a' is given twice\n")
    with pytest.raises(ValueError, match="max_queue=0 is invalid"):
        ServerConfig(max_queue=0)
    assert serve_error(["--model", "a=/x", "--model", "a=/y"], capsys) == (
        2, "stable-audio serve: error: --model: the name 'a' is given twice; name them with NAME=...\n")
    # the model load options are the CLI's: one flag per LoadOptions field, with its default and choices
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    for name, f in LOAD_FIELDS.items():
        action = actions[name]
        assert action.option_strings == ["--" + name.replace("_", "-")] and action.default == f.default, name
        assert action.choices == f.metadata["choices"], name
    args = parser.parse_args(["--device", "cpu", "--attention-padding", "zero-values", "--precision", "int8",
                              "--compile"])
    config = config_from_args(args)
    assert (config.device, config.dtype, config.attention_padding, config.precision, config.compile) == (
        "cpu", None, "zero-values", "int8", True)
    assert config.load_options().kwargs() == {"device": "cpu", "dtype": None, "attention_padding": "zero-values",
                                              "precision": "int8", "compile": True}
    for argv in (["--dtype", "float64"], ["--attention-padding", "none"], ["--precision", "int4"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    with pytest.raises(ValueError, match="runs on the CPU only"):
        ServerConfig(device="cuda", precision="int8")


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
