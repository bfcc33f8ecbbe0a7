"""The Gradio app, driven by headless Chromium the way a person uses it, with the built-in demo model
(small and fast; its shipped `octave-up` LoRA and its vocabulary's example prompts are on the page).

Needs gradio, playwright (the Python package only) and a system Chromium (`/usr/bin/chromium`,
or $SA3_CHROMIUM); outside CI the browser tests skip when one is missing, in CI they fail.
Screenshots go to tests/artifacts/. The page's logic without a browser: test_ui_generation.py.
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from stable_audio_3.audio import write_audio


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI needs the browser test tools: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    import gradio  # noqa: F401
except ImportError:
    _missing("gradio is not installed (pip install -e '.[ui]')")
try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:
    _missing("playwright is not installed (pip install -e '.[test]')")

CHROMIUM = os.environ.get("SA3_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SR = 44100
WAIT_MS = 90_000  # one generation with the demo model takes about a second; 2 busy cores can make it many


@dataclass
class Server:
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """`stable-audio-ui` as a user starts it (default host: 127.0.0.1, the demo model), on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("ui") / "server.log"
    log = log_path.open("w")
    command = [sys.executable, "-m", "stable_audio_3.ui", "--device", "cpu", "--port", str(port)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
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
    yield Server(url, log_path)
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SA3_CHROMIUM)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server: Server) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server.url)
    page.wait_for_selector("#prompt textarea", timeout=WAIT_MS)
    yield page
    page.close()


# -- what a person does ----------------------------------------------------------------------------


def settle(page: Page) -> None:
    """Give Gradio a moment to take in a typed value before the next click. A click that follows
    typing within a few milliseconds (no person is that fast) can reach the server with the old value."""
    page.wait_for_timeout(300)


def set_number(page: Page, elem_id: str, value: float) -> None:
    """Type into a slider's or number's box and leave it, as a person does (Gradio commits on blur)."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Tab")
    settle(page)


def type_text(page: Page, selector: str, text: str) -> None:
    """Type into a text box and leave it; check that the page kept the text."""
    box = page.locator(selector)
    box.fill(text)
    box.press("Tab")
    settle(page)
    assert box.input_value() == text


def open_section(page: Page, title: str) -> None:
    """Open an accordion and wait until its contents have rendered (typing earlier can be lost)."""
    page.click(f"text={title}")
    settle(page)


def download_link(page: Page, index: int = 0) -> str | None:
    return page.evaluate(f"() => document.querySelector('#output-{index} a[download]')?.href ?? null")


FRESH_MESSAGE = """(() => {  // the message line's text, once Generate has replaced the one marked old
    const m = document.querySelector('#message');
    return m && !m.querySelector('.md [data-old]') ? m.querySelector('.md').innerText.trim() : '';
})()"""


def click_generate(page: Page) -> None:
    page.evaluate("() => document.querySelectorAll('#message .md *').forEach(n => n.dataset.old = '1')")
    page.click("#generate")


def generate(page: Page) -> None:
    """Click Generate and wait for a new first output (failing on a message from the page instead)."""
    before = download_link(page)
    click_generate(page)
    page.wait_for_function(
        f"prev => (document.querySelector('#output-0 a[download]')?.href ?? null) !== prev || {FRESH_MESSAGE}",
        arg=before,
        timeout=WAIT_MS,
    )
    message = page.evaluate(f"() => {FRESH_MESSAGE}")
    assert not message, f"the page shows a message: {message}"


def generate_refused(page: Page) -> str:
    """Click Generate expecting a refusal; returns the message line's (new) text."""
    click_generate(page)
    page.wait_for_function(f"() => {FRESH_MESSAGE}.includes('⚠')", timeout=WAIT_MS)
    return page.evaluate(f"() => {FRESH_MESSAGE}")


def fetch_output(page: Page, index: int, old_src: str | None = None) -> tuple[bytes, float, str]:
    """The file behind output player `index` (its download link), the duration the browser decoded
    from the player's own copy, and that copy's URL (to tell the next result from this one)."""
    player = page.locator(f"#output-{index} audio[src]").first
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        src, decoded = player.evaluate("el => [el.src, el.duration]")
        if src != old_src and decoded and decoded > 0:
            break
        assert time.monotonic() < deadline, f"player {index} never loaded a new file"
        page.wait_for_timeout(100)
    response = page.request.get(download_link(page, index))
    assert response.ok
    return response.body(), decoded, src


def peak_hz(data: bytes) -> float:
    audio, sr = sf.read(io.BytesIO(data), dtype="float32")
    mono = audio.mean(axis=1)
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
    return float(spectrum.argmax()) * sr / len(mono)


# -- the tests -------------------------------------------------------------------------------------


