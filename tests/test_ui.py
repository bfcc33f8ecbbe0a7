"""The Gradio app, driven by headless Chromium the way a person uses it.

Needs gradio, playwright (the Python package only) and a system Chromium (`/usr/bin/chromium`,
or $SA3_CHROMIUM); outside CI the browser tests skip when one is missing, in CI they fail.
Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf
import torch
from golden import fixture_dir

from stable_audio_3.audio import write_audio
from stable_audio_3.request import FIELDS, LOAD_FIELDS, PYTHON_ONLY, GenerationRequest, LoadOptions, OptionError


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI needs the browser test tools: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    import gradio as gr
except ImportError:
    _missing("gradio is not installed (pip install -e '.[ui]')")
try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:
    _missing("playwright is not installed (pip install -e '.[test]')")

from stable_audio_3 import ui  # noqa: E402

# Gradio's queue calls pandas options that pandas 3 deprecates; nothing to do with this project.
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

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
WAIT_MS = 90_000  # one generation on the tiny model takes a few seconds on 2 busy cores


# -- parsing (no browser) -------------------------------------------------------------------------


def test_parse_regions() -> None:
    assert ui.parse_regions("1.0-2.0, 3.5 - 4", ) == [(1.0, 2.0), (3.5, 4.0)]
    assert ui.parse_regions("  ") == []
    with pytest.raises(OptionError, match="'2-1' ends before it starts"):
        ui.parse_regions("2-1")
    with pytest.raises(OptionError, match="'1-x' is not START-END") as e:
        ui.parse_regions("0-1, 1-x")
    assert ui.label_of(e.value.field) == "Inpaint regions"


def test_parse_shift() -> None:
    assert ui.parse_shift("model default", "anything") is None
    assert ui.parse_shift("logsnr", ui.SHIFT_PARAMS["logsnr"]) == {
        "type": "logsnr",
        "anchor_length": 2000.0,
        "anchor_logsnr": -6.2,
        "rate": 0.0,
        "logsnr_end": 2.0,
    }
    assert ui.parse_shift("none", "") == {"type": "none"}
    with pytest.raises(OptionError, match="'rate' is not name=number"):
        ui.parse_shift("logsnr", "rate")


def test_parse_seeds_follows_the_request_rule() -> None:
    """One number stays one number (one generator for the batch), a list is per item: no s, s+1 expansion."""
    assert ui.parse_seeds("5") == 5
    assert ui.parse_seeds(" -1 ") == -1
    assert ui.parse_seeds("3, 4 7") == [3, 4, 7]
    assert ui.parse_seeds(str(2**63 - 1)) == 2**63 - 1  # exact: the box is text, not a JS number
    for bad in ("", "1.5", "abc"):
        with pytest.raises(OptionError, match="whole number"):
            ui.parse_seeds(bad)


def test_model_holder_loads_swaps_and_drops_loras() -> None:
    holder = ui.ModelHolder(LoadOptions(device="cpu"))
    model = holder.get(str(fixture_dir("tiny-small")))
    lora = str(fixture_dir("tiny-small") / "lora" / "lora_a.safetensors")
    holder.set_loras([lora], [0.5])
    assert len(model.loras) == 1 and model.loras.strengths == [0.5]
    with pytest.raises(gr.Error, match="2 values for 1 LoRA files"):
        holder.set_loras([lora], [0.5, 1.0])
    holder.set_loras([], [1.0])
    assert len(model.loras) == 0
    with pytest.raises(gr.Error, match="Model '/no/such/folder' could not be loaded"):
        holder.get("/no/such/folder")
    assert holder.get(str(fixture_dir("tiny-small"))) is model  # the loaded model stays


# -- the controls and the generation function (no browser) ----------------------------------------


@pytest.fixture(scope="module")
def app() -> gr.Blocks:
    return ui.build_app(str(fixture_dir("tiny-small")), LoadOptions(device="cpu"))


def untouched_values(app: gr.Blocks) -> dict:
    """What Generate sends when nobody touched a control: each control read from its components' values."""
    return ui.read_values(app.controls, {c: c.value for control in app.controls.values() for c in control.components})


