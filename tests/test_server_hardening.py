"""The HTTP server under hostile or unlucky conditions (issue 19), each against a real server on 127.0.0.1:
GET racing DELETE, a full disk, uploads that decode to too much, cross-site pages and rebound names, keys and
what is shown without one, two processes on one data folder, startup errors, leftovers of a kill -9."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx  # noqa: E402  (after test_server, which skips the module without the [server] extra)
import numpy as np
import pytest
import soundfile as sf
from golden import fixture_dir
from test_server import (
    SR,
    _missing,
    error_of,
    free_port,
    live_server,
    model,
    one_torch_thread,  # noqa: F401  (the autouse fixture, for this module too)
    serve_error,
    server,
    submit,
    wait,
    wav_bytes,
)

from stable_audio_3.server import ServerConfig, create_app


def folders(data_dir: Path) -> set[str]:
    return {p.name for p in (data_dir / "files").iterdir()} if (data_dir / "files").is_dir() else set()


# -- 1. GET audio racing DELETE ---------------------------------------------------------------------
def test_get_audio_racing_delete_never_500s_cuts_a_body_or_brings_back_a_folder(tmp_path: Path) -> None:
    with server(tmp_path) as client:
        base = str(client.base_url)
        statuses: list[int] = []
        for rnd in range(12):
            job = wait(client, submit(client, prompt="x", duration=0.5, steps=2, seed=rnd))["id"]
            results: list[httpx.Response] = []
            ready = threading.Barrier(9)

            def get(fmt: str, job: str = job, ready: threading.Barrier = ready, results: list = results) -> None:
                with httpx.Client(base_url=base, timeout=30) as http:
                    http.get("/healthz")  # connected before the race starts
                    ready.wait()
                    results.append(http.get(f"/v1/jobs/{job}/audio", params={"format": fmt}))

            threads = [threading.Thread(target=get, args=(fmt,)) for fmt in ("flac", "ogg", "mp3", "wav") * 2]
            for t in threads:
                t.start()
            ready.wait()
            time.sleep(0.006 * rnd)  # the DELETE lands at a different point of the conversions each round
            assert client.delete(f"/v1/jobs/{job}").status_code == 200
            for t in threads:
                t.join(30)
            for r in results:
                statuses.append(r.status_code)
                assert r.status_code in (200, 404), (r.status_code, r.text)
                if r.status_code == 200:  # never cut short: as long as it says, and a whole decodable file
                    assert len(r.content) == int(r.headers["content-length"])
                    audio, sr = sf.read(io.BytesIO(r.content), always_2d=True)
                    assert sr == SR and abs(audio.shape[0] - SR // 2) < 0.06 * SR
                else:
                    assert error_of(r) == (404, "job_id")
            time.sleep(0.05)  # any conversion still writing has finished by now
            assert job not in folders(tmp_path / "data"), f"round {rnd}: the deleted job's folder came back"
        print("\nGET/DELETE race statuses:", {s: statuses.count(s) for s in sorted(set(statuses))})


# -- 2. a full disk -------------------------------------------------------------------------------------
def no_tmpfs(reason: str) -> None:
    if os.environ.get("SA3_REQUIRE_TMPFS"):
        pytest.fail(f"SA3_REQUIRE_TMPFS is set: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs (root and a kernel that lets us mount one), unmounted afterwards. Where mounting is
    not allowed the test is skipped with the reason (it fails instead with SA3_REQUIRE_TMPFS=1): CI runs
    as root, and where it may mount (as here) the test runs."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        no_tmpfs("a full-disk test needs root to mount a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        no_tmpfs(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of the file system of `folder`; returns the file holding them."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (65536, 4096, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_is_507_jobs_say_so_delete_frees_space_and_the_server_recovers(small_disk: Path) -> None:
    data = small_disk / "data"
    config = ServerConfig(data_dir=data, poll_interval_s=0.05)
    with live_server(create_app(config, models={"tiny": model()})) as base, httpx.Client(base_url=base,
                                                                                          timeout=30) as client:
        done = [wait(client, submit(client, prompt=f"p{i}", duration=0.5, steps=2, seed=i))["id"] for i in range(3)]
        filler = fill(small_disk)
        upload = client.post("/v1/generate", data={"request": json.dumps({"prompt": "x", "duration": 0.5,
                                                                         "init_noise_level": 0.5})},
                             files={"init_audio": ("a.wav", wav_bytes(2.0, sr=SR, channels=2), "audio/wav")})
        assert upload.status_code == 507, upload.text
        assert upload.json()["error"]["type"] == "insufficient_storage"
        assert "disk is full" in upload.json()["error"]["message"]
        statuses, accepted = [], []
        for i in range(3):  # no room for a record either
            r = client.post("/v1/generate", json={"prompt": "y", "duration": 1.0, "steps": 2, "seed": 10 + i})
            statuses.append(r.status_code)
            assert r.status_code in (202, 507), r.text
            if r.status_code == 507:
                assert "disk is full" in r.json()["error"]["message"]
        os.truncate(filler, filler.stat().st_size - 128 * 1024)  # room for records, not for 1 s of float audio
        for i in range(3):
            r = client.post("/v1/generate", json={"prompt": "y", "duration": 2.0, "steps": 2, "seed": 20 + i})
            statuses.append(r.status_code)
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])
        for job_id in accepted:
            info = wait(client, job_id)
            assert info["status"] == "failed", info
            assert info["error"].startswith("writing the audio failed: the server's disk is full"), info
        # no half-recorded job: every folder has its record, nothing is left running
        jobs = {j: client.get(f"/v1/jobs/{j}").json()["status"] for j in done + accepted}
        assert folders(data) <= set(done), folders(data)
        # DELETE still frees space on the full disk
        for job_id in done:
            r = client.delete(f"/v1/jobs/{job_id}")
            assert r.status_code == 200, r.text
        assert folders(data) == set()
        filler.unlink()  # the space comes back: no restart needed
        info = wait(client, submit(client, prompt="z", duration=0.5, steps=2, seed=99))
        assert info["status"] == "completed", info
        r = client.post("/v1/generate", data={"request": json.dumps({"prompt": "x", "duration": 0.5,
                                                                     "init_noise_level": 0.5})},
                        files={"init_audio": ("a.wav", wav_bytes(0.5, sr=SR, channels=2), "audio/wav")})
        assert r.status_code == 202 and wait(client, r.json()["id"])["status"] == "completed"
        print(f"\nfull disk: POST statuses {statuses}; accepted jobs ended {jobs}")


# -- 3. uploads bounded by decoded size ---------------------------------------------------------------
def silence_flac(seconds: float, sr: int, channels: int) -> bytes:
    """A FLAC of silence: a few kB that decode to seconds x sr x channels samples."""
    buf = io.BytesIO()
    sf.write(buf, np.zeros((int(seconds * sr), channels), np.float32), sr, format="FLAC")
    return buf.getvalue()


def test_uploads_are_bounded_by_samples_x_channels_before_and_while_decoding(tmp_path: Path) -> None:
    limit = 1_000_000
    body = {"request": json.dumps({"prompt": "x", "duration": 1.0, "init_noise_level": 0.5})}
    with server(tmp_path, max_upload_values=limit, run_workers=False) as client:
        bomb = silence_flac(10.0, 48_000, 4)  # 1.92 M samples x channels in 2 kB, inside the byte and second limits
        assert len(bomb) < 10_000
        r = client.post("/v1/generate", data=body, files={"init_audio": ("bomb.flac", bomb, "audio/flac")})
        assert error_of(r) == (413, "init_audio") and r.json()["error"]["type"] == "too_large"
        assert r.json()["error"]["message"].startswith(f"init_audio: decodes to more than {limit} samples x channels")
        # the limit is for all the files of a request: two files each under it, together over it, are refused
        half = wav_bytes(4.0, sr=SR, channels=2)  # 352800 values
        inpaint = {"request": json.dumps({"prompt": "x", "duration": 4.0, "init_noise_level": 0.5,
                                          "inpaint_mask_start_seconds": [1.0], "inpaint_mask_end_seconds": [2.0]})}
        r = client.post("/v1/generate", data=inpaint, files={"init_audio": ("a.wav", half, "audio/wav"),
                                                             "inpaint_audio": ("b.wav", half, "audio/wav")})
        assert r.status_code == 202, r.text
        big = wav_bytes(8.0, sr=SR, channels=2)  # 705600 values: alone it fits; after `half` it does not
        r = client.post("/v1/generate", data=inpaint, files={"init_audio": ("a.wav", half, "audio/wav"),
                                                             "inpaint_audio": ("b.wav", big, "audio/wav")})
        assert error_of(r) == (413, "inpaint_audio")
        # a rate outside 1 kHz..768 kHz is named, and nothing was stored for the refused requests
        r = client.post("/v1/generate", data=body, files={"init_audio": ("a.wav", wav_bytes(0.1, sr=800), "audio/wav")})
        assert error_of(r) == (422, "init_audio") and "800 Hz" in r.json()["error"]["message"]
        assert len(folders(tmp_path / "data")) == 1


# -- 4. cross-site pages and rebound names ----------------------------------------------------------------
BROWSER_CROSS_SITE = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors",
                      "Sec-Fetch-Dest": "empty"}


def test_a_page_on_another_site_cannot_queue_jobs_on_a_keyless_local_server(tmp_path: Path) -> None:
    form = {"request": json.dumps({"prompt": "x", "duration": 0.5})}
    with server(tmp_path, run_workers=False, allowed_origins=["http://app.example:3000"]) as client:
        store = client.app.state.server.store
        # what a form or a fetch(no-cors) of evil.example sends: multipart, urlencoded, a text/plain or typeless body
        r = client.post("/v1/generate", data=form, files={"x": ("", b"")}, headers=BROWSER_CROSS_SITE)
        assert error_of(r) == (403, "Origin") and r.json()["error"]["type"] == "cross_site"
        r = client.post("/v1/generate", data=form, headers=BROWSER_CROSS_SITE)
        assert r.status_code == 403
        r = client.post("/v1/generate", content=b'{"prompt": "x", "duration": 0.5}', headers=BROWSER_CROSS_SITE)
        assert r.status_code == 403
        r = client.post("/v1/generate", content=b'{"prompt": "x"}', headers={"Origin": "null"})  # sandboxed page
        assert r.status_code == 403
        # no Origin but a browser's Sec-Fetch-Site: refused too, but for following a link (a GET navigation)
        r = client.post("/v1/generate", json={"prompt": "x"}, headers={"Sec-Fetch-Site": "same-site"})
        assert error_of(r) == (403, "Sec-Fetch-Site")
        assert client.get("/v1/models", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}
                          ).status_code == 403
        assert client.get("/docs", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
                          ).status_code == 200
        assert store.count("queued") == 0
        # DNS rebinding: a page whose name now points at 127.0.0.1 sends its own name as Host
        r = client.get("/v1/models", headers={"Host": "attacker.example"})
        assert error_of(r) == (400, "Host") and "--allowed-host" in r.json()["error"]["message"]
        # the server's own pages, a user's allowed web app and clients that are not browsers are served
        port = client.base_url.port
        assert client.post("/v1/generate", json={"prompt": "x", "duration": 0.5},
                           headers={"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
                           ).status_code == 202
        r = client.post("/v1/generate", json={"prompt": "x", "duration": 0.5},
                        headers={"Origin": "http://app.example:3000", "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 202 and r.headers["access-control-allow-origin"] == "http://app.example:3000"
        preflight = client.options("/v1/generate", headers={"Origin": "http://app.example:3000",
                                                            "Access-Control-Request-Method": "POST",
                                                            "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 200
        assert client.post("/v1/generate", json={"prompt": "x", "duration": 0.5}).status_code == 202
        assert client.get("/v1/models", headers={"Host": f"localhost:{port}"}).status_code == 200
        assert store.count("queued") == 3
    with server(tmp_path / "b", run_workers=False, allowed_hosts=["127.0.0.1", "sa3.lan"]) as client:
        assert client.get("/healthz", headers={"Host": "sa3.lan:8000"}).status_code == 200
        assert client.get("/healthz", headers={"Host": "localhost"}).status_code == 400
        assert "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": "http://x.example"}
                                                              ).headers


# -- 5. keys and what is shown without one --------------------------------------------------------------
def test_an_empty_key_is_refused_and_healthz_and_docs_show_nothing_without_the_key(tmp_path: Path, capsys,
                                                                                    monkeypatch) -> None:
    with pytest.raises(ValueError, match="api_key='' is invalid; a non-empty key is required"):
        ServerConfig(api_key="")
    message = ("stable-audio serve: error: --api-key (or SA3_API_KEY) is empty; give a key, or unset both to serve "
               "without one\n")
    assert serve_error(["--api-key", "", "--data-dir", str(tmp_path / "d")], capsys) == (2, message)
    monkeypatch.setenv("SA3_API_KEY", " ")
    assert serve_error(["--data-dir", str(tmp_path / "d")], capsys) == (2, message)
    assert not (tmp_path / "d").exists()
    with server(tmp_path, api_key="s3cret", run_workers=False) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        full = client.get("/healthz", headers={"Authorization": "Bearer s3cret"}).json()
        assert full["models"] == ["tiny"] and full["pid"] == os.getpid()
        page = client.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        assert 'id="key"' in page.text and "<script src" not in page.text and "cdn" not in page.text.lower()
        assert client.get("/redoc").status_code == 401  # FastAPI's CDN pages are gone (404 behind the key)
        assert client.get("/redoc", headers={"Authorization": "Bearer s3cret"}).status_code == 404
        browse_docs(str(client.base_url), "s3cret")


def browse_docs(base: str, key: str) -> None:
    """Chromium opens /docs with the network cut off but for this server, types the key, sees the endpoints."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright; a system chromium)")
    chromium = os.environ.get("SA3_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        _missing(f"no Chromium at {chromium}")
    elsewhere: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()

            def route(r) -> None:
                if r.request.url.startswith(base):
                    r.continue_()
                else:
                    elsewhere.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
            page.goto(f"{base}/docs")
            page.wait_for_selector("#status:has-text('401')")  # no key yet: the endpoints are behind it
            page.fill("#key", key)
            page.click("#load")
            page.wait_for_selector("[data-op='POST /v1/generate']", timeout=15_000)
            assert page.locator(".op").count() == 9
            page.click("[data-op='GET /v1/models']")
            page.click("#send")
            page.wait_for_selector("#answer:has-text('200 OK')", timeout=15_000)
            assert '"name":"tiny"' in page.inner_text("#answer")
        finally:
            browser.close()
    assert elsewhere == [], elsewhere


# -- 6. work ownership: one plain server per folder, replicas share it ----------------------------------
def start_process(data_dir: Path, port: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stable_audio_3.server", "--model", f"tiny={fixture_dir('tiny-small')}", "--device",
           "cpu", "--port", str(port), "--data-dir", str(data_dir), "--max-batch", "1", "--log-level", "warning",
           *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def up(proc: subprocess.Popen, port: int) -> None:
    end = time.monotonic() + 90
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stdout.read().decode()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server process did not come up in 90 s")


def stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_two_plain_servers_on_one_folder_are_refused_and_replicas_share_the_queue(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port_a, port_b = free_port(), free_port()
    a = start_process(data, port_a)
    try:
        up(a, port_a)
        long = httpx.post(f"http://127.0.0.1:{port_a}/v1/generate",
                          json={"prompt": "x", "duration": 20.0, "steps": 1000}).json()["id"]
        # a second plain server would requeue (and run again) the job the first one is running: refused
        for extra in ((), ("--replica",)):
            b = start_process(data, port_b, *extra)
            out, _ = b.communicate(timeout=120)
            lines = out.decode().strip().splitlines()
            assert b.returncode == 1 and len(lines) == 1, out.decode()
            assert lines[0].startswith(f"stable-audio serve: error: --data-dir {data} is in use by "), lines
        info = httpx.get(f"http://127.0.0.1:{port_a}/v1/jobs/{long}").json()
        # never requeued by the refused servers: one attempt (it may have finished meanwhile on a fast machine)
        assert info["status"] in ("running", "completed") and info["attempts"] == 1, info
        httpx.delete(f"http://127.0.0.1:{port_a}/v1/jobs/{long}")
    finally:
        stop(a)
    # two replicas: one queue, every job run exactly once, by either of them
    a, b = start_process(data, port_a, "--replica"), start_process(data, port_b, "--replica")
    try:
        up(a, port_a)
        up(b, port_b)
        ids = [httpx.post(f"http://127.0.0.1:{(port_a, port_b)[i % 2]}/v1/generate",
                          json={"prompt": f"p{i}", "duration": 0.5, "steps": 4, "seed": i}).json()["id"]
               for i in range(8)]
        end, infos = time.monotonic() + 120, {}
        while len(infos) < len(ids) and time.monotonic() < end:
            for job_id in ids:
                info = httpx.get(f"http://127.0.0.1:{port_b}/v1/jobs/{job_id}").json()
                if info["status"] in ("completed", "failed", "cancelled"):
                    infos[job_id] = info
            time.sleep(0.1)
        assert [infos[i]["status"] for i in ids] == ["completed"] * 8
        assert all(infos[i]["attempts"] == 1 for i in ids)
        print("\nreplicas: jobs run per worker", {w: sum(i["worker"] == w for i in infos.values())
                                                  for w in {i["worker"] for i in infos.values()}})
        # a plain server is refused while replicas use the folder
        c = start_process(data, free_port())
        out, _ = c.communicate(timeout=120)
        assert c.returncode == 1 and "is in use by another server process" in out.decode(), out.decode()
    finally:
        stop(a, b)


def test_a_replica_requeues_only_jobs_whose_lease_has_expired(tmp_path: Path) -> None:
    with server(tmp_path, run_workers=False) as client:
        ids = [submit(client, prompt=f"p{i}", duration=0.5, steps=2, seed=i) for i in range(2)]
        store = client.app.state.server.store
        (live,) = store.claim_batch("tiny", max_items=1, owner="replica-a")  # its owner renews it...
        (dead,) = store.claim_batch("tiny", max_items=1, owner="replica-b")  # ...this one's owner died long ago
        store._db.execute("UPDATE jobs SET heartbeat = heartbeat - 3600 WHERE id = ?", (dead.id,))
    with server(tmp_path, replica=True, lease_s=30.0) as client:
        assert wait(client, dead.id)["status"] == "completed"
        info = client.get(f"/v1/jobs/{live.id}").json()
        assert info["status"] == "running" and info["worker"] == "replica-a" and info["attempts"] == 1
    assert sorted(ids) == sorted([live.id, dead.id])


# -- 7. startup errors: one line, before uvicorn ------------------------------------------------------------
def test_bad_serve_arguments_and_unusable_folders_ports_and_models_are_one_line(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    tiny = f"tiny={fixture_dir('tiny-small')}"
    usage = [
        (["--port", "99999"], "argument --port: '99999' is invalid; a port is 1..65535"),
        (["--max-upload-mb", "nan"], "argument --max-upload-mb: 'nan' is invalid; a finite number > 0 is required"),
        (["--max-queue", "0"], "argument --max-queue: '0' is invalid; a finite number >= 1 is required"),
        (["--model", str(tmp_path / "no-such-model")], f"--model {tmp_path / 'no-such-model'}: no such folder"),
        (["--allowed-origin", "evil.example"], "allowed origin 'evil.example' is invalid; scheme://host[:port] is "
         "required, e.g. https://app.example"),
    ]
    for argv, message in usage:
        code, err = serve_error([*argv, "--data-dir", str(tmp_path / "d")], capsys)
        assert code == 2 and err.startswith("stable-audio serve: error: ") and err.count("\n") == 1, err
        assert message in err, err
    taken = free_port()
    with server(tmp_path / "taken") as client:  # a port in use
        busy = client.base_url.port
        code, err = serve_error(["--model", tiny, "--device", "cpu", "--port", str(busy), "--data-dir",
                                 str(tmp_path / "d2")], capsys)
        assert (code, err) == (1, f"stable-audio serve: error: cannot listen on 127.0.0.1:{busy}: Address already "
                                  "in use\n")
    code, err = serve_error(["--model", tiny, "--port", str(taken), "--data-dir", str(a_file)], capsys)
    assert (code, err) == (1, f"stable-audio serve: error: --data-dir {a_file}: is a file; a folder is required\n")
    # a model that is not in the (empty) cache, with the Hub out of reach: its own message, on one line
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    argv = ["--model", "small=small-music", "--port", str(taken), "--data-dir", str(tmp_path / "d3"), "--log-level",
            "warning"]
    done = subprocess.run([sys.executable, "-m", "stable_audio_3.server", *argv], env=env, capture_output=True,
                          timeout=120)
    err = done.stderr.decode()
    assert done.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("stable-audio serve: error: --model small=small-music: cannot load it: could not get ")
    assert "HF_HUB_OFFLINE" in err


# -- 8. what a kill -9 leaves behind -----------------------------------------------------------------------
def test_a_restart_removes_stale_temporary_files_and_folders_without_a_job(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with server(tmp_path) as client:
        job = wait(client, submit(client, prompt="x", duration=0.5, steps=2, seed=1))["id"]
    # what a process killed in the middle of writes leaves: a temporary file next to the job's audio, and the
    # folder of an upload whose job was never recorded
    stale = data / "files" / job / f".output_0.flac.{'0' * 12}.part"
    stale.write_bytes(b"half a file")
    orphan = data / "files" / ("f" * 32)
    orphan.mkdir()
    (orphan / "input_init_audio.wav").write_bytes(b"RIFF")
    with server(tmp_path) as client:
        assert not stale.exists() and not orphan.exists()
        assert sorted(p.name for p in (data / "files" / job).iterdir()) == ["output_0.wav"]
        r = client.get(f"/v1/jobs/{job}/audio", params={"format": "flac"})
        assert r.status_code == 200 and sf.read(io.BytesIO(r.content))[0].shape[0] == SR // 2