def test_batch_reuse_seed_send_any_item_to_inpainting_and_back(page: Page) -> None:
    type_text(page, "#prompt textarea", "sine a4")
    set_number(page, "seconds", 2)
    set_number(page, "batch-size", 2)
    generate(page)
    status = page.locator("#status").inner_text()
    seed = re.search(r"Generated 2 x 2\.00 s in [\d.]+ s, seed (\d+) \(one generator for the batch\)", status)
    assert seed, status
    for i in range(2):
        data, decoded, _ = fetch_output(page, i)
        info = sf.info(io.BytesIO(data))
        assert (info.samplerate, info.channels, info.frames) == (SR, 2, 2 * SR)
        assert decoded == pytest.approx(2.0, abs=0.01)
        assert sf.SoundFile(io.BytesIO(data)).copy_metadata()["title"] == "sine a4"
    assert page.locator("#spectrogram-1 img").is_visible()
    assert not page.locator("#output-2").is_visible() and not page.locator("#spectrogram-2").is_visible()
    width = page.locator("#spectrogram-0 img").bounding_box()["width"]
    assert width > 0.9 * page.locator("#output-0").bounding_box()["width"]  # the picture fills its column
    page.screenshot(path=str(ARTIFACTS / "ui_text_to_audio.png"), full_page=True)

    # The seed is in view (not in a closed group) and each result's button puts its seed back.
    assert page.locator("#seed textarea").is_visible()
    assert page.locator("#reuse-seed-1").inner_text() == f"Reuse seed {seed.group(1)}"
    page.click("#reuse-seed-1")
    page.wait_for_function(f"() => document.querySelector('#seed textarea').value === '{seed.group(1)}'",
                           timeout=WAIT_MS)

    # The second item of the batch goes to inpainting, with the demo's recommended paste-back.
    second = download_link(page, 1)
    assert page.locator("#back-to-text").is_hidden()
    page.click("#to-inpaint-1")
    page.wait_for_selector("#inpaint-audio a[download]", state="attached", timeout=WAIT_MS)
    assert page.locator("#inpaint-audio a[download]").get_attribute("href") == second  # item 1, not item 0
    page.wait_for_selector("#mode >> text=inpainting (paste back on)", timeout=WAIT_MS)
    assert page.locator("#inpaint-paste-back input").is_checked()
    assert "model card recommends" in page.locator("#inpaint-advice").inner_text()
    type_text(page, "#regions textarea", "0.5-1.0")
    generate(page)
    data, _, _ = fetch_output(page, 0)
    comment = sf.SoundFile(io.BytesIO(data)).copy_metadata()["comment"]
    assert "inpaint_regions=0.5-1 inpaint_paste_back=True" in comment and "_1.wav" in comment

    # One click back to text-to-audio: the clip, regions and paste-back go; plain generation works.
    page.click("#back-to-text")
    page.wait_for_selector("#mode >> text=text-to-audio", timeout=WAIT_MS)
    assert page.locator("#regions textarea").input_value() == ""
    assert not page.locator("#inpaint-paste-back input").is_checked()
    assert page.locator("#inpaint-audio a[download]").count() == 0
    generate(page)
    data, _, _ = fetch_output(page, 0)
    assert "inpaint" not in sf.SoundFile(io.BytesIO(data)).copy_metadata()["comment"].splitlines()[0]


def test_mistakes_keep_the_results_and_controls_and_name_the_field(page: Page, server: Server,
                                                                   tmp_path: Path) -> None:
    type_text(page, "#prompt textarea", "sine a4")
    set_number(page, "seconds", 1)
    generate(page)
    result = download_link(page)
    log_before = len(server.output())

    def still_there() -> None:
        assert download_link(page) == result and page.locator("#output-0").is_visible()
        assert page.locator("#spectrogram-0 img").is_visible()
        assert page.locator("#seconds input[type=number]").input_value() == "1"
        assert page.locator("#steps input[type=number]").is_visible()

    open_section(page, "Inpainting / continuation")
    type_text(page, "#regions textarea", "abc")
    assert "Inpaint regions: 'abc' is not START-END in seconds" in generate_refused(page)
    still_there()
    type_text(page, "#regions textarea", "")

    picker = page.locator("#model input")
    picker.fill("/no/such/model")
    picker.press("Enter")
    page.wait_for_selector("#model-status >> text=Model '/no/such/model' could not be loaded", timeout=WAIT_MS)
    assert "(demo stays loaded)" in page.locator("#model-status").inner_text()
    page.wait_for_function("() => document.querySelector('#model input').value === 'demo'", timeout=WAIT_MS)
    still_there()

    fake = tmp_path / "notes.wav"
    fake.write_text("this is not audio")
    open_section(page, "Init audio (audio-to-audio)")
    page.set_input_files("#init-audio input[type=file]", str(fake))
    page.wait_for_selector("#mode >> text=audio-to-audio", timeout=WAIT_MS)
    message = generate_refused(page)
    assert "Init audio: 'notes.wav' is not a readable audio file (wav, flac, ogg or mp3)" in message
    assert str(tmp_path) not in message and "/tmp/gradio" not in message
    still_there()
    page.screenshot(path=str(ARTIFACTS / "ui_errors.png"), full_page=True)

    terminal = server.output()[log_before:]
    assert "Traceback" not in terminal, terminal
    assert len([line for line in terminal.splitlines() if "could not be loaded" in line]) == 1  # one line each

    page.click("#back-to-text")  # and the page still generates
    page.wait_for_selector("#mode >> text=text-to-audio", timeout=WAIT_MS)
    generate(page)
    assert download_link(page) != result