def test_control_specs_cover_the_request_with_its_defaults_and_bounds(tmp_path: Path) -> None:
    """Every field a page can carry has a control whose default, bounds and choices are the type's
    (from_model fields: the loaded model's); a None the page shows as a value is what None resolves to."""
    defaults = ui.ModelHolder(LoadOptions(device="cpu")).get(str(fixture_dir("tiny-small"))).defaults
    specs = ui.control_specs(defaults)
    assert set(specs) == set(FIELDS) - PYTHON_ONLY
    from_model = {"duration": defaults.duration, "steps": defaults.steps, "cfg_scale": defaults.cfg_scale,
                  "sampler_type": defaults.sampler, "sample_size": defaults.max_samples}
    assert set(from_model) == {n for n, f in FIELDS.items() if f.metadata["from_model"]}
    tone = write_audio(tmp_path / "tone.wav", torch.zeros(2, SR))
    resolved = GenerationRequest(prompt="x", init_audio=str(tone)).resolve(defaults)
    for name, spec in specs.items():
        f, meta = FIELDS[name], FIELDS[name].metadata
        type_default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if meta["from_model"]:
            assert spec["default"] == from_model[name], name
        elif type_default is None and spec["default"] is not None:
            assert spec["default"] == getattr(resolved, name), name  # batch_size 1, init_noise_level 0.9
        else:
            assert spec["default"] == type_default, name
        assert spec["minimum"] == meta["low"], name
        if meta["high"] is not None:
            assert spec["maximum"] == meta["high"], name
        if meta["choices"]:
            assert tuple(spec["choices"]) == tuple(meta["choices"]), name
        if spec["widget"] == "slider":
            assert spec["minimum"] <= spec["default"] <= spec["maximum"], name
    # Bounds the metadata leaves to the model: the model's limit (seconds: rounded down to 1/100 s).
    assert defaults.max_duration - 0.01 < specs["duration"]["maximum"] <= defaults.max_duration
    assert specs["sample_size"]["maximum"] == defaults.max_samples
    # The untouched page asks for exactly what the type's defaults ask.
    page = {name: spec["default"] for name, spec in specs.items()}
    assert GenerationRequest(**{**page, "prompt": "x"}).resolve(defaults) == \
        GenerationRequest(prompt="x").resolve(defaults)


def test_page_components_are_made_from_the_specs(app: gr.Blocks) -> None:
    specs = ui.control_specs(app.holder.model.defaults)
    assert set(app.controls) == set(specs)
    assert untouched_values(app) == {name: spec["default"] for name, spec in specs.items()}
    for name, spec in specs.items():
        first = app.controls[name].components[0]
        if spec["widget"] in ("slider", "number", "pair"):
            assert (first.minimum, first.maximum) == (spec["minimum"], spec["maximum"]), name
        if spec["widget"] == "dropdown":
            assert [c[1] for c in first.choices] == list(spec["choices"]), name
        label = spec["label"] if spec["widget"] != "pair" else f"{spec['label']} min"
        assert first.label == label, name


