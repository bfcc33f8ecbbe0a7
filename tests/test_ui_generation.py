"""The page's logic without a browser: parsing, the controls made from the request, the generation
function (files, seeds, refusals, Stop, uploads, LoRAs by name), the spectrogram and the command's flags.
The browser tests are in test_ui.py."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from golden import fixture_dir

from stable_audio_3.audio import write_audio
from stable_audio_3.request import FIELDS, LOAD_FIELDS, PYTHON_ONLY, GenerationRequest, LoadOptions, OptionError

try:
    import gradio as gr
except ImportError:
    if os.environ.get("CI"):
        pytest.fail("CI needs gradio (pip install -e '.[ui]')", pytrace=False)
    pytest.skip("gradio is not installed (pip install -e '.[ui]')", allow_module_level=True)

from stable_audio_3 import ui  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")
SR = 44100


# -- parsing ----------------------------------------------------------------------------------------


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
    with pytest.raises(gr.Error, match="2 values for 1 LoRAs"):
        holder.set_loras([lora], [0.5, 1.0])
    holder.set_loras([], [1.0])
    assert len(model.loras) == 0
    with pytest.raises(gr.Error, match="Model '/no/such/folder' could not be loaded"):
        holder.get("/no/such/folder")
    assert holder.get(str(fixture_dir("tiny-small"))) is model  # the loaded model stays


# -- the controls and the generation function --------------------------------------------------------


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
        if meta["low"] is not None and meta["low_open"]:  # (0, ...]: the first valid step, never the bound
            assert meta["low"] < spec["minimum"] <= meta["low"] + 0.1, name
            GenerationRequest(prompt="x", **{name: spec["minimum"]}).verify()
        else:
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
    # Paste-back's checkbox reads off until an inpaint clip arrives (then the model's recommendation,
    # test_inpainting_starts_with_the_model_cards_settings); the request's own default is None.
    assert untouched_values(app) == {name: spec["default"] for name, spec in specs.items()} | {
        "inpaint_paste_back": False}
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
    result = ui.generate(app.holder, app.out_dir, values)
    assert result.status.startswith("Generated 2 x 1.00 s") and "seed 5 (one generator for the batch)" in result.status
    assert result.seeds == [5, 5] and len(result.images) == 2
    for i, path in enumerate(result.paths):
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.frames) == (SR, 2, SR)
        comment = sf.SoundFile(path).copy_metadata()["comment"]
        assert comment.startswith(f"seed=5 batch_size=2 item={i} ") and "steps=2 " in comment
    result = ui.generate(app.holder, app.out_dir, values | {"seed": [3, 4]})
    assert [sf.SoundFile(p).copy_metadata()["comment"].split()[0] for p in result.paths] == ["seed=3", "seed=4"]
    assert result.seeds == [3, 4] and "seeds 3, 4." in result.status and "one generator" not in result.status


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


def handler(app: gr.Blocks, name: str):
    """The page's event function called `name` (to run it as Gradio would, without a browser)."""
    return next(f.fn for f in app.fns.values() if getattr(f.fn, "__name__", "") == name)


def test_picking_another_model_moves_the_model_controls(app: gr.Blocks) -> None:
    on_change = handler(app, "on_model_change")
    small, medium = str(fixture_dir("tiny-small")), str(fixture_dir("tiny-medium"))
    try:
        status, picker, *updates = on_change(medium, "x")
        specs = ui.control_specs(app.holder.model.defaults)
    finally:
        on_change(small, "x")
    assert status == f"Loaded: `{medium}`" and picker == gr.skip()
    from_model = [n for n in specs if FIELDS[n].metadata["from_model"]]
    updates, (loras, examples, advice, note) = updates[:-4], updates[-4:]
    assert loras["choices"] == [] and loras["visible"] is False  # the fixture models ship no LoRA
    assert "samples" in examples and advice.startswith("**Paste back**") and isinstance(note, str)
    for name, update in zip(from_model, updates, strict=True):
        assert update["value"] == specs[name]["default"], name
        assert update.get("maximum", specs[name]["maximum"]) == specs[name]["maximum"], name
    assert specs["sample_size"]["maximum"] > ui.control_specs(app.holder.model.defaults)["sample_size"]["maximum"]


def test_a_model_that_does_not_load_leaves_the_controls_alone(app: gr.Blocks) -> None:
    small = str(fixture_dir("tiny-small"))
    status, picker, *updates = handler(app, "on_model_change")("/no/such/model", "x")
    assert status.startswith(f"⚠️ Model '/no/such/model' could not be loaded (`{small}` stays loaded): ")
    assert picker["value"] == small  # the list shows the model that Generate will use
    assert updates and all(u == gr.skip() for u in updates)  # no slider, list or note is touched
    assert app.holder.name == small
    # Putting the loaded model's name back (the list does so) changes nothing, the message included.
    assert all(u == gr.skip() for u in handler(app, "on_model_change")(small, "x"))


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




def test_launch_takes_the_names_of_shipped_loras(capsys: pytest.CaptureFixture) -> None:
    assert ui.split_loras("demo", ["octave-up", "/some/file.safetensors"]) == (["octave-up"],
                                                                              ["/some/file.safetensors"])
    with pytest.raises(SystemExit):
        ui.main(["--device", "cpu", "--lora-ckpt-path", "octave-down"])
    assert "--lora-ckpt-path: file not found: octave-down (LoRAs shipped with demo: octave-up)" in \
        capsys.readouterr().err


