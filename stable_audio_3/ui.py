"""`stable-audio-ui`: a Gradio page for text-to-audio, audio-to-audio and inpainting / continuation.

The page is a thin layer over `StableAudioModel`: the controls carry the reference UI's defaults,
the values are checked here so that a mistake shows up as a readable message in the page
(`gr.Error`), and files are written by the same code as the command line (one peak gain, metadata,
atomic writes). One model is held at a time; picking another one loads it and resets the
model-dependent defaults (seconds, steps, CFG). The reference's LLM prompt assistant, RF-inversion
controls (never passed to generation there) and "infinite radio" scripts are not included.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home; this runs offline

try:
    import gradio as gr
except ImportError as e:  # the UI is an extra: say how to get it instead of a traceback
    raise SystemExit(f"stable-audio-ui needs Gradio: pip install 'stable-audio-3[ui]' ({e})") from e
import numpy as np  # noqa: E402
import torch  # noqa: E402

from . import cli  # noqa: E402
from .loading import DEMO_MODEL, DIFFUSION_MODELS, ModelLoadError  # noqa: E402

log = logging.getLogger("stable_audio_3.ui")

MAX_BATCH = 4
FORMATS = {
    "wav": (".wav", None),
    "flac": (".flac", None),
    "mp3 320k": (".mp3", 320),
    "mp3 128k": (".mp3", 128),
    "ogg": (".ogg", None),
}
SHIFT_PARAMS = {  # the reference UI's defaults for each sampling schedule shift
    "logsnr": "anchor_length=2000, anchor_logsnr=-6.2, rate=0.0, logsnr_end=2.0",
    "flux": "min_length=256, max_length=4096, alpha_min=6.93, alpha_max=6.93",
    "full": "base_shift=0.5, max_shift=1.15, min_length=256, max_length=4096",
    "none": "",
}


# -- parsing what people type --------------------------------------------------------------------


def parse_regions(text: str, max_seconds: float) -> list[tuple[float, float]]:
    """ "1.0-2.0, 3.5-4.0" -> [(1.0, 2.0), (3.5, 4.0)]; raises gr.Error naming the bad part."""
    regions = []
    for part in filter(None, (p.strip() for p in (text or "").replace(";", ",").split(","))):
        m = re.fullmatch(r"(\d+(?:\.\d*)?)\s*-\s*(\d+(?:\.\d*)?)", part)
        if not m:
            raise gr.Error(f"Inpaint regions: {part!r} is not START-END in seconds (example: 1.0-2.0, 3.5-4.0)")
        start, end = float(m.group(1)), float(m.group(2))
        if end <= start:
            raise gr.Error(f"Inpaint regions: {part!r} ends before it starts")
        if end > max_seconds:
            raise gr.Error(f"Inpaint regions: {part!r} goes past the {max_seconds:g} s being generated")
        regions.append((start, end))
    return regions


def parse_numbers(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in re.split(r"[,\s]+", (text or "").strip()) if x]
    except ValueError:
        raise gr.Error(f"{what}: {text!r} is not a list of numbers (example: 1.0, 0.5)") from None


def parse_shift(kind: str, params: str) -> dict | None:
    """The schedule shift as generate() takes it: None (the model's own) or {"type": ..., **params}."""
    if kind == "model default":
        return None
    options: dict = {"type": kind}
    for part in filter(None, (p.strip() for p in (params or "").split(","))):
        key, sep, value = part.partition("=")
        try:
            options[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise gr.Error(f"Shift parameters: {part!r} is not name=number")
    return options


def condense(text: str, limit: int = 80) -> str:
    """A prompt as a file-name part: no path separators or shell-hostile characters."""
    return re.sub(r"[^\w.,+-]+", "_", text).strip("_.")[:limit] or "output"


# -- pictures ------------------------------------------------------------------------------------

_MAGMA = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], dtype=np.float32)


