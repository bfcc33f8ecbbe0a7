"""The web page's long-form mode (stable_audio_3.ui.longform) with the demo model: the schedule box and its
refusals, a run yielding each stretch as it is final, and, in headless Chromium (autoplay allowed, as a
click on Generate allows it for a person), a player that starts while the piece is still being made.

Browser tools as in test_ui.py: gradio, playwright (the package only) and a system Chromium; outside CI the
browser test skips when one is missing, in CI it fails."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

try:
    import gradio as gr
except ImportError:
    if os.environ.get("CI"):
        pytest.fail("CI needs gradio", pytrace=False)
    pytest.skip("gradio is not installed (pip install -e '.[ui]')", allow_module_level=True)

from stable_audio_3.request import LoadOptions  # noqa: E402
from stable_audio_3.ui.generation import ModelHolder, Stopped  # noqa: E402
from stable_audio_3.ui.longform import continuation_settings, long_request, make_piece, parse_schedule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "stable_audio_3" / "assets" / "demo")
SR = 44100
CHROMIUM = os.environ.get("SA3_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--autoplay-policy=no-user-gesture-required"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
WAIT_MS = 120_000
FAST = {"steps": 8, "cfg_scale": 1.0}  # the demo card's continuation settings


@pytest.fixture(scope="module")
def holder() -> ModelHolder:
    torch.set_num_threads(2)
    h = ModelHolder(LoadOptions(device="cpu"))
    h.get(DEMO)
    return h


# -- without a browser -----------------------------------------------------------------------------------


def test_the_schedule_box_reads_times_and_prompts():
    assert parse_schedule("sine wave a4") == ([(0.0, "sine wave a4")], [1])
    assert parse_schedule("0: sine wave a4\n\n10.5 s: sine wave e5\n") == (
        [(0.0, "sine wave a4"), (10.5, "sine wave e5")], [1, 3])
    assert parse_schedule("saw c4\n7: square e4") == ([(0.0, "saw c4"), (7.0, "square e4")], [1, 2])
    with pytest.raises(gr.Error) as e:
        parse_schedule("0: sine wave a4\nsine wave e5")
    assert e.value.message == ("Prompt schedule, line 2: 'sine wave e5' needs a start time: SECONDS: PROMPT (only "
                               "the first line may leave it out)")
    with pytest.raises(gr.Error, match="Prompt schedule: give at least one prompt"):
        parse_schedule(" \n")


@pytest.mark.parametrize("values, message", [
    ({"schedule": "0: a\n\n40: b", "duration": 30}, "Prompt schedule, line 3: start 40.0 must be a number of "
     "seconds in [0, duration=30)"),
    ({"schedule": "0: a\n5: b\n3: c", "duration": 30}, "Prompt schedule, line 3: starts at 3 s, not after 5 s; "
     "schedule times must increase"),
    ({"schedule": "a", "duration": 5000}, "Total length (s)=5000 is invalid; a number in (0, 3600] is required"),
    ({"schedule": "a", "duration": None}, "Total length (s)=None is invalid; the total length in seconds is required"),
    ({"schedule": "a", "duration": 30, "seed": "x"}, "Seed='x' is invalid; a whole number (-1: random), or one per "
     "item separated by commas, is required"),
    ({"schedule": "a", "duration": 30, "steps": 0}, "Steps=0 is invalid; an integer in [1, 1000] is required"),
])
def test_mistakes_are_named_by_the_pages_labels(values, message):
    with pytest.raises(gr.Error) as e:
        long_request(values)
    assert e.value.message == message


def test_the_page_starts_at_the_demo_cards_continuation_settings(holder):
    assert continuation_settings(holder) == (8, 1.0)


def test_a_run_yields_each_stretch_before_the_next_window_and_writes_the_same_samples(holder, tmp_path):
    values = {"schedule": "0: sine wave a4\n4: sine wave e5", "duration": 9, "seed": "3", **FAST}
    updates = list(make_piece(holder, tmp_path, values))
    *running, final = updates
    assert [u["status"].startswith("Running: window") for u in running] == [True] * len(running)
    counts = [len(u["player"]["stretches"]) for u in updates]
    assert counts == list(range(len(updates) - 1)) + [counts[-2] + 1]  # one more stretch at each update
    stretches = final["player"]["stretches"]
    assert [s["seed"] for s in stretches] == list(range(3, 3 + len(stretches))) and len(stretches) >= 2
    assert stretches[0]["start"] == 0 and stretches[-1]["end"] == 9
    assert all(a["end"] == b["start"] for a, b in zip(stretches, stretches[1:], strict=False))  # they tile it
    assert stretches[0]["prompt"] == "sine wave a4" and stretches[-1]["prompt"] == "sine wave e5"
    assert final["status"].startswith(f"Made 9.00 s in {len(stretches)} window(s)") and final["player"]["done"]
    whole, sr = sf.read(final["output"], dtype="int16")
    assert sr == SR and whole.shape == (9 * SR, 2)
    joined = np.concatenate([sf.read(s["path"], dtype="int16")[0] for s in stretches])
    assert np.array_equal(whole, joined)  # the player's stretches are the file's samples
    assert sf.SoundFile(final["output"]).copy_metadata()["title"] == "0s: sine wave a4 | 4s: sine wave e5"


def test_stop_ends_a_run_and_a_window_too_long_is_refused_before_sampling(holder, tmp_path):
    with pytest.raises(gr.Error) as e:
        next(make_piece(holder, tmp_path, {"schedule": "a", "duration": 20, "window_seconds": 100, **FAST}))
    assert e.value.message == "Window (s)=100 is too long; this model allows at most 6.13 seconds"
    run = make_piece(holder, tmp_path, {"schedule": "sine wave a4", "duration": 20, "seed": "1", "steps": 200,
                                        "cfg_scale": 1.0})
    first = next(run)
    assert first["status"].startswith("Running: window 1 of 5") and first["player"]["stretches"] == []
    holder.stop.set()
    with pytest.raises(Stopped, match=r"Stopped in window 1 of 5 at step \d+; the 0.00 s made so far stay"):
        next(run)
    assert not holder.lock.locked()


# -- in the browser --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_url(tmp_path_factory) -> str:
    """`stable-audio-ui` as a user starts it (the demo model), on a free port; the long-form page's URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("long-ui") / "server.log"
    log = log_path.open("w")
    process = subprocess.Popen([sys.executable, "-m", "stable_audio_3.ui", "--device", "cpu", "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"stable-audio-ui did not start:\n{log_path.read_text()}")
            time.sleep(0.5)
    yield url + "long-form"
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()
    assert "Traceback" not in log_path.read_text()


def test_the_long_form_page_plays_while_the_piece_is_still_being_made(page_url):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI needs playwright", pytrace=False)
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs Chromium at {CHROMIUM}", pytrace=False)
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SA3_CHROMIUM)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(page_url)
        page.wait_for_selector("#long-schedule textarea", timeout=WAIT_MS)
        assert page.locator("#long-steps input").input_value() == "8"  # the demo card's continuation advice
        assert page.locator("#long-cfg input").input_value() == "1"
        page.locator("#long-schedule textarea").fill("0: sine wave a4\n30: sine wave e5")
        # 32 steps a window (not the demo's 8): the piece takes long enough that the player starts well
        # before it is done, however fast the machine
        for selector, value in (("#long-duration input", "60"), ("#long-seed textarea", "3"),
                                ("#long-steps input", "32")):
            page.locator(selector).fill(value)
            page.locator(selector).press("Tab")
        page.wait_for_timeout(300)  # let Gradio take in the typed values
        page.click("#long-generate")
        # The player's position and the status line, read together once the player has started.
        handle = page.wait_for_function(
            """() => {
                const player = window.sa3LongPlayer;
                return player && player.position() > 0 ?
                    [player.position(), player.state(), document.querySelector('#long-status').innerText] : null;
            }""", timeout=WAIT_MS)
        position, state, status = handle.json_value()
        assert position > 0 and state == "playing"
        assert status.startswith("Running: window "), status  # the piece was still being made
        page.screenshot(path=str(ARTIFACTS / "ui_long_form_playing.png"), full_page=True)
        page.wait_for_function("() => document.querySelector('#long-status').innerText.startsWith('Made')",
                               timeout=WAIT_MS)
        status = page.locator("#long-status").inner_text()
        assert status.startswith("Made 60.00 s in 15 window(s) of 6.13 s (seeds 3-17)"), status
        assert page.evaluate("() => window.sa3LongPlayer.error") is None
        items = page.locator("#long-player li").all_inner_texts()
        assert len(items) == 15 and items[0] == "0.00-4.67 s: window 1, seed 3, sine wave a4"
        assert items[-1].endswith("seed 17, sine wave e5")
        link = page.wait_for_selector("#long-output a[download]", state="attached", timeout=WAIT_MS)
        data = page.request.get(link.get_attribute("href")).body()
        audio, sr = sf.read(io.BytesIO(data), dtype="float32")
        assert sr == SR and audio.shape == (60 * SR, 2)
        assert page.locator("#long-message").inner_text().strip() == ""
        browser.close()
