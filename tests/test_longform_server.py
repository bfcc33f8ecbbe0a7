"""Long-form jobs on the HTTP server (stable_audio_3.server.longform) with the shipped demo model: POST /v1/long,
the job's plan and progress in its status, GET /v1/jobs/{id}/stream while it runs, refusals, cancelling.

A real uvicorn server in a thread (chunked transfer needs a real connection: the test client buffers whole
bodies). Pieces run at 8 steps, cfg 1: the demo card's continuation settings (see test_longform.py)."""

from __future__ import annotations

import io
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

for _package in ("fastapi", "uvicorn", "httpx"):
    try:
        __import__(_package)
    except ImportError:
        if os.environ.get("CI") or os.environ.get("SA3_REQUIRE_SERVER"):
            pytest.fail(f"CI needs {_package}", pytrace=False)
        pytest.skip(f"{_package} is not installed (pip install -e '.[server,test]')", allow_module_level=True)
import httpx  # noqa: E402
import soundfile as sf  # noqa: E402
from test_server import live_server  # noqa: E402  (one way to run a live server)

from stable_audio_3 import StableAudioModel  # noqa: E402
from stable_audio_3.longform import LONG_FIELDS, generate_long  # noqa: E402
from stable_audio_3.server import ServerConfig, create_app  # noqa: E402
from stable_audio_3.server.jobs import STREAM_FILE  # noqa: E402
from stable_audio_3.server.longform import LongRequest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "stable_audio_3" / "assets" / "demo"
SR = 44100
FAST = {"steps": 8, "cfg_scale": 1.0}  # the demo card's continuation settings
HEADER = 44  # a stream's WAV header: RIFF, fmt (16 bytes), data


@pytest.fixture(scope="module")
def model() -> StableAudioModel:
    torch.set_num_threads(2)
    return StableAudioModel.from_pretrained(DEMO, device="cpu")


@pytest.fixture(scope="module")
def client(model, tmp_path_factory) -> Iterator[httpx.Client]:
    config = ServerConfig(data_dir=tmp_path_factory.mktemp("long-server"), poll_interval_s=0.05, max_total_seconds=60)
    app = create_app(config, models={"demo": model})
    with live_server(app) as base, httpx.Client(base_url=base, timeout=60) as c:
        c.app = app
        yield c


def submit(client: httpx.Client, **body) -> dict:
    r = client.post("/v1/long", json=body)
    assert r.status_code == 202, r.text
    return r.json()


def wait(client: httpx.Client, job_id: str, timeout: float = 300.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = client.get(f"/v1/jobs/{job_id}").json()
        if info["status"] in ("completed", "failed", "cancelled"):
            return info
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {info}")


def stored_audio(client: httpx.Client, job_id: str) -> np.ndarray:
    r = client.get(f"/v1/jobs/{job_id}/audio")
    assert r.status_code == 200, r.text
    audio, sr = sf.read(io.BytesIO(r.content), dtype="float32")
    assert sr == SR
    return audio


def read_header(data: bytes) -> tuple[int, int, int, int]:
    """(format tag, channels, sample rate, bits) of a stream's header, which says "length unknown"."""
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt " and data[36:40] == b"data"
    assert struct.unpack("<I", data[4:8])[0] == 0xFFFFFFFF and struct.unpack("<I", data[40:44])[0] == 0xFFFFFFFF
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[20:36])
    return tag, channels, rate, bits


# -- the acceptance: a 20 s piece heard while it is made ------------------------------------------------