# -- Stop, uploads, the spectrogram ----------------------------------------------------------------


def test_stop_ends_the_run_after_the_current_step_and_the_next_run_starts(app: gr.Blocks) -> None:
    values = untouched_values(app) | {"prompt": "x", "duration": 1.0, "steps": 50, "seed": 1}
    seen = []

    def progress(step_total, **_) -> None:  # Stop is pressed while step 2 runs
        seen.append(step_total[0])
        if step_total[0] == 2:
            app.holder.stop.set()

    with pytest.raises(ui.Stopped, match=r"^Stopped after step 2 of 50; the previous results are kept\.$"):
        ui.generate(app.holder, app.out_dir, values, progress=progress)
    assert seen == [1, 2]
    result = ui.generate(app.holder, app.out_dir, values | {"steps": 2})
    assert result.status.startswith("Generated 1 x 1.00 s") and sf.info(result.paths[0]).frames == SR


def test_an_upload_that_is_not_audio_is_refused_with_the_field_and_file_name(app: gr.Blocks, tmp_path: Path) -> None:
    fake = tmp_path / "notes.wav"
    fake.write_text("not audio")
    values = untouched_values(app) | {"prompt": "x", "duration": 1.0}
    with pytest.raises(gr.Error) as e:
        ui.generate(app.holder, app.out_dir, values | {"init_audio": str(fake)})
    assert e.value.message == "Init audio: 'notes.wav' is not a readable audio file (wav, flac, ogg or mp3)"
    with pytest.raises(gr.Error) as e:
        ui.generate(app.holder, app.out_dir, values | {"inpaint_audio": str(fake), "continuation": True})
    assert e.value.message.startswith("Inpaint audio: 'notes.wav' is not a readable audio file")


def test_mode_line_says_what_generate_will_do() -> None:
    assert ui.mode_text(None, None, False, False) == "Mode: **text-to-audio**"
    assert ui.mode_text("a.wav", None, False, False) == "Mode: **audio-to-audio**"
    assert ui.mode_text(None, "b.wav", False, True) == "Mode: **inpainting** (paste back on)"
    assert ui.mode_text("a.wav", "b.wav", True, False) == "Mode: **continuation** (paste back off)"


@pytest.mark.parametrize("hz", [110.0, 880.0])
def test_spectrogram_frequency_axis_is_logarithmic(hz: float) -> None:
    """A tone's line sits where the log axis puts its frequency (on a linear axis 110 Hz would be at
    the bottom edge); the labelled margins hold ink."""
    from stable_audio_3.ui import spectrogram as s

    t = torch.arange(2 * SR) / SR
    image = ui.spectrogram_image(torch.stack([torch.sin(2 * math.pi * hz * t)] * 2), SR)
    assert image.size == (1000, 300)
    pixels = np.asarray(image.convert("L"), dtype=np.float32)
    plot_h = 300 - s.TOP - s.BOTTOM
    rows = pixels[s.TOP:s.TOP + plot_h, s.LEFT + 50:1000 - s.RIGHT - 50].mean(axis=1)
    expected = plot_h - 1 - math.log(hz / s.F_MIN) / math.log(SR / 2 / s.F_MIN) * (plot_h - 1)
    assert abs(int(rows.argmax()) - expected) <= 3
    assert pixels[:, : s.LEFT - 10].min() < 128 and pixels[300 - s.BOTTOM + 6:, s.LEFT:].min() < 128  # labels


# -- the demo's page: shipped LoRAs, examples, unknown words, inpainting advice ----------------------


@pytest.fixture(scope="module")
def demo_app() -> gr.Blocks:
    return ui.build_app("demo", LoadOptions(device="cpu"), ["octave-up"])


def by_id(app: gr.Blocks, elem_id: str):
    return next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_demo_page_offers_its_loras_examples_and_vocabulary(demo_app: gr.Blocks) -> None:
    from stable_audio_3.vocabulary import example_prompts, unknown_words

    names = by_id(demo_app, "lora-names")
    assert [c[1] for c in names.choices] == ["octave-up"] and names.value == ["octave-up"]  # --lora-ckpt-path
    samples = by_id(demo_app, "examples").samples
    model = demo_app.holder.model
    assert samples == [[p] for p in example_prompts(model)] and samples
    assert all(unknown_words(model, p) == [] for [p] in samples)
    assert {"generate", "stop"} <= {f.api_name for f in demo_app.fns.values()}  # for gradio_client too
    note = handler(demo_app, "on_prompt")
    assert "'cello'" in note("a cello sine a4") and note("sine a4") == ""


def test_inpainting_starts_with_the_model_cards_settings(demo_app: gr.Blocks, app: gr.Blocks) -> None:
    """The demo's card recommends paste-back for inpainting and continuation: a new inpaint clip turns it
    on (the fixture model has no such advice); clearing the clip turns paste-back and continuation off."""
    assert handler(demo_app, "on_inpaint_audio")("x.wav")[0]["value"] is True
    assert "model card recommends" in by_id(demo_app, "inpaint-advice").value
    assert handler(app, "on_inpaint_audio")("x.wav")[0]["value"] is False
    assert [u["value"] for u in handler(demo_app, "on_inpaint_audio")(None)] == [False, False]