def test_generate_writes_each_item_with_the_request_seed_rule(app: gr.Blocks) -> None:
    values = untouched_values(app) | {"prompt": "a tone", "duration": 1.0, "steps": 2, "batch_size": 2, "seed": 5}
    *_, paths, status = ui.generate(app.holder, app.out_dir, values)
    assert status.startswith("Generated 2 x 1.00 s") and "one generator for the batch" in status
    for i, path in enumerate(paths):
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.frames) == (SR, 2, SR)
        comment = sf.SoundFile(path).copy_metadata()["comment"]
        assert comment.startswith(f"seed=5 batch_size=2 item={i} ") and "steps=2 " in comment
    *_, paths, status = ui.generate(app.holder, app.out_dir, values | {"seed": [3, 4]})
    assert [sf.SoundFile(p).copy_metadata()["comment"].split()[0] for p in paths] == ["seed=3", "seed=4"]
    assert "one generator" not in status


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "Steps=0 is invalid"),
        ({"prompt": None}, "Prompt=None is invalid"),
        ({"duration": 0.0}, "Seconds total=0.0 is invalid"),
        ({"duration": 500.0}, "Seconds total: duration=500 is too long"),  # checked against the model
        ({"continuation": True}, "Continuation: continuation=True needs inpaint_audio"),
        ({"lora_configs": [{"lora_index": -1}]}, "LoRA sampling controls (JSON)[0].lora_index=-1 is invalid"),
    ],
)
def test_refused_options_show_the_control_label(app: gr.Blocks, changes: dict, message: str) -> None:
    values = untouched_values(app) | {"prompt": "x", "duration": 1.0} | changes
    with pytest.raises(gr.Error) as e:
        ui.generate(app.holder, app.out_dir, values)
    assert message in e.value.message


def test_picking_another_model_moves_the_model_controls(app: gr.Blocks) -> None:
    on_change = next(f.fn for f in app.fns.values() if getattr(f.fn, "__name__", "") == "on_model_change")
    small, medium = str(fixture_dir("tiny-small")), str(fixture_dir("tiny-medium"))
    try:
        status, *updates = on_change(medium)
        specs = ui.control_specs(app.holder.model.defaults)
    finally:
        on_change(small)
    assert status == f"Loaded: `{medium}`"
    from_model = [n for n in specs if FIELDS[n].metadata["from_model"]]
    for name, update in zip(from_model, updates, strict=True):
        assert update["value"] == specs[name]["default"], name
        assert update.get("maximum", specs[name]["maximum"]) == specs[name]["maximum"], name
    assert specs["sample_size"]["maximum"] > ui.control_specs(app.holder.model.defaults)["sample_size"]["maximum"]


def test_launch_flags_come_from_the_load_options() -> None:
    parser = ui.build_parser()
    args = parser.parse_args([])
    assert {name: getattr(args, name) for name in LOAD_FIELDS} == dataclasses.asdict(LoadOptions())
    args = parser.parse_args(["--device", "cpu", "--attention-padding", "zero-values", "--precision", "int8",
                              "--compile"])
    assert (args.device, args.attention_padding, args.precision, args.compile) == ("cpu", "zero-values", "int8",
                                                                                 True)
    assert parser.parse_args(["--no-half"]).dtype == "float32"
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "float64"])
    with pytest.raises(SystemExit):
        ui.main(["--precision", "int8", "--device", "cuda"])