def test_a_20_second_job_streams_before_it_completes_and_the_stream_is_the_stored_audio(client):
    # 32 steps a window (not the demo's 8): the later windows take long enough that the first audio
    # reliably arrives before the job ends, however fast the machine
    created = submit(client, prompt="sine wave a4", duration=20, seed=3, steps=32, cfg_scale=1)
    job_id = created["id"]
    assert created["stream_url"] == f"/v1/jobs/{job_id}/stream" and created["seeds"] == [3]
    plan = created["long_form"]
    assert plan["window_count"] == 5 and plan["seeds"] == [3, 4, 5, 6, 7]  # window i: seed + i
    assert [w["seed"] for w in plan["windows"]] == plan["seeds"] and plan["steps_per_window"] == 32

    received = bytearray()
    status_at_first_audio = None
    with client.stream("GET", created["stream_url"]) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        assert r.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.headers
        for chunk in r.iter_bytes():
            received += chunk
            if status_at_first_audio is None and len(received) > HEADER:
                status_at_first_audio = client.get(f"/v1/jobs/{job_id}").json()
    # The first audio came while the job was still making the piece: the rest of the windows were to come.
    first = status_at_first_audio
    assert first is not None and first["status"] == "running", first
    assert first["long_form"]["ready_seconds"] < 20 and first["progress"] < 1

    info = client.get(f"/v1/jobs/{job_id}").json()
    assert info["status"] == "completed" and info["progress"] == 1.0 and info["durations"] == [20.0]
    assert info["seeds"] == [3] and info["long_form"]["seeds"] == [3, 4, 5, 6, 7]
    assert info["long_form"]["ready_seconds"] == 20 and info["long_form"]["current_window"] is None
    assert info["request"]["kind"] == "long_form" and info["request"]["duration"] == 20
    assert read_header(bytes(received[:HEADER])) == (3, 2, SR, 32)  # IEEE float, stereo
    streamed = np.frombuffer(bytes(received[HEADER:]), dtype="<f4").reshape(-1, 2)
    stored = stored_audio(client, job_id)
    assert stored.shape == (20 * SR, 2)
    assert np.array_equal(streamed, stored)  # the very samples, not merely close ones
    assert np.isfinite(stored).all() and np.abs(stored).max() <= 1.0
    meta = sf.SoundFile(io.BytesIO(client.get(f"/v1/jobs/{job_id}/audio").content)).copy_metadata()
    assert meta["title"] == "0s: sine wave a4" and "seed=3 (window i: seed + i)" in meta["comment"]
    folder = client.app.state.server.store.job_dir(job_id)
    assert not (folder / STREAM_FILE).exists()  # the running piece's file goes once the job ends

    # A stream opened after the end sends the stored audio, here as 16-bit PCM.
    late = client.get(f"/v1/jobs/{job_id}/stream", params={"bit_depth": 16}).content
    assert read_header(late[:HEADER]) == (1, 2, SR, 16)
    pcm16 = np.frombuffer(late[HEADER:], dtype="<i2").reshape(-1, 2)
    assert np.array_equal(pcm16, np.round(np.clip(stored, -1, 1) * 32767).astype("<i2"))


def test_a_schedule_job_is_the_python_apis_piece_with_each_windows_prompt_and_seed(client, model):
    schedule = [[0, "sine wave a4"], [10, "sine wave e5"]]
    created = submit(client, schedule=schedule, duration=20, seed=11, **FAST)
    info = wait(client, created["id"])
    assert info["status"] == "completed", info
    windows = info["long_form"]["windows"]
    assert [w["seed"] for w in windows] == list(range(11, 11 + len(windows)))
    piece = generate_long(model, schedule=[(0, "sine wave a4"), (10, "sine wave e5")], duration=20, seed=11, **FAST)
    assert [w["prompt"] for w in windows] == [w.prompt for w in piece.windows]
    assert {w["prompt"] for w in windows} == {"sine wave a4", "sine wave e5"}
    stored = stored_audio(client, created["id"])
    np.testing.assert_allclose(stored, piece.audio.numpy().T, atol=1e-5)
    assert info["request"]["schedule"] == schedule and info["request"]["prompt"] is None


def test_cancelling_a_running_job_ends_its_stream(client):
    created = submit(client, prompt="sine wave a4", duration=20, seed=5, steps=60, cfg_scale=1.0)
    job_id = created["id"]
    received = bytearray()
    cancelled = False
    with client.stream("GET", created["stream_url"]) as r:
        for chunk in r.iter_bytes():  # until the server ends the stream
            received += chunk
            if not cancelled and len(received) > HEADER:
                assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"
                assert client.delete(f"/v1/jobs/{job_id}").status_code == 200
                cancelled = True
    info = wait(client, job_id)
    assert info["status"] == "cancelled" and info["cancel_requested"]
    assert HEADER < len(received) < HEADER + 20 * SR * 2 * 4  # some audio, not the whole piece
    assert not client.app.state.server.store.job_dir(job_id).exists()
    r = client.get(f"/v1/jobs/{job_id}/stream")
    assert r.status_code == 409 and r.json()["error"]["message"] == f"job {job_id} is cancelled; there is no audio " \
        "to stream"