def test_stop_ends_a_running_generation_and_the_next_one_runs(page: Page) -> None:
    type_text(page, "#prompt textarea", "sine a4")
    set_number(page, "steps", 1000)
    set_number(page, "seconds", 6)
    click_generate(page)
    handle = page.wait_for_function(
        r"() => document.body.innerText.match(/(\d+)\s*\/\s*1000/)?.[1] ?? null", timeout=WAIT_MS)
    seen = int(handle.json_value())
    page.click("#stop")
    page.wait_for_selector("#message >> text=Stopped after step", timeout=WAIT_MS)
    stopped = re.search(r"Stopped after step (\d+) of 1000; the previous results are kept\.",
                        page.locator("#message").inner_text())
    assert stopped and seen <= int(stopped.group(1)) < 1000
    assert page.locator("#output-0 a[download]").count() == 0  # nothing half-made is shown
    set_number(page, "steps", 8)
    set_number(page, "seconds", 1)
    generate(page)
    assert page.locator("#status").inner_text().startswith("Generated 1 x 1.00 s")


def test_a_shipped_lora_picked_by_name_moves_the_pitch_an_octave_up(page: Page) -> None:
    type_text(page, "#prompt textarea", "sine wave a4")
    set_number(page, "seconds", 2)
    type_text(page, "#seed textarea", "7")
    generate(page)
    plain, _, plain_src = fetch_output(page, 0)
    assert peak_hz(plain) == pytest.approx(440, rel=0.03)

    open_section(page, "LoRA")
    page.click("#lora-names input")
    page.get_by_role("option", name="octave-up").click()
    page.keyboard.press("Escape")
    settle(page)
    generate(page)
    raised, _, _ = fetch_output(page, 0, old_src=plain_src)
    assert peak_hz(raised) == pytest.approx(880, rel=0.03)
    assert "lora=octave-up@1" in sf.SoundFile(io.BytesIO(raised)).copy_metadata()["comment"]


def test_an_example_fills_the_prompt_and_unknown_words_are_named(page: Page) -> None:
    first = page.locator("#examples button").first
    text = first.inner_text().strip()
    first.click()
    page.wait_for_function(f"() => document.querySelector('#prompt textarea').value === {text!r}",
                           timeout=WAIT_MS)
    assert page.locator("#prompt-note .md").inner_text().strip() == ""  # the demo knows its examples' words
    type_text(page, "#prompt textarea", "a cello playing sine a4")
    page.wait_for_function("() => document.querySelector('#prompt-note .md').innerText.includes(\"'cello'\")",
                           timeout=WAIT_MS)
    assert "'playing'" in page.locator("#prompt-note .md").inner_text()


def test_inpainting_with_an_uploaded_file(page: Page, tmp_path: Path) -> None:
    t = torch.arange(SR) / SR
    src = write_audio(tmp_path / "tone.wav", torch.stack([torch.sin(2 * math.pi * 220 * t)] * 2) * 0.5)
    type_text(page, "#prompt textarea", "sine a4")
    set_number(page, "seconds", 2)
    type_text(page, "#seed textarea", "5")
    generate(page)
    plain, _, plain_src = fetch_output(page, 0)
    assert "seed=5 " in sf.SoundFile(io.BytesIO(plain)).copy_metadata()["comment"]

    open_section(page, "Inpainting / continuation")
    page.set_input_files("#inpaint-audio input[type=file]", str(src))
    page.wait_for_selector("#inpaint-audio audio[src]", state="attached", timeout=WAIT_MS)
    type_text(page, "#regions textarea", "0.5-1.0, 1.5-1.8")
    generate(page)
    data, decoded, _ = fetch_output(page, 0, old_src=plain_src)
    inpainted, sr = sf.read(io.BytesIO(data), dtype="float32")
    assert sr == SR and inpainted.shape == (2 * SR, 2) and decoded == pytest.approx(2.0, abs=0.01)
    comment = sf.SoundFile(io.BytesIO(data)).copy_metadata()["comment"]
    assert "seed=5 " in comment and "inpaint_audio=tone.wav" in comment
    assert data != plain  # same seed, so only the uploaded audio and regions can have changed it
    page.screenshot(path=str(ARTIFACTS / "ui_inpainting.png"), full_page=True)