# -- the page -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory):
    """`stable-audio-ui` as a user starts it (default host: 127.0.0.1), on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path_factory.mktemp("ui") / "server.log").open("w+")
    command = [
        sys.executable,
        "-m",
        "stable_audio_3.ui",
        "--model",
        str(fixture_dir("tiny-small")),
        "--device",
        "cpu",
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            log.seek(0)
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"stable-audio-ui did not start:\n{log.read()}")
            time.sleep(0.5)
    yield url
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
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
def page(browser, app_url) -> Page:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(app_url)
    page.wait_for_selector("#prompt textarea", timeout=WAIT_MS)
    yield page
    page.close()


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


def settle(page: Page) -> None:
    """Give Gradio a moment to take in a typed value before the next click. A click that follows
    typing within a few milliseconds (no person is that fast) can reach the server with the old value."""
    page.wait_for_timeout(300)


def generate(page: Page) -> None:
    """Click Generate and wait for a new first output (failing on an error message instead)."""
    link = "document.querySelector('#output-0 a[download]')"
    before = page.evaluate(f"() => {link}?.href ?? null")
    page.click("#generate")
    page.wait_for_function(
        f"prev => ({link}?.href ?? null) !== prev || document.querySelector('[data-testid=toast-text]') !== null",
        arg=before,
        timeout=WAIT_MS,
    )
    toast = page.locator("[data-testid=toast-text]")
    assert toast.count() == 0, f"the page shows an error: {toast.all_inner_texts()}"


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
    href = page.locator(f"#output-{index} a[download]").get_attribute("href")
    response = page.request.get(href)
    assert response.ok, href
    return response.body(), decoded, src


def test_text_to_audio_batch(page: Page) -> None:
    type_text(page, "#prompt textarea", "a short test tone")
    set_number(page, "seconds", 2)
    set_number(page, "batch-size", 2)
    generate(page)
    page.wait_for_selector("#status >> text=Generated 2 x 2.00 s", timeout=WAIT_MS)
    for i in range(2):
        data, decoded, _ = fetch_output(page, i)
        info = sf.info(io.BytesIO(data))
        assert (info.samplerate, info.channels, info.frames) == (SR, 2, 2 * SR)
        assert decoded == pytest.approx(2.0, abs=0.01)
        assert sf.SoundFile(io.BytesIO(data)).copy_metadata()["title"] == "a short test tone"
    assert page.locator("#spectrogram-1 img").is_visible()
    assert not page.locator("#output-2").is_visible() and not page.locator("#spectrogram-2").is_visible()
    page.screenshot(path=str(ARTIFACTS / "ui_text_to_audio.png"), full_page=True)


def expect_error(page: Page, text: str) -> None:
    """Wait for the page's error message, check it says `text`, close it (it covers the Generate button)."""
    toast = page.locator("[data-testid=toast-text]")
    toast.first.wait_for(timeout=WAIT_MS)
    messages = toast.all_inner_texts()
    assert any(text in m for m in messages), messages
    page.click("[data-testid=toast-close]")
    toast.first.wait_for(state="detached", timeout=WAIT_MS)


def test_bad_values_show_an_error_in_the_page(page: Page) -> None:
    type_text(page, "#prompt textarea", "x")
    set_number(page, "seconds", 0)
    page.click("#generate")
    page.locator("[data-testid=toast-text]").first.wait_for(timeout=WAIT_MS)
    page.screenshot(path=str(ARTIFACTS / "ui_error_seconds.png"))
    expect_error(page, "Seconds total=0.0 is invalid")
    set_number(page, "seconds", 2)
    open_section(page, "Inpainting / continuation")
    type_text(page, "#regions textarea", "1.0-abc")
    page.click("#generate")
    expect_error(page, "Inpaint regions: '1.0-abc' is not START-END in seconds")
    type_text(page, "#regions textarea", "")
    open_section(page, "Advanced")
    type_text(page, "#lora-configs textarea", "[{lora_index: 0}]")
    page.screenshot(path=str(ARTIFACTS / "ui_advanced.png"), full_page=True)
    page.click("#generate")
    expect_error(page, "LoRA sampling controls (JSON): not valid JSON")
    picker = page.locator("#model input")
    picker.fill("/no/such/model")
    picker.press("Enter")
    expect_error(page, "Model '/no/such/model' could not be loaded")


def test_inpainting_with_an_uploaded_file(page: Page, tmp_path: Path) -> None:
    t = torch.arange(SR) / SR
    src = write_audio(tmp_path / "tone.wav", torch.stack([torch.sin(2 * math.pi * 220 * t)] * 2) * 0.5)
    type_text(page, "#prompt textarea", "a tone")
    set_number(page, "seconds", 2)
    open_section(page, "Sampler params")
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
    assert "seed=5 " in sf.SoundFile(io.BytesIO(data)).copy_metadata()["comment"]
    assert data != plain  # same seed, so only the uploaded audio and regions can have changed it
    page.screenshot(path=str(ARTIFACTS / "ui_inpainting.png"), full_page=True)