def spectrogram_image(audio: torch.Tensor, width: int = 800, height: int = 256):
    """Log-magnitude spectrogram of (C, T) audio as a PIL image (low frequencies at the bottom)."""
    from PIL import Image

    mono = audio.float().mean(0)
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

    def __init__(self, device: str | None = None, no_half: bool = False):
        self.device, self.no_half = device, no_half
        self.name: str | None = None
        self.model = None
        self.lora_files: list[str] = []
        self.lock = threading.Lock()

    def get(self, name: str):
        name = (name or "").strip()
        if not name:
            raise gr.Error("Model: pick a model name or type the path of a local model folder")
        if self.model is None or name != self.name:
            from .api import StableAudioModel

            try:
                model = StableAudioModel.from_pretrained(
                    name, device=self.device, dtype=torch.float32 if self.no_half else None
                )
            except (ModelLoadError, ValueError, OSError) as e:
                raise gr.Error(f"Model {name!r} could not be loaded: {e}") from e
            self.model, self.name, self.lora_files = model, name, []
        return self.model

    def set_loras(self, files: list[str], strengths: list[float]) -> None:
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
            self.model.set_lora_strength(strengths[0])
        for i, s in enumerate(strengths if len(strengths) > 1 else []):
            self.model.set_lora_strength(s, lora_index=i)


def model_defaults(model) -> tuple[float, float, int, float, list[str], str]:
    """(max seconds, default seconds, steps, cfg, samplers, default sampler) as the reference UI sets
    them per model; the default seconds are the model's own (3 s for the demo)."""
    if model is None:
        return 120.0, 120.0, 8, 1.0, list(cli.SAMPLERS), "pingpong"
    steps, cfg_scale, sampler = cli.recommended_settings(model, None, None, None)
    samplers = ["euler", "rk4", "dpmpp"] if model.is_base else ["pingpong", "euler", "rk4", "dpmpp"]
    max_s = float(int(model.max_duration))
    return max_s, min(max_s, float(model.default_duration)), steps, cfg_scale, samplers, sampler or "pingpong"


# -- generation ----------------------------------------------------------------------------------


