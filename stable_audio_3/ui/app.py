"""The page, its event handlers, and the `stable-audio-ui` command.

A handler never raises for a person's mistake: the message goes to one place (the message line under
Generate, or the model's status line) and names the control, every other output is left as it was
(`gr.skip()`), and the terminal gets one log line instead of a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from .. import request
from ..loading import DEMO_MODEL, DIFFUSION_MODELS
from ..loading.configs import bundled_loras, local_model_folder
from ..request import FIELDS, LoadOptions, OptionError
from .controls import REGION_FIELDS, Control, make_control, specs, updates_for
from .generation import FORMATS, MAX_PLAYERS, ModelHolder, Stopped, generate, inpaint_advice, page_errors, refused
from .longform import long_form_page

log = logging.getLogger("stable_audio_3.ui")

# Where each request field sits: (accordion title or "" for the main column, rows of field names).
PROMPT_ROW = ("prompt", "negative_prompt")
SECTIONS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("", (("duration",), ("steps", "cfg_scale"), ("batch_size", "seed"))),
    ("Sampler params", (("sampler_type",), ("cfg_interval",), ("scale_phi", "apg_scale"),
                        ("cfg_norm_threshold", "duration_padding_sec"), ("dist_shift",))),
    ("Init audio (audio-to-audio)", (("init_audio",), ("init_noise_level",))),
    ("Inpainting / continuation", (("inpaint_audio",), (REGION_FIELDS[0],), ("continuation", "inpaint_paste_back"))),
    ("Advanced", (("sample_size", "chunked_decode", "clamp"), ("lora_configs",))),
)
# Page settings that are not request fields; `generate` finds them in its values under these names.
SETTINGS = ("model", "lora_names", "lora_files", "lora_strengths", "file_format", "file_naming")
CSS = """
#message, #message * { color: #b42318; font-weight: 600; }
#prompt-note, #prompt-note * { color: #8a5a00; }
"""


def read_values(controls: dict[str, Control], data: dict) -> dict[str, Any]:
    """Request values by field name from the components' values ({component: value}, as Gradio passes them)."""
    values: dict[str, Any] = {}
    for control in {id(c): c for c in controls.values()}.values():
        values.update(control.read(*(data[c] for c in control.components)))
    return values


def mode_text(init_audio, inpaint_audio, continuation: bool, paste_back: bool) -> str:
    """What Generate will do with the audio inputs as they are now."""
    if inpaint_audio:
        kind = "continuation" if continuation else "inpainting"
        return f"Mode: **{kind}** (paste back {'on' if paste_back else 'off'})"
    if init_audio:
        return "Mode: **audio-to-audio**"
    return "Mode: **text-to-audio**"


def prompt_note(holder: ModelHolder, prompt: str) -> str:
    """For a model with a small vocabulary (the demo): the words of the prompt it does not know."""
    if holder.model is None or not (prompt or "").strip():
        return ""
    from ..vocabulary import describe_unknown, unknown_words

    return describe_unknown(unknown_words(holder.model, prompt))


def example_prompts(holder: ModelHolder) -> list[list[str]]:
    if holder.model is None:
        return []
    from ..vocabulary import example_prompts as examples

    return [[p] for p in examples(holder.model)]


def split_loras(model: str, given: list[str] | None) -> tuple[list[str], list[str]]:
    """`--lora-ckpt-path` values as (names of LoRAs shipped with `model`, files)."""
    shipped = bundled_loras(local_model_folder(model))
    names = [g for g in given or [] if g in shipped and not Path(g).is_file()]
    return names, [g for g in given or [] if g not in names]


# -- the page ------------------------------------------------------------------------------------


