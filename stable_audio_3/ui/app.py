"""The page, its one generation function, and the `stable-audio-ui` command."""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch

from .. import output, request
from ..loading import DEMO_MODEL, DIFFUSION_MODELS, ModelLoadError
from ..request import FIELDS, GenerationRequest, LoadOptions, OptionError
from .controls import REGION_FIELDS, Control, label_of, make_control, specs, updates_for

log = logging.getLogger("stable_audio_3.ui")

MAX_PLAYERS = 4  # items shown with a player and a spectrogram; every item is in Downloads
FORMATS = {
    "wav": (".wav", None),
    "flac": (".flac", None),
    "mp3 320k": (".mp3", 320),
    "mp3 128k": (".mp3", 128),
    "ogg": (".ogg", None),
}
# Where each request field sits: (accordion title or "" for the main column, rows of field names).
PROMPT_ROW = ("prompt", "negative_prompt")
SECTIONS: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("", (("duration",), ("steps", "cfg_scale"), ("batch_size",))),
    ("Sampler params", (("seed", "sampler_type"), ("cfg_interval",), ("scale_phi", "apg_scale"),
                        ("cfg_norm_threshold", "duration_padding_sec"), ("dist_shift",))),
    ("Init audio (audio-to-audio)", (("init_audio",), ("init_noise_level",))),
    ("Inpainting / continuation", (("inpaint_audio",), (REGION_FIELDS[0],), ("continuation", "inpaint_paste_back"))),
    ("Advanced", (("sample_size", "chunked_decode", "clamp"), ("lora_configs",))),
)
# Page settings that are not request fields; `generate` finds them in its values under these names.
SETTINGS = ("model", "lora_files", "lora_strengths", "file_format", "file_naming")


@contextlib.contextmanager
def page_errors() -> Iterator[None]:
    """Turn a refused option into the page's error message, spelled with the control's label."""
    try:
        yield
    except gr.Error:
        raise
    except OptionError as e:
        raise gr.Error(e.spelled(label_of(e.field))) from e
    except (ValueError, ModelLoadError, OSError) as e:
        raise gr.Error(str(e)) from e


def parse_strengths(text: str) -> list[float]:
    """The LoRA strengths box: numbers separated by commas or spaces; empty is 1.0."""
    try:
        return [float(x) for x in re.split(r"[,\s]+", (text or "").strip()) if x] or [1.0]
    except ValueError:
        raise gr.Error(f"LoRA strengths: {text!r} is not a list of numbers (example: 1.0, 0.5)") from None


def condense(text: str, limit: int = 80) -> str:
    """A prompt as a file-name part: no path separators or shell-hostile characters."""
    return re.sub(r"[^\w.,+-]+", "_", text).strip("_.")[:limit] or "output"


_MAGMA = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], dtype=np.float32)


