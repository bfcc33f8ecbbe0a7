"""What the page does with a click of Generate: the one loaded model, a request built from the page's
values, the run (which Stop can end at the next sampling step) and the files written for it."""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from .. import output
from ..audio import read_audio
from ..loading import DEMO_MODEL, ModelLoadError
from ..loading.configs import demo_folder, local_model_folder, packaged_config, read_config
from ..request import FIELDS, GenerationRequest, LoadOptions, ModelDefaults, OptionError
from .controls import label_of
from .spectrogram import spectrogram_image

log = logging.getLogger("stable_audio_3.ui")
MAX_PLAYERS = 4  # items shown with a player and a spectrogram; every item is in Downloads
FORMATS = {
    "wav": (".wav", None),
    "flac": (".flac", None),
    "mp3 320k": (".mp3", 320),
    "mp3 128k": (".mp3", 128),
    "ogg": (".ogg", None),
}
AUDIO_INPUTS = ("init_audio", "inpaint_audio")


class Stopped(Exception):
    """The Stop button ended a run; not an error, and the previous results stay."""


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


def refused(where: str, message: str) -> str:
    """One log line for a person's mistake (no traceback); the text the page shows."""
    log.info("%s: %s", where, message)
    return f"⚠️ {message}"


def parse_strengths(text: str) -> list[float]:
    """The LoRA strengths box: numbers separated by commas or spaces; empty is 1.0."""
    try:
        return [float(x) for x in re.split(r"[,\s]+", (text or "").strip()) if x] or [1.0]
    except ValueError:
        raise gr.Error(f"LoRA strengths: {text!r} is not a list of numbers (example: 1.0, 0.5)") from None


condense = output.condense  # a prompt as a file-name part


def check_upload(path: str, field: str) -> str:
    """Decode an uploaded file once before the run, so that a file that is not audio is refused with
    the control's label and the file's own name (not its temporary path). Returns the path: the
    request keeps it, and the files' metadata its name."""
    label = label_of(field)
    try:
        read_audio(path, name=label)
    except ValueError as e:
        if "not a readable audio file" in str(e):
            raise gr.Error(f"{label}: {Path(path).name!r} is not a readable audio file (wav, flac, ogg or mp3)") \
                from None
        raise gr.Error(str(e)) from None
    except OSError:
        raise gr.Error(f"{label}: {Path(path).name!r} could not be read; upload it again") from None
    return path


def is_demo(name: str | None) -> bool:
    folder = local_model_folder(name) if name else None
    return folder is not None and folder.resolve() == demo_folder().resolve()


def recommends_paste_back(name: str | None) -> bool:
    """Whether model `name`'s config recommends paste-back for inpainting and continuation
    (`default_inpaint_paste_back`, read into `ModelDefaults`; the demo's does); False when unknown."""
    if not name:
        return False
    folder = local_model_folder(name)
    try:
        if folder is not None:
            config = read_config(folder / "model_config.json")
        else:
            config = packaged_config(name)
        return ModelDefaults.from_config(config).inpaint_paste_back
    except (ModelLoadError, OSError, ValueError, KeyError, TypeError):
        return False


def inpaint_advice(name: str | None) -> tuple[bool, str]:
    """(paste back on?, the note the page shows) for inpainting and continuation with model `name`."""
    if recommends_paste_back(name):
        return True, ("**Paste back** starts on for this model: its model card recommends it for inpainting "
                      "and continuation (at its CFG 4 the kept audio otherwise drifts, to about 14 dB SNR). "
                      "Or turn it off and use 8 steps, CFG 1.")
    return False, "**Paste back** puts the given audio back exactly over the parts that are kept."


# -- the model -----------------------------------------------------------------------------------


class ModelHolder:
    """The one loaded model, its LoRAs, a lock (generation and loading never overlap), and the
    Stop button's flag (read at every sampling step)."""

    def __init__(self, load: LoadOptions | None = None):
        self.load = (load or LoadOptions()).verify()
        self.name: str | None = None
        self.model = None
        self.lora_files: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def get(self, name: str):
        name = (name or "").strip()
        if not name:
            raise gr.Error("Model: pick a model name or type the path of a local model folder")
        if self.model is None or name != self.name:
            from ..api import StableAudioModel

            try:
                model = StableAudioModel.from_pretrained(name, **self.load.kwargs())
            except (ModelLoadError, ValueError, OSError) as e:
                kept = f" (`{self.name}` stays loaded)" if self.model is not None else ""
                raise gr.Error(f"Model {name!r} could not be loaded{kept}: {e}") from e
            self.model, self.name, self.lora_files = model, name, []
        return self.model

    def shipped_loras(self) -> list[str]:
        """The names of the LoRAs shipped with the loaded model (the demo's `octave-up`)."""
        return list(self.model.bundled_loras) if self.model is not None else []

    def set_loras(self, files: list[str], strengths: list[float]) -> list[float]:
        """Load `files` (paths, or names of shipped LoRAs; unless they are loaded already) and set their
        strengths: one for all, or one each. Returns each one's strength."""
        if len(strengths) > 1 and len(strengths) != len(files):
            raise gr.Error(f"LoRA strengths: {len(strengths)} values for {len(files)} LoRAs; give one or one each")
        if files != self.lora_files:
            self.model.unload_lora()
            self.lora_files = []
            if files:
                try:
                    self.model.load_lora(files)
                except Exception as e:  # a wrong or corrupt file: say which, keep the model usable
                    self.model.unload_lora()
                    raise gr.Error(f"LoRA: could not be loaded: {e}") from e
            self.lora_files = list(files)
        if len(strengths) == 1:
            self.model.set_lora_strength(strengths[0])  # all at once: each layer is rebuilt once
            return strengths * len(files)
        for i, s in enumerate(strengths):
            self.model.set_lora_strength(s, lora_index=i)
        return list(strengths)