def build_app(
    model: str = DEMO_MODEL,
    load: LoadOptions | None = None,
    lora_files: list[str] | None = None,
    title: str = "Stable Audio 3",
) -> gr.Blocks:
    """The page. `app.controls` maps each request field to its control, `app.out_dir` holds the files.
    `lora_files`: files, or names of LoRAs shipped with `model` (picked in the page's LoRA list)."""
    holder = ModelHolder(load)
    out_dir = Path(tempfile.mkdtemp(prefix="stable-audio-ui-"))
    load_error = None
    try:
        holder.get(model)
    except gr.Error as e:
        load_error = refused("model", e.message)
    page_specs = specs(holder.model.defaults if holder.model is not None else None)
    placed = {REGION_FIELDS[1]} | set(PROMPT_ROW) | {n for _, rows in SECTIONS for row in rows for n in row}
    if placed != set(page_specs):  # a new request field needs a place in SECTIONS
        raise RuntimeError(f"SECTIONS and the request's fields differ: {sorted(set(page_specs) ^ placed)}")
    lora_names, lora_paths = split_loras(model, lora_files)
    controls: dict[str, Control] = {}
    sections: dict[str, gr.Accordion] = {}
    settings: dict[str, gr.components.Component] = {}

    def add(names: tuple[str, ...], compact: bool = False) -> None:
        for name in names:
            control = make_control(page_specs[name], compact=compact)
            controls.update(dict.fromkeys(control.names, control))

    def component(name: str):
        return controls[name].components[0]

    with gr.Blocks(title=title, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"### {title}")
        with gr.Row():
            with gr.Column(scale=6):
                add(PROMPT_ROW, compact=True)
            with gr.Column(scale=1, min_width=160):
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
        note = gr.Markdown(prompt_note(holder, page_specs["prompt"].default), elem_id="prompt-note")
        message = gr.Markdown("", elem_id="message")
        examples = gr.Dataset(components=[component("prompt")], samples=example_prompts(holder),
                              label="Example prompts (click one to use it)", samples_per_page=20,
                              elem_id="examples")
        with gr.Row(equal_height=False):
            with gr.Column():
                settings["model"] = gr.Dropdown(
                    [DEMO_MODEL, *DIFFUSION_MODELS], value=model, allow_custom_value=True,
                    label="Model (a name, or the path of a local model folder)", elem_id="model")
                model_status = gr.Markdown(load_error or f"Loaded: `{model}`", elem_id="model-status")
                for section, rows in SECTIONS:
                    with gr.Accordion(section, open=False) if section else contextlib.nullcontext() as box:
                        for row in rows:
                            with gr.Row():
                                add(row)
                        if section.startswith("Inpainting"):
                            advice = gr.Markdown(inpaint_advice(holder.name)[1], elem_id="inpaint-advice")
                    sections[section] = box
                    if not section:
                        with gr.Row():
                            mode = gr.Markdown(mode_text(None, None, False, False), elem_id="mode")
                            back = gr.Button("Back to text-to-audio", size="sm", visible=False,
                                             elem_id="back-to-text")
                        with gr.Accordion("LoRA", open=bool(lora_files)):
                            shipped = holder.shipped_loras()
                            settings["lora_names"] = gr.Dropdown(
                                shipped, value=lora_names, multiselect=True, visible=bool(shipped),
                                label="LoRAs shipped with the model", elem_id="lora-names")
                            settings["lora_files"] = gr.File(
                                value=lora_paths or None, file_count="multiple", file_types=[".safetensors"],
                                label="LoRA files (stacked after the shipped ones)", elem_id="lora-files")
                            settings["lora_strengths"] = gr.Textbox(
                                "1.0", label="LoRA strengths (one for all, or one per LoRA: shipped, then files)",
                                elem_id="lora-strengths")
                with gr.Accordion("Output params", open=False), gr.Row():
                    settings["file_format"] = gr.Dropdown(list(FORMATS), value="wav", label="File format")
                    settings["file_naming"] = gr.Dropdown(["verbose", "prompt", "output"], value="verbose",
                                                          label="File naming")
            with gr.Column():
                status = gr.Markdown("", elem_id="status")
                items, players, pictures, reuse, to_init, to_inpaint = [], [], [], [], [], []
                for i in range(MAX_PLAYERS):  # a player, a spectrogram and its buttons per shown batch item
                    with gr.Group(visible=i == 0) as item:
                        players.append(gr.Audio(type="filepath", interactive=False, label=f"Output {i}",
                                                elem_id=f"output-{i}"))
                        pictures.append(gr.Image(type="pil", interactive=False, show_label=False, visible=False,
                                                 elem_id=f"spectrogram-{i}"))
                        with gr.Row():
                            reuse.append(gr.Button("Reuse seed", size="sm", elem_id=f"reuse-seed-{i}"))
                            to_init.append(gr.Button("Send to init audio", size="sm", elem_id=f"to-init-{i}"))
                            to_inpaint.append(gr.Button("Send to inpaint audio", size="sm",
                                                        elem_id=f"to-inpaint-{i}"))
                    items.append(item)
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False)
        seeds = gr.State([])

        # -- the model and its LoRAs, examples and vocabulary --
        from_model = [n for n in page_specs if FIELDS[n].metadata["from_model"]]

        def on_model_change(name, prompt):
            if holder.model is not None and (name or "").strip() == holder.name:
                return (gr.skip(),) * (len(from_model) + 6)  # no change (or the name put back after a failure)
            try:
                with holder.lock:
                    loaded = holder.get(name)
            except gr.Error as e:  # the loaded model stays, and so does every control
                return (refused("model", e.message), gr.update(value=holder.name),
                        *(gr.skip() for _ in range(len(from_model) + 4)))
            new = specs(loaded.defaults)
            names = holder.shipped_loras()
            return (f"Loaded: `{name}`", gr.skip(), *(gr.update(**updates_for(new[n])) for n in from_model),
                    gr.update(choices=names, value=[], visible=bool(names)),
                    gr.update(samples=example_prompts(holder)), inpaint_advice(holder.name)[1],
                    prompt_note(holder, prompt))

        settings["model"].change(on_model_change, [settings["model"], component("prompt")],
                                 [model_status, settings["model"], *(component(n) for n in from_model),
                                  settings["lora_names"], examples, advice, note])

        def on_prompt(prompt):
            return prompt_note(holder, prompt)

        component("prompt").change(on_prompt, component("prompt"), note, show_progress="hidden", queue=False)
        examples.click(lambda sample: sample[0], examples, component("prompt"), show_progress="hidden")

        # -- the audio inputs: the mode, the recommended inpainting settings, the way back --
        audio_state = [component("init_audio"), component("inpaint_audio"), component("continuation"),
                       component("inpaint_paste_back")]

        def on_audio_state(init_audio, inpaint_audio, continuation, paste_back):
            return mode_text(init_audio, inpaint_audio, continuation, paste_back), \
                gr.update(visible=bool(init_audio or inpaint_audio))

        for c in audio_state:
            c.change(on_audio_state, audio_state, [mode, back], show_progress="hidden")

        def on_inpaint_audio(inpaint_audio):
            if inpaint_audio:  # a new clip: start from the model card's recommendation
                return gr.update(value=inpaint_advice(holder.name)[0]), gr.skip()
            return gr.update(value=False), gr.update(value=False)  # nothing to paste back or continue

        component("inpaint_audio").change(on_inpaint_audio, component("inpaint_audio"),
                                          [component("inpaint_paste_back"), component("continuation")],
                                          show_progress="hidden")

        def on_back():
            return None, None, "", False, False, mode_text(None, None, False, False), gr.update(visible=False)

        back.click(on_back, None, [component("init_audio"), component("inpaint_audio"), component(REGION_FIELDS[0]),
                                   component("continuation"), component("inpaint_paste_back"), mode, back])

        # -- each result's buttons --
        for i in range(MAX_PLAYERS):
            reuse[i].click(lambda s, i=i: str(s[i]) if i < len(s) else gr.skip(), seeds, component("seed"))
            to_init[i].click(lambda a: (a, gr.update(open=True)) if a else (gr.skip(), gr.skip()), players[i],
                             [component("init_audio"), sections["Init audio (audio-to-audio)"]])
            to_inpaint[i].click(lambda a: (a, gr.update(open=True)) if a else (gr.skip(), gr.skip()), players[i],
                                [component("inpaint_audio"), sections["Inpainting / continuation"]])

        # -- Generate and Stop --
        outputs = [*items, *players, *pictures, *reuse, downloads, status, seeds, message]

        def run(data: dict, progress=gr.Progress()):  # noqa: B008 (Gradio finds its progress bar by this default)
            unchanged = [gr.skip()] * (len(outputs) - 1)
            try:
                with page_errors():
                    values = read_values(controls, data)
                values.update({name: data[c] for name, c in settings.items()})
                result = generate(holder, out_dir, values, progress=progress)
            except gr.Error as e:
                return (*unchanged, refused("refused", e.message))
            except Stopped as e:
                log.info("%s", e)
                return (*unchanged, str(e))
            except Exception as e:  # a bug, not a mistake: its traceback in the log, the results kept
                log.exception("generation failed")
                return (*unchanged, f"⚠️ Generation failed: {type(e).__name__}: {e}")
            shown = len(result.images)
            hidden = [gr.update(value=None)] * (MAX_PLAYERS - shown)
            return (*(gr.update(visible=i < max(shown, 1)) for i in range(MAX_PLAYERS)),
                    *(gr.update(value=p) for p in result.paths[:shown]), *hidden,
                    *(gr.update(value=im, visible=True) for im in result.images),
                    *[gr.update(value=None, visible=False)] * (MAX_PLAYERS - shown),
                    *(gr.update(value=f"Reuse seed {s}") for s in result.seeds[:shown]),
                    *[gr.update(value="Reuse seed")] * (MAX_PLAYERS - shown),
                    result.paths, result.status, result.seeds, "")

        inputs = {c for control in controls.values() for c in control.components} | set(settings.values())
        busy = dict(concurrency_id="generate", show_progress_on=[*players, *pictures])  # not over the message
        for trigger, api_name in ((generate_button.click, "generate"), (component("prompt").submit, False)):
            # The last message goes at once; the run follows.
            trigger(lambda: "", None, message, queue=False, show_progress="hidden", api_name=False).then(
                run, inputs, outputs, api_name=api_name, **busy)
        stop_button.click(holder.stop.set, queue=False, api_name="stop")
    long_form_page(app, holder, out_dir)  # its own page: a prompt schedule, a player that starts at once
    app.out_dir = out_dir
    app.controls = controls
    app.holder = holder
    app.page_css = CSS
    return app