def spectrogram_image(audio: torch.Tensor, width: int = 800, height: int = 256):
    """Log-magnitude spectrogram of (C, T) audio as a PIL image (low frequencies at the bottom)."""
    from PIL import Image

    mono = audio.detach().float().cpu().mean(0)
    n_fft = 1024
    if mono.numel() < n_fft:
        mono = torch.nn.functional.pad(mono, (0, n_fft - mono.numel()))
    spec = torch.stft(mono, n_fft, hop_length=256, window=torch.hann_window(n_fft), return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp(min=1e-5))
    level = ((db - db.max() + 80) / 80).clamp(0, 1).flip(0).numpy()
    stops = np.linspace(0, 1, len(_MAGMA))
    rgb = np.stack([np.interp(level, stops, _MAGMA[:, c]) for c in range(3)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb).resize((width, height), Image.BILINEAR)


# -- the model -----------------------------------------------------------------------------------


class ModelHolder:
    """The one loaded model, its LoRA files, and a lock: generation and loading never overlap."""

    def __init__(self, load: LoadOptions | None = None):
        self.load = (load or LoadOptions()).verify()
        self.name: str | None = None
        self.model = None
        self.lora_files: list[str] = []
        self.lock = threading.Lock()

    def get(self, name: str):
        name = (name or "").strip()
        if not name:
            raise gr.Error("Model: pick a model name or type the path of a local model folder")
        if self.model is None or name != self.name:
            from ..api import StableAudioModel

            try:
                model = StableAudioModel.from_pretrained(name, **self.load.kwargs())
            except (ModelLoadError, ValueError, OSError) as e:
                raise gr.Error(f"Model {name!r} could not be loaded: {e}") from e
            self.model, self.name, self.lora_files = model, name, []
        return self.model

    def set_loras(self, files: list[str], strengths: list[float]) -> list[float]:
        """Load `files` (unless they are loaded already) and set their strengths: one for all, or one
        each. Returns each file's strength."""
        if len(strengths) > 1 and len(strengths) != len(files):
            raise gr.Error(f"LoRA strengths: {len(strengths)} values for {len(files)} LoRA files; give one or one each")
        if files != self.lora_files:
            self.model.unload_lora()
            self.lora_files = []
            if files:
                try:
                    self.model.load_lora(files)
                except Exception as e:  # a wrong or corrupt file: say which, keep the model usable
                    self.model.unload_lora()
                    raise gr.Error(f"LoRA files could not be loaded: {e}") from e
            self.lora_files = list(files)
        if len(strengths) == 1:
            self.model.set_lora_strength(strengths[0])  # all at once: each layer is rebuilt once
            return strengths * len(files)
        for i, s in enumerate(strengths):
            self.model.set_lora_strength(s, lora_index=i)
        return list(strengths)


# -- generation ----------------------------------------------------------------------------------


def generate(holder: ModelHolder, out_dir: Path, values: dict[str, Any], progress=None):
    """One click of Generate. `values`: request fields by name (unset ones take the request's defaults)
    and the page's SETTINGS. Builds one GenerationRequest, runs it, writes one file per item."""
    with page_errors():
        request = GenerationRequest(**{k: v for k, v in values.items() if k in FIELDS}).verify()
    strengths = parse_strengths(values.get("lora_strengths", ""))
    suffix, mp3_bitrate = FORMATS[values.get("file_format") or "wav"]
    naming = values.get("file_naming") or "verbose"
    lora_files = [str(f) for f in values.get("lora_files") or []]

    def on_step(step: int, total: int, x) -> None:
        if progress is not None:
            progress((step, total), desc="sampling", unit="steps")

    with holder.lock:
        model = holder.get(values.get("model") or holder.name or DEMO_MODEL)
        levels = holder.set_loras(lora_files, strengths)
        started = time.perf_counter()
        with page_errors():
            # Files are peak-limited with one gain (output.save_item), never clipped: run unclamped.
            result = model.run(request.replace(clamp=False), on_step)
        elapsed = time.perf_counter() - started
        model_name = holder.name

    resolved, seeds, sr = result.request, result.seeds, result.sample_rate
    loras = [(Path(f).name, level) for f, level in zip(lora_files, levels, strict=True)]
    paths, images, notes = [], [], []
    for i in range(resolved.batch_size):
        prompt = resolved.prompt[i]
        base = {"verbose": f"{condense(prompt)}.cfg{resolved.cfg_scale:g}.seed{output.item_seed(seeds, i)}",
                "prompt": condense(prompt), "output": "output"}[naming]
        name = f"{base}_{i}{suffix}" if resolved.batch_size > 1 else f"{base}{suffix}"
        folder = Path(tempfile.mkdtemp(dir=out_dir))  # one folder per file: equal names never collide
        audio = output.item_audio(result.audio, resolved, i, sr).cpu()
        meta = output.file_metadata(resolved, seeds, i, model_name, loras)
        wav_bits = 16 if request.clamp else 32  # only a float WAV holds samples beyond [-1, 1]
        path, gain_db = output.save_item(folder / name, audio, sr, meta, bit_depth=wav_bits if suffix == ".wav"
                                         else None, mp3_bitrate=mp3_bitrate, clamp=request.clamp or suffix != ".wav")
        paths.append(str(path))
        if i < MAX_PLAYERS:
            images.append(spectrogram_image(audio))
        notes.append(f"item {i}: seed {output.item_seed(seeds, i)}" + (f", gain {gain_db:.1f} dB" if gain_db else ""))
    shared = " (one generator for the batch)" if resolved.batch_size > 1 and not isinstance(resolved.seed, list) else ""
    status = (f"Generated {resolved.batch_size} x {resolved.duration[0]:.2f} s in {elapsed:.1f} s{shared}. "
              + "; ".join(notes))
    hidden = [gr.update(value=None, visible=False)] * (MAX_PLAYERS - len(images))
    players = [gr.update(value=p, visible=True) for p in paths[:MAX_PLAYERS]] + hidden
    pictures = [gr.update(value=im, visible=True) for im in images] + hidden
    return (*players, *pictures, paths, status)


def read_values(controls: dict[str, Control], data: dict) -> dict[str, Any]:
    """Request values by field name from the components' values ({component: value}, as Gradio passes them)."""
    values: dict[str, Any] = {}
    for control in {id(c): c for c in controls.values()}.values():
        values.update(control.read(*(data[c] for c in control.components)))
    return values


# -- the page ------------------------------------------------------------------------------------


def build_app(
    model: str = DEMO_MODEL,
    load: LoadOptions | None = None,
    lora_files: list[str] | None = None,
    title: str = "Stable Audio 3",
) -> gr.Blocks:
    """The page. `app.controls` maps each request field to its control, `app.out_dir` holds the files."""
    holder = ModelHolder(load)
    out_dir = Path(tempfile.mkdtemp(prefix="stable-audio-ui-"))
    load_error = None
    try:
        holder.get(model)
    except gr.Error as e:
        load_error = e.message
    page_specs = specs(holder.model.defaults if holder.model is not None else None)
    placed = {REGION_FIELDS[1]} | set(PROMPT_ROW) | {n for _, rows in SECTIONS for row in rows for n in row}
    if placed != set(page_specs):  # a new request field needs a place in SECTIONS
        raise RuntimeError(f"SECTIONS and the request's fields differ: {sorted(set(page_specs) ^ placed)}")
    controls: dict[str, Control] = {}

    def add(names: tuple[str, ...], compact: bool = False) -> None:
        for name in names:
            control = make_control(page_specs[name], compact=compact)
            controls.update(dict.fromkeys(control.names, control))

    with gr.Blocks(title=title, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"### {title}")
        with gr.Row():
            with gr.Column(scale=6):
                add(PROMPT_ROW, compact=True)
            generate_button = gr.Button("Generate", variant="primary", scale=1, elem_id="generate")
        with gr.Row(equal_height=False):
            with gr.Column():
                settings: dict[str, gr.components.Component] = {}
                settings["model"] = gr.Dropdown(
                    [DEMO_MODEL, *DIFFUSION_MODELS], value=model, allow_custom_value=True,
                    label="Model (a name, or the path of a local model folder)", elem_id="model")
                model_status = gr.Markdown(load_error or f"Loaded: `{model}`")
                for section, rows in SECTIONS:
                    with gr.Accordion(section, open=False) if section else contextlib.nullcontext():
                        for row in rows:
                            with gr.Row():
                                add(row)
                    if not section:
                        with gr.Accordion("LoRA", open=False):
                            settings["lora_files"] = gr.File(
                                value=lora_files or None, file_count="multiple", file_types=[".safetensors"],
                                label="LoRA files (stacked in order)")
                            settings["lora_strengths"] = gr.Textbox(
                                "1.0", label="LoRA strengths (one for all, or one per file)")
                with gr.Accordion("Output params", open=False), gr.Row():
                    settings["file_format"] = gr.Dropdown(list(FORMATS), value="wav", label="File format")
                    settings["file_naming"] = gr.Dropdown(["verbose", "prompt", "output"], value="verbose",
                                                          label="File naming")
            with gr.Column():
                players, pictures = [], []
                for i in range(MAX_PLAYERS):  # one player and one spectrogram per shown batch item
                    label = f"Output {i}" if i else "Output audio"
                    players.append(gr.Audio(type="filepath", interactive=False, label=label, visible=i == 0,
                                            elem_id=f"output-{i}"))
                    pictures.append(gr.Image(type="pil", interactive=False, show_label=False, visible=False,
                                             height=128, elem_id=f"spectrogram-{i}"))
                status = gr.Markdown("", elem_id="status")
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False)
                with gr.Row():
                    to_init = gr.Button("Send to init audio")
                    to_inpaint = gr.Button("Send to inpaint audio")

        from_model = [n for n in page_specs if FIELDS[n].metadata["from_model"]]

        def on_model_change(name):
            with holder.lock:
                loaded = holder.get(name)
            new = specs(loaded.defaults)
            return (f"Loaded: `{name}`", *(gr.update(**updates_for(new[n])) for n in from_model))

        settings["model"].change(on_model_change, settings["model"],
                                 [model_status, *(controls[n].components[0] for n in from_model)])
        to_init.click(lambda a: a, players[0], controls["init_audio"].components[0])
        to_inpaint.click(lambda a: a, players[0], controls["inpaint_audio"].components[0])

        def run(data: dict, progress=gr.Progress()):  # noqa: B008 (Gradio finds its progress bar by this default)
            with page_errors():
                values = read_values(controls, data)
            values.update({name: data[c] for name, c in settings.items()})
            return generate(holder, out_dir, values, progress=progress)

        inputs = {c for control in controls.values() for c in control.components} | set(settings.values())
        outputs = [*players, *pictures, downloads, status]
        generate_button.click(run, inputs, outputs, api_name="generate")
        controls["prompt"].components[0].submit(run, inputs, outputs)
    app.out_dir = out_dir
    app.controls = controls
    app.holder = holder
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
    p.add_argument("--lora-ckpt-path", action="extend", nargs="+", metavar="PATH", help="LoRA file(s) to pre-load")
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
    for path in args.lora_ckpt_path or []:
        if not Path(path).is_file():
            parser.error(f"--lora-ckpt-path: file not found: {path}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own health checks
    app = build_app(args.model, load, args.lora_ckpt_path, args.title)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: other machines can reach this page", args.host)
    app.queue().launch(server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(app.out_dir)])
    return 0