# -- generation ----------------------------------------------------------------------------------


@dataclass
class PageResult:
    """One run's files, the spectrograms of the first MAX_PLAYERS items, each item's seed, a status line."""

    paths: list[str]
    images: list
    seeds: list[int]
    status: str


def generate(holder: ModelHolder, out_dir: Path, values: dict[str, Any], progress=None) -> PageResult:
    """One click of Generate. `values`: request fields by name (unset ones take the request's defaults)
    and the page's settings (model, lora_names, lora_files, lora_strengths, file_format, file_naming).
    Refusals raise gr.Error naming the control; Stop raises `Stopped`."""
    from ..pipeline import GenerationCancelled

    fields = {k: v for k, v in values.items() if k in FIELDS}
    with page_errors():
        request = GenerationRequest(**fields).verify()  # the page's own mistakes first, before any file is read
    for name in AUDIO_INPUTS:
        if isinstance(fields.get(name), str):
            check_upload(fields[name], name)
    strengths = parse_strengths(values.get("lora_strengths", ""))
    suffix, mp3_bitrate = FORMATS[values.get("file_format") or "wav"]
    naming = values.get("file_naming") or "verbose"
    loras = [*(values.get("lora_names") or []), *(str(f) for f in values.get("lora_files") or [])]
    reached = [0, 0]

    def on_step(step: int, total: int, x) -> bool:
        reached[:] = step, total
        if progress is not None:
            progress((step, total), desc="sampling", unit="steps")
        return not holder.stop.is_set()

    holder.stop.clear()
    with holder.lock:
        model = holder.get(values.get("model") or holder.name or DEMO_MODEL)
        levels = holder.set_loras(loras, strengths)
        started = time.perf_counter()
        try:
            with page_errors():
                # Files are peak-limited with one gain (output.save_item), never clipped: run unclamped.
                request = request.recommended(model.defaults)  # inpainting: the model's paste-back unless set
                result = model.run(request.replace(clamp=False), on_step)
        except GenerationCancelled:
            raise Stopped(f"Stopped after step {reached[0]} of {reached[1]}; the previous results are kept.") \
                from None
        elapsed = time.perf_counter() - started
        model_name, load = holder.name, model.load_options

    resolved, seeds, sr = result.request.replace(clamp=request.clamp), result.seeds, result.sample_rate
    named = [(Path(f).name, level) for f, level in zip(loras, levels, strict=True)]
    digests = output.audio_digests(resolved)
    paths, images, notes = [], [], []
    for i in range(resolved.batch_size):
        prompt = resolved.prompt[i]
        record = output.file_record(resolved, seeds, i, model_name, named, load, digests)
        index = i if resolved.batch_size > 1 else None
        if naming == "verbose":  # differs whenever any setting differs (a digest of the record)
            name = output.download_name(prompt, resolved.cfg_scale, output.item_seed(seeds, i), record, suffix, index)
        else:
            base = condense(prompt) if naming == "prompt" else "output"
            name = f"{base}{'' if index is None else f'_{index}'}{suffix}"
        folder = Path(tempfile.mkdtemp(dir=out_dir))  # one folder per file: equal names never collide
        audio = output.item_audio(result.audio, resolved, i, sr).cpu()
        meta = output.file_metadata(resolved, seeds, i, model_name, named, suffix, record)
        wav_bits = 16 if request.clamp else 32  # only a float WAV holds samples beyond [-1, 1]
        path, gain_db = output.save_item(folder / name, audio, sr, meta, bit_depth=wav_bits if suffix == ".wav"
                                         else None, mp3_bitrate=mp3_bitrate, clamp=request.clamp or suffix != ".wav")
        paths.append(str(path))
        if i < MAX_PLAYERS:
            images.append(spectrogram_image(audio, sr))
        if gain_db:
            notes.append(f"item {i}: gain {gain_db:.1f} dB")
    item_seeds = [output.item_seed(seeds, i) for i in range(resolved.batch_size)]
    if resolved.batch_size > 1 and not isinstance(resolved.seed, list):
        seed_text = f"seed {item_seeds[0]} (one generator for the batch)"
    else:
        seed_text = ("seed " if len(item_seeds) == 1 else "seeds ") + ", ".join(map(str, item_seeds))
    if resolved.inpaint_audio is not None:
        notes.insert(0, f"Paste-back {'on' if resolved.inpaint_paste_back else 'off'}")
    status = (f"Generated {resolved.batch_size} x {resolved.duration[0]:.2f} s in {elapsed:.1f} s, {seed_text}."
              + "".join(f" {n}." for n in notes))
    return PageResult(paths, images, item_seeds, status)