# -- the command ---------------------------------------------------------------------------------


def add_load_flags(parser: argparse.ArgumentParser) -> None:
    """The shared load flags, plus --no-half, the old spelling of --dtype float32."""
    request.add_load_flags(parser)
    parser.add_argument("--no-half", dest="dtype", action="store_const", const="float32",
                        help="the same as --dtype float32")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stable-audio-ui", description="Stable Audio 3 in the browser (Gradio).")
    p.add_argument(
        "--model", default=DEMO_MODEL, help=f"model name or local model folder to start with (default: {DEMO_MODEL})"
    )
    add_load_flags(p)
    p.add_argument("--lora-ckpt-path", action="extend", nargs="+", metavar="PATH",
                   help="LoRA file(s) or names of LoRAs shipped with the model (the demo's octave-up) to pre-load")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860, or the next free one)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--title", default="Stable Audio 3", help="page title")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        load = LoadOptions.from_namespace(args)
    except OptionError as e:
        parser.error(e.spelled(f"--{e.field.replace('_', '-')}"))
    if load.int8 and args.lora_ckpt_path:
        parser.error(f"--precision {load.precision} cannot be combined with --lora-ckpt-path "
                     "(int8 layers take no LoRA)")
    shipped = bundled_loras(local_model_folder(args.model))
    for path in args.lora_ckpt_path or []:
        if path not in shipped and not Path(path).is_file():
            hint = f" (LoRAs shipped with {args.model}: {', '.join(shipped)})" if shipped else ""
            parser.error(f"--lora-ckpt-path: file not found: {path}{hint}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own health checks
    app = build_app(args.model, load, args.lora_ckpt_path, args.title)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: other machines can reach this page", args.host)
    app.queue().launch(server_name=args.host, server_port=args.port, share=args.share, css=app.page_css,
                       run_history=False, allowed_paths=[str(app.out_dir)])
    return 0