def generate(
    holder: ModelHolder,
    out_dir: Path,
    model_name,
    prompt,
    negative_prompt,
    seconds,
    steps,
    cfg_scale,
    batch_size,
    seed,
    sampler,
    cfg_interval_min,
    cfg_interval_max,
    cfg_rescale,
    cfg_norm_threshold,
    apg_scale,
    duration_padding,
    shift_kind,
    shift_params,
    file_format,
    file_naming,
    cut_to_seconds,
    init_audio,
    init_noise_level,
    inpaint_audio,
    regions_text,
    continuation,
    paste_back,
    lora_files,
    lora_strengths,
    progress=None,
):
    """One click of Generate: check the inputs, run the model, write one file per item."""
    if not (prompt or "").strip():
        raise gr.Error("Prompt: type what you want to hear")
    if seconds is None or seconds <= 0:
        raise gr.Error(f"Seconds total must be more than 0 (got {seconds})")
    if seed is None or int(seed) != seed or seed < -1:
        raise gr.Error(f"Seed must be a whole number, or -1 for a random one (got {seed})")
    if cfg_interval_min > cfg_interval_max:
        raise gr.Error(f"CFG interval: min {cfg_interval_min} is above max {cfg_interval_max}")
    regions = parse_regions(regions_text, seconds)
    if inpaint_audio is None and (regions or continuation):
        raise gr.Error("Inpainting: upload the audio to inpaint or continue first")
    if inpaint_audio is not None and not regions and not continuation:
        raise gr.Error("Inpainting: type the regions to regenerate (e.g. 1.0-2.0, 3.5-4.0) or tick Continuation")
    if regions and continuation:
        raise gr.Error("Inpainting: Continuation keeps the whole audio; clear the regions or untick it")
    shift = parse_shift(shift_kind, shift_params)
    strengths = parse_numbers(lora_strengths, "LoRA strengths") or [1.0]
    suffix, mp3_bitrate = FORMATS[file_format]
    batch_size = int(batch_size)

    with holder.lock:
        model = holder.get(model_name)
        holder.set_loras([str(f) for f in lora_files or []], strengths)
        if seconds > model.max_duration:
            raise gr.Error(f"Seconds total: {seconds:g} is more than this model's {model.max_duration:.0f} s")

        def on_step(step: int, total: int, x) -> None:
            if progress is not None:
                progress((step, total), desc="sampling", unit="steps")

        started = time.perf_counter()
        try:
            audio = model.generate(
                prompt,
                negative_prompt=negative_prompt or None,
                duration=float(seconds),
                steps=int(steps),
                cfg_scale=float(cfg_scale),
                seed=cli.item_seeds([int(seed)], batch_size),
                batch_size=batch_size,
                sampler_type=sampler,
                init_audio=init_audio,
                init_noise_level=float(init_noise_level),
                inpaint_audio=inpaint_audio,
                inpaint_mask_start_seconds=[r[0] for r in regions] or None,
                inpaint_mask_end_seconds=[r[1] for r in regions] or None,
                continuation=bool(continuation),
                inpaint_paste_back=bool(paste_back) and inpaint_audio is not None,
                cfg_interval=(float(cfg_interval_min), float(cfg_interval_max)),
                scale_phi=float(cfg_rescale),
                cfg_norm_threshold=float(cfg_norm_threshold),
                apg_scale=float(apg_scale),
                duration_padding_sec=float(duration_padding),
                dist_shift=shift,
                truncate_output_to_duration=bool(cut_to_seconds),
                clamp=False,
                callback=on_step,
            )
        except (ValueError, ModelLoadError, OSError) as e:
            raise gr.Error(str(e)) from e
        seeds = model.last_seeds or [int(seed)] * batch_size
        elapsed = time.perf_counter() - started

    sr = model.sample_rate
    length = int(seconds * sr) if cut_to_seconds else audio.shape[-1]
    paths, images, notes = [], [], []
    for i in range(batch_size):
        base = {
            "verbose": f"{condense(prompt)}.cfg{cfg_scale:g}.seed{seeds[i]}",
            "prompt": condense(prompt),
            "output": "output",
        }[file_naming]
        name = f"{base}_{i}{suffix}" if batch_size > 1 else f"{base}{suffix}"
        folder = Path(tempfile.mkdtemp(dir=out_dir))  # one folder per file: equal names never collide
        meta = cli.file_metadata(prompt, seeds[i], holder.name, int(steps), float(cfg_scale), negative_prompt)
        path, gain_db = cli.save_item(
            folder / name,
            audio[i, :, :length],
            sr,
            meta,
            bit_depth=16 if suffix == ".wav" else None,
            mp3_bitrate=mp3_bitrate,
        )
        paths.append(str(path))
        images.append(spectrogram_image(audio[i, :, :length]))
        notes.append(f"item {i}: seed {seeds[i]}" + (f", gain {gain_db:.1f} dB" if gain_db else ""))
    status = f"Generated {batch_size} x {length / sr:.2f} s in {elapsed:.1f} s. " + "; ".join(notes)
    hidden = [gr.update(value=None, visible=False)] * (MAX_BATCH - batch_size)
    players = [gr.update(value=p, visible=True) for p in paths] + hidden
    pictures = [gr.update(value=im, visible=True) for im in images] + hidden
    return (*players, *pictures, paths, status)


# -- the page ------------------------------------------------------------------------------------