# -- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, field, message", [
    ({"prompt": "sine wave a4", "duration": 90}, "duration",
     "duration=90 is too long; this server allows at most 60 s per request"),
    ({"prompt": "sine wave a4"}, "duration", "duration: Field required"),
    ({"prompt": "sine wave a4", "duration": 0}, "duration", "duration=0.0 is invalid; a number in (0, 60] is required"),
    ({"duration": 10}, "prompt", "prompt: a prompt or a schedule is required"),
    ({"prompt": ["a", "b"], "duration": 10}, "prompt", "prompt: Input should be a valid string"),
    ({"prompt": "sine wave a4", "duration": 10, "seed": [1, 2]}, "seed", "seed: Input should be a valid integer"),
    ({"prompt": "sine wave a4", "duration": 10, "batch_size": 2}, "batch_size",
     "batch_size: Extra inputs are not permitted"),
    ({"schedule": [[0, "a"], [30, "b"]], "duration": 20}, "schedule[1]",
     "schedule[1]: start 30.0 must be a number of seconds in [0, duration=20)"),
    ({"schedule": [[0, "a"], [5, "b"], [3, "c"]], "duration": 20}, "schedule[2]",
     "schedule[2]: starts at 3 s, not after 5 s; schedule times must increase"),
    ({"schedule": [[0, "a", "b"]], "duration": 20}, "schedule[0]", "schedule[0]: Tuple should have at most 2 items "
     "after validation, not 3"),
    ({"prompt": "sine wave a4", "duration": 20, "window_seconds": 100}, "window_seconds",
     "window_seconds=100 is too long; this model allows at most 6.13 seconds"),
    ({"prompt": "sine wave a4", "duration": 20, "margin_seconds": 1e308}, "margin_seconds",
     "margin_seconds=1e+308 is too long; this model allows at most 6.13 seconds"),
    ({"prompt": "sine wave a4", "duration": 20, "crossfade_seconds": 30}, "crossfade_seconds",
     "crossfade_seconds=30 is longer than the overlap and the hop allow (1.39 s)"),
    ({"prompt": "sine wave a4", "duration": 20, "overlap_seconds": 5.6}, "overlap_seconds",
     "overlap_seconds: the overlap (5.57 s) and the margin (0.74 s) must leave room in the window (6.13 s) for new "
     "audio"),
    ({"prompt": "sine wave a4", "duration": 20, "seed": 2**63 - 2}, "seed",
     f"seed={2**63 - 2} leaves no room for the 5 window seeds seed + i; at most {2**63 - 5} is allowed here"),
    ({"prompt": "sine wave a4", "duration": 20, "loras": [{"name": "drums"}]}, "loras[0].name",
     "LoRA 'drums' is not offered for model 'demo'; available: none (the server was started without --lora)"),
    ({"prompt": "sine wave a4", "duration": 20, "model": "nope"}, "model",
     "model='nope' is not served here; available: demo"),
])
def test_bad_long_requests_are_refused_naming_the_field(client, body, field, message):
    store = client.app.state.server.store
    before = store.counts_by_status()
    r = client.post("/v1/long", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == {"type": "invalid_request", "field": field, "message": message}
    assert store.counts_by_status() == before  # nothing queued


def test_stream_refusals(client):
    r = client.get("/v1/jobs/" + "0" * 32 + "/stream")
    assert r.status_code == 404 and r.json()["error"]["field"] == "job_id"
    plain = client.post("/v1/generate", json={"prompt": "sine wave a4", "duration": 0.5, **FAST})
    assert plain.status_code == 202
    job_id = plain.json()["id"]
    r = client.get(f"/v1/jobs/{job_id}/stream")
    assert r.status_code == 409 and r.json()["error"] == {
        "type": "not_streamable", "field": None,
        "message": f"job {job_id} is not a long-form job; fetch its audio from /v1/jobs/{job_id}/audio once it is "
                   "completed"}
    r = client.get(f"/v1/jobs/{job_id}/stream", params={"bit_depth": 12})
    assert r.status_code == 422 and r.json()["error"]["message"] == "bit_depth=12 is invalid; 16, 24 or 32 is required"
    r = client.post("/v1/long", content=b"prompt=x", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert wait(client, job_id)["long_form"] is None  # an ordinary job's status has no long-form block


def test_the_openapi_document_describes_the_long_form_api(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/long", "/v1/jobs/{job_id}/stream"} <= set(spec["paths"])
    schema = spec["components"]["schemas"]["LongRequest"]
    assert schema["required"] == ["duration"] and "$defs" not in schema
    props = schema["properties"]
    assert set(LongRequest.model_fields) == set(props)
    for name in ("window_seconds", "overlap_seconds", "margin_seconds", "crossfade_seconds", "schedule"):
        assert props[name]["description"].startswith(LONG_FIELDS[name].metadata["help"].split(" (")[0]), name
    assert props["crossfade_seconds"]["maximum"] == LONG_FIELDS["crossfade_seconds"].metadata["high"]
    assert props["duration"]["exclusiveMinimum"] == 0
    for absent in ("batch_size", "init_noise_level", "inpaint_mask_start_seconds", "continuation"):
        assert absent not in props
    stream = spec["paths"]["/v1/jobs/{job_id}/stream"]["get"]
    assert "audio/wav" in stream["responses"]["200"]["content"]