def build_app(
    model: str = DEMO_MODEL,
    device: str | None = None,
    no_half: bool = False,
    lora_files: list[str] | None = None,
    title: str = "Stable Audio 3",
) -> gr.Blocks:
    holder = ModelHolder(device, no_half)
    out_dir = Path(tempfile.mkdtemp(prefix="stable-audio-ui-"))
    load_error = None
    try:
        holder.get(model)
    except gr.Error as e:
        load_error = e.message
    max_s, default_s, steps_default, cfg_default, samplers, sampler_default = model_defaults(holder.model)

    with gr.Blocks(title=title, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"### {title}")
        with gr.Row():
            with gr.Column(scale=6):
                prompt = gr.Textbox(show_label=False, placeholder="Prompt", elem_id="prompt")
                negative_prompt = gr.Textbox(show_label=False, placeholder="Negative prompt", elem_id="negative-prompt")
            generate_button = gr.Button("Generate", variant="primary", scale=1, elem_id="generate")
        with gr.Row(equal_height=False):
            with gr.Column():
                model_picker = gr.Dropdown(
                    [DEMO_MODEL, *DIFFUSION_MODELS],
                    value=model,
                    allow_custom_value=True,
                    label="Model (a name, or the path of a local model folder)",
                    elem_id="model",
                )
                model_status = gr.Markdown(load_error or f"Loaded: `{model}`")
                seconds = gr.Slider(0, max_s, value=default_s, step=1, label="Seconds total", elem_id="seconds")
                with gr.Row():
                    steps = gr.Slider(1, 500, value=steps_default, step=1, label="Steps")
                    cfg_scale = gr.Slider(0.0, 25.0, value=cfg_default, step=0.1, label="CFG scale")
                batch_size = gr.Slider(1, MAX_BATCH, value=1, step=1, label="Batch size", elem_id="batch-size")
                with gr.Accordion("LoRA", open=False):
                    loras = gr.File(
                        value=lora_files or None,
                        file_count="multiple",
                        file_types=[".safetensors"],
                        label="LoRA files (stacked in order)",
                    )
                    lora_strengths = gr.Textbox("1.0", label="LoRA strengths (one for all, or one per file)")
                with gr.Accordion("Sampler params", open=False):
                    with gr.Row():
                        seed = gr.Number(-1, precision=0, label="Seed (-1 for a random seed)", elem_id="seed")
                        cfg_interval_min = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="CFG interval min")
                        cfg_interval_max = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="CFG interval max")
                    with gr.Row():
                        cfg_rescale = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="CFG rescale amount")
                        cfg_norm_threshold = gr.Slider(0.0, 100.0, value=0.0, step=0.1, label="CFG norm threshold")
                        apg_scale = gr.Slider(
                            0.0, 1.0, value=1.0, step=0.1, label="APG scale", info="1.0 = full APG, 0.0 = plain CFG"
                        )
                    with gr.Row():
                        sampler = gr.Dropdown(samplers, value=sampler_default, label="Sampler type")
                        duration_padding = gr.Slider(0.0, 30.0, value=6.0, step=0.5, label="Duration padding (sec)")
                    with gr.Row():
                        shift_kind = gr.Dropdown(
                            ["model default", *SHIFT_PARAMS], value="model default", label="Sampling schedule shift"
                        )
                        shift_params = gr.Textbox("", label="Shift parameters (name=value, ...)")
                with gr.Accordion("Output params", open=False):
                    with gr.Row():
                        file_format = gr.Dropdown(list(FORMATS), value="wav", label="File format")
                        file_naming = gr.Dropdown(["verbose", "prompt", "output"], value="verbose", label="File naming")
                        cut_to_seconds = gr.Checkbox(True, label="Cut to seconds total")
                with gr.Accordion("Init audio (audio-to-audio)", open=False):
                    init_audio = gr.Audio(type="filepath", label="Init audio", elem_id="init-audio")
                    init_noise_level = gr.Slider(0.01, 1.0, value=0.9, step=0.01, label="Init noise level")
                with gr.Accordion("Inpainting / continuation", open=False, elem_id="inpainting"):
                    inpaint_audio = gr.Audio(type="filepath", label="Inpaint audio", elem_id="inpaint-audio")
                    regions = gr.Textbox(
                        "", label="Regions to regenerate, in seconds", placeholder="1.0-2.0, 3.5-4.0", elem_id="regions"
                    )
                    continuation = gr.Checkbox(False, label="Continuation (keep all of it, continue to Seconds total)")
                    paste_back = gr.Checkbox(
                        False, label="Paste back the kept audio exactly (20 ms crossfades)", elem_id="paste-back"
                    )
            with gr.Column():
                players, pictures = [], []
                for i in range(MAX_BATCH):  # one player and one spectrogram per batch item
                    label = f"Output {i}" if i else "Output audio"
                    players.append(
                        gr.Audio(type="filepath", interactive=False, label=label, visible=i == 0, elem_id=f"output-{i}")
                    )
                    pictures.append(
                        gr.Image(
                            type="pil",
                            interactive=False,
                            show_label=False,
                            visible=False,
                            height=128,
                            elem_id=f"spectrogram-{i}",
                        )
                    )
                status = gr.Markdown("", elem_id="status")
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False)
                with gr.Row():
                    to_init = gr.Button("Send to init audio")
                    to_inpaint = gr.Button("Send to inpaint audio")

        def on_model_change(name):
            with holder.lock:
                model = holder.get(name)
            max_s, default_s, steps_d, cfg_d, samplers, sampler_d = model_defaults(model)
            return (
                f"Loaded: `{name}`",
                gr.update(maximum=max_s, value=default_s),
                gr.update(value=steps_d),
                gr.update(value=cfg_d),
                gr.update(choices=samplers, value=sampler_d),
            )

        model_picker.change(on_model_change, model_picker, [model_status, seconds, steps, cfg_scale, sampler])
        shift_kind.change(lambda k: SHIFT_PARAMS.get(k, ""), shift_kind, shift_params)
        to_init.click(lambda a: a, players[0], init_audio)
        to_inpaint.click(lambda a: a, players[0], inpaint_audio)
        inputs = [
            model_picker,
            prompt,
            negative_prompt,
            seconds,
            steps,
            cfg_scale,
            batch_size,
            seed,
            sampler,
            cfg_interval_min,
            cfg_interval_max,
            cfg_rescale,
            cfg_norm_threshold,
            apg_scale,
            duration_padding,
            shift_kind,
            shift_params,
            file_format,
            file_naming,
            cut_to_seconds,
            init_audio,
            init_noise_level,
            inpaint_audio,
            regions,
            continuation,
            paste_back,
            loras,
            lora_strengths,
        ]

        def run(*values, progress=gr.Progress()):  # noqa: B008 (Gradio finds its progress bar by this default)
            return generate(holder, out_dir, *values, progress=progress)

        outputs = [*players, *pictures, downloads, status]
        generate_button.click(run, inputs, outputs, api_name="generate")
        prompt.submit(run, inputs, outputs)
    app.out_dir = out_dir
    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stable-audio-ui", description="Stable Audio 3 in the browser (Gradio).")
    p.add_argument(
        "--model", default=DEMO_MODEL, help=f"model name or local model folder to start with (default: {DEMO_MODEL})"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:N, mps (default: best available)")
    p.add_argument("--no-half", action="store_true", help="compute in float32 on CUDA too")
    p.add_argument("--lora-ckpt-path", action="extend", nargs="+", metavar="PATH", help="LoRA file(s) to pre-load")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860, or the next free one)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--title", default="Stable Audio 3", help="page title")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own health checks
    for path in args.lora_ckpt_path or []:
        if not Path(path).is_file():
            build_parser().error(f"--lora-ckpt-path: file not found: {path}")
    app = build_app(args.model, args.device, args.no_half, args.lora_ckpt_path, args.title)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: other machines can reach this page", args.host)
    app.queue().launch(server_name=args.host, server_port=args.port, share=args.share, allowed_paths=[str(app.out_dir)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
