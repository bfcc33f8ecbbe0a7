"""Public entry points: `StableAudioModel` (generation) and `AutoencoderModel` (SAME encode/decode)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .audio import as_channels_first, check_sample_rate, pad_or_crop, resample, set_channels
from .loading import (
    AE_PREFIX,
    AUTOENCODER_MODELS,
    CONDITIONER_PREFIX,
    DEMO_MODEL,
    DIFFUSION_MODELS,
    DIT_PREFIX,
    ModelLoadError,
    SafetensorsFile,
    attach_text_encoder,
    autoencoder_section,
    bundled_loras,
    check_state,
    load_part,
    load_strict,
    module_shapes,
    resolve_device,
    resolve_dtype,
    resolve_model_files,
    split_checkpoint_keys,
)
from .models.attention import check_backend
from .models.dit import check_attention_padding
from .models.same import SAMEAutoencoder
from .precision import TIERS, apply_tier, resolve_precision
from .request import DEFAULT_LIMITS, FIELDS, GenerationRequest, Limits, LoadOptions, ModelDefaults

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Generation:
    """What one run produced: audio (B, C, T) float32 (or latents), the seeds used, the resolved request."""

    audio: torch.Tensor
    seeds: list[int]
    request: GenerationRequest
    sample_rate: int


def _check_chunking(chunk_size: int, overlap: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size={chunk_size!r} is invalid; a positive number of latents is required")
    if not isinstance(overlap, int) or not 0 <= overlap < chunk_size:
        raise ValueError(f"overlap={overlap!r} is invalid; an integer in [0, chunk_size={chunk_size}) is required")


class _ConfigSection:
    """Turns a config mistake found while a module is built from it (a missing key, a wrong type) into
    a `ModelLoadError` naming the file and the section."""

    def __init__(self, source: str, section: str):
        self.source, self.section = source, section

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb):
        if isinstance(error, (KeyError, TypeError, ValueError, IndexError, AttributeError)) and not isinstance(
                error, ModelLoadError):
            what = f"lacks the field {error.args[0]!r}" if isinstance(error, KeyError) else f"is invalid ({error})"
            raise ModelLoadError(f"model config {self.source}: {self.section} {what}") from error
        return False


def build_autoencoder(config: dict, state: dict[str, torch.Tensor] | None, source: str,
                      device: torch.device | str = "cpu") -> SAMEAutoencoder:
    """A SAME autoencoder from a (full or standalone) model config and its checkpoint tensors."""
    ae_cfg, prefix = autoencoder_section(config, source)
    with torch.device("meta"), _ConfigSection(source, "model.pretransform.config" if prefix else "model"):
        ae = SAMEAutoencoder(ae_cfg, sample_rate=config.get("sample_rate", 44100))
    if state is None:
        return ae
    load_strict(ae, state, f"autoencoder checkpoint {source}")
    return ae.to(device).eval().requires_grad_(False)


class AutoencoderModel:
    """The SAME autoencoder on its own: 44.1 kHz stereo audio <-> (B, 256, T) latents."""

    def __init__(self, autoencoder: SAMEAutoencoder, device: torch.device):
        self.autoencoder = autoencoder
        self.device = device
        self.sample_rate = autoencoder.sample_rate
        self.audio_channels = autoencoder.audio_channels
        self.downsampling_ratio = autoencoder.downsampling_ratio
        self.latent_dim = autoencoder.latent_dim

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, device: str | torch.device | None = None, *,
                        config: str | os.PathLike | None = None, dtype: torch.dtype | str | None = None,
                        attention_padding: str = "exclude", attention_backend: str | None = None,
                        text_encoder: str | os.PathLike | None = None, revision: str | None = None,
                        token: str | None = None) -> AutoencoderModel:
        """Load a SAME autoencoder: `same-s` / `same-l` (Hugging Face Hub), a local folder
        (model_config.json + model.safetensors), or a single .safetensors file with `config=` (a model
        name or a config path). A full Stable Audio 3 model (name, folder or file) also works: its
        autoencoder (`pretransform.model.*`) is read, nothing else. `same-s` / `same-l` reuse an
        already-cached small-music / small-sfx / medium checkpoint instead of downloading.

        `device`: None picks cuda, mps, cpu. `dtype`: float32 by default, as the reference (bfloat16 /
        float16 on request; always float32 on MPS). `revision` / `token` go to the Hub (a saved login
        or HF_TOKEN is used otherwise). `attention_padding` and `text_encoder` exist so both model
        classes share one signature; an autoencoder has neither. Failures raise `ModelLoadError`.
        """
        check_attention_padding(attention_padding)
        backend = check_backend(attention_backend)
        device = resolve_device(device)
        ae_dtype = resolve_dtype(dtype, device, default=torch.float32)
        if device.type == "mps" and ae_dtype != torch.float32:
            log.warning("SAME runs in float32 on MPS; dtype=%s is ignored for the autoencoder", ae_dtype)
            ae_dtype = torch.float32
        files = resolve_model_files(name_or_path, AUTOENCODER_MODELS + DIFFUSION_MODELS + (DEMO_MODEL,),
                                    config=config, revision=revision, token=token)
        source = str(files.checkpoint_path)
        _, prefix = autoencoder_section(files.config, str(files.config_path))
        ckpt = SafetensorsFile(files.checkpoint_path)
        keys = {k[len(prefix):]: k for k in ckpt.keys() if k.startswith(prefix)}
        if prefix and not keys:
            raise ModelLoadError(f"{source} holds no '{prefix}*' tensors; it is not a full SA3 checkpoint")
        ae = build_autoencoder(files.config, None, str(files.config_path))
        load_part(ae, ckpt, keys, f"autoencoder checkpoint {source}", device, ae_dtype)
        ae.set_attention_backend(backend)
        return cls(ae, device)

    # -- preprocessing ----------------------------------------------------------------------
    def _prepare(self, audio, sr) -> torch.Tensor:
        """Inputs of any accepted form -> (B, 2, N) at the model rate, N a multiple of 4096."""
        if isinstance(audio, (list, tuple)):
            items = list(audio)
            if not items:
                raise ValueError("audio: an empty list was given; at least one clip is required")
        elif isinstance(audio, torch.Tensor) and audio.dim() == 3 and audio.shape[0] != 1:
            items = list(audio)
        elif isinstance(audio, (torch.Tensor, np.ndarray)):
            items = [audio]
        else:
            raise TypeError(f"audio: expected a tensor, numpy array or list of them, got {type(audio).__name__}")
        if isinstance(sr, Sequence) and not isinstance(sr, str):
            if len(sr) != len(items):
                raise ValueError(f"sr: {len(sr)} sample rates given for {len(items)} clips; give one per clip")
            rates = [check_sample_rate(r, "sr", *RATE_RANGE) for r in sr]
        else:
            rates = [check_sample_rate(sr, "sr", *RATE_RANGE)] * len(items)
        clips = []
        for i, (item, rate) in enumerate(zip(items, rates, strict=True)):
            name = "audio" if len(items) == 1 else f"audio[{i}]"
            clip = as_channels_first(item, name).to(self.device, torch.float32)
            clips.append(resample(clip, rate, self.sample_rate))
        longest = max(c.shape[-1] for c in clips)
        length = -(-longest // self.downsampling_ratio) * self.downsampling_ratio
        batch = [set_channels(pad_or_crop(c, length), self.audio_channels) for c in clips]
        return torch.stack(batch)

    # -- public API -------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, audio, sr: int | Sequence[int], chunked: bool = False, chunk_size: int = 128,
               overlap: int = 32) -> torch.Tensor:
        """Audio -> latents (B, latent_dim, T).

        `audio`: a (C, T) or (T,) tensor, a (B, C, T) tensor, a list of tensors, or numpy as
        soundfile returns it ((T,) or (T, C); int16/int32 PCM is scaled to [-1, 1]). Each clip is
        resampled from `sr` to 44.1 kHz, converted to stereo and zero-padded to a common length.
        """
        _check_chunking(chunk_size, overlap)
        batch = self._prepare(audio, sr)
        dtype = next(self.autoencoder.parameters()).dtype
        latents = self.autoencoder.encode_audio(batch.to(dtype), chunked=chunked, chunk_size=chunk_size,
                                                overlap=overlap)
        return latents.float()

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, chunked: bool = False, chunk_size: int = 128, overlap: int = 32,
               noise: bool = True) -> torch.Tensor:
        """Latents (B, latent_dim, T) or (latent_dim, T) -> audio (B, 2, T * 4096).

        With `noise=True` the bottleneck dither and decoder mask noise are drawn from torch's
        global generator as the reference does; `noise=False` makes decoding deterministic.
        """
        _check_chunking(chunk_size, overlap)
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents: expected a torch.Tensor, got {type(latents).__name__}")
        if latents.dim() == 2:
            latents = latents.unsqueeze(0)
        if latents.dim() != 3 or latents.shape[1] != self.latent_dim:
            raise ValueError(
                f"latents: expected shape (batch, {self.latent_dim}, frames) or ({self.latent_dim}, frames), "
                f"got {tuple(latents.shape)}"
            )
        if latents.shape[-1] == 0:
            raise ValueError("latents: zero frames given; at least 1 latent frame is required")
        if not torch.isfinite(latents).all():
            raise ValueError("latents: contains NaN or infinite values; all values must be finite")
        dtype = next(self.autoencoder.parameters()).dtype
        audio = self.autoencoder.decode_audio(latents.to(self.device, dtype), chunked=chunked,
                                              chunk_size=chunk_size, overlap=overlap, noise=noise)
        return audio.float()


RATE_RANGE = (DEFAULT_LIMITS.min_input_rate, DEFAULT_LIMITS.max_input_rate)
CHECKPOINT_PARTS = {"dit": DIT_PREFIX, "autoencoder": AE_PREFIX, "conditioner": CONDITIONER_PREFIX}


class StableAudioModel:
    """A Stable Audio 3 model: text (+ audio) in, 44.1 kHz stereo out."""

    def __init__(self, components, files):
        self.components = components
        self.model_config = components.config
        self.config_path = files.config_path
        self.device = components.device
        self.last_seeds: list[int] = []
        self.precision: str = "float32"  # the precision tier it was loaded with (see `precision`)

    @property
    def loras(self):
        """The LoRAs loaded on this model (`load_lora`, `set_lora_strength`, `unload_lora`)."""
        return self.components.loras

    @property
    def dit(self):
        return self.components.dit

    @property
    def conditioner(self):
        return self.components.conditioner

    @property
    def autoencoder(self) -> SAMEAutoencoder:
        return self.components.autoencoder

    @property
    def sample_rate(self) -> int:
        return self.components.sample_rate

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike | None = None, device: str | torch.device | None = None,
                        *, config: str | os.PathLike | None = None, dtype: torch.dtype | str | None = None,
                        attention_padding: str = "exclude", attention_backend: str | None = None,
                        text_encoder: str | os.PathLike | None = None, revision: str | None = None,
                        token: str | None = None, offload_text_encoder: bool = False,
                        precision: str | None = None, compile: bool = False,
                        limits: Limits | None = None) -> StableAudioModel:
        """Load a Stable Audio 3 model.

        `name_or_path`: an existing path wins: a folder laid out like the Hub repo (model_config.json,
        model.safetensors, t5gemma-b-b-ul2/), or a single .safetensors file (official key layout, as
        ComfyUI repackages it) with `config=` naming the model ("small-music-base", ...) or a config
        file, and `text_encoder=` a T5Gemma folder. Otherwise a name: one of the six models (fetched
        from the Hugging Face Hub: only the files needed, the text encoder from the model's own repo;
        `revision` / `token`, else HF_TOKEN or a saved `hf auth login`), or "demo" (the small built-in
        model; the default when nothing is named).

        `device`: None picks cuda, mps, cpu. `dtype`: None is the reference's float16 on CUDA and
        float32 elsewhere; float32, bfloat16 or float16 override it for the DiT and conditioners (the
        autoencoder stays float32 on MPS; the text encoder keeps its file's dtype).
        `attention_padding="exclude"` is the training semantics (the reference with flash-attn);
        `"zero-values"` reproduces the reference without flash-attn (CPU/MPS). `attention_backend`:
        None (auto, or $SA3_ATTENTION_BACKEND), "sdpa", "flash", "math". `offload_text_encoder=True`
        keeps the T5Gemma encoder in CPU memory; it visits the GPU only to encode (for small GPUs).
        `precision` (instead of `dtype`): a tier of `precision.TIERS` ("float32", "bfloat16", "float16",
        "int8", "int8-bf16": int8 matrix multiplies in the DiT and decoder blocks, CPU only, no LoRAs),
        or "auto": the tier measured fastest on this kind of CPU (by its AVX-512 / BF16 / VNNI / AMX
        features) or GPU, among those that passed the quality gates (see the README's table).
        `compile=True` compiles the sampling step and the SAME decoder with torch.compile (on CUDA the
        step is captured as a CUDA graph, per bucket of latent lengths; see `compiling`): the first
        generation (and the first of each new length bucket on CUDA) takes longer; LoRAs still work.
        `limits` (`request.Limits`; default: its documented defaults, e.g. at most 1000 steps and 64
        items) bounds every request this model takes; raise them here for longer jobs.
        Any loading problem, a config missing a field included, raises `ModelLoadError` naming it.
        """
        from .models.conditioning import Conditioner
        from .models.dit import DiffusionTransformer
        from .models.lora import LoraSet
        from .pipeline import Components

        check_attention_padding(attention_padding)
        backend = check_backend(attention_backend)
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits: expected a stable_audio_3.request.Limits, got {type(limits).__name__}")
        if not isinstance(compile, bool):
            raise ValueError(f"compile={compile!r} is invalid; allowed: True, False")
        device = resolve_device(device)
        if precision is not None and dtype is not None:
            raise ValueError(f"precision={precision!r} and dtype={dtype!r} were both given; a precision tier sets "
                             "the dtypes, give one or the other")
        if precision is not None:
            tier_name = resolve_precision(precision, device)
        else:
            tier_name = str(resolve_dtype(dtype, device)).removeprefix("torch.")
        tier = TIERS[tier_name]
        files = resolve_model_files(DEMO_MODEL if name_or_path is None else name_or_path,
                                    DIFFUSION_MODELS + (DEMO_MODEL,), config=config, revision=revision,
                                    token=token, with_text_encoder=text_encoder is None)
        cfg = files.config
        if cfg.get("model_type") != "diffusion_cond_inpaint":
            raise ModelLoadError(f"{files.config_path}: model_type {cfg.get('model_type')!r} is not a Stable Audio 3 "
                                 "generation model; allowed: 'diffusion_cond_inpaint'")
        source = str(files.checkpoint_path)
        ckpt = SafetensorsFile(files.checkpoint_path)
        keys = split_checkpoint_keys(ckpt.keys(), CHECKPOINT_PARTS, source)
        config_source = str(files.config_path)
        with torch.device("meta"):
            with _ConfigSection(config_source, "model.diffusion.config"):
                dit = DiffusionTransformer.from_config(cfg["model"]["diffusion"]["config"])
            with _ConfigSection(config_source, "model.conditioning"):
                conditioner = Conditioner.from_config(cfg["model"]["conditioning"], cfg["model"]["diffusion"])
        ae = build_autoencoder(cfg, None, config_source)
        parts = {  # part: (module, dtype, name in messages)
            "dit": (dit, tier.dit, "DiT"),
            "conditioner": (conditioner, tier.conditioner, "conditioner"),
            "autoencoder": (ae, torch.float32 if device.type == "mps" else tier.autoencoder, "autoencoder"),
        }
        for part, (module, _, label) in parts.items():  # every key and shape, before reading any weight
            check_state(module_shapes(module), ckpt.shapes(keys[part]), f"{label} of {source}")
        for part, (module, part_dtype, label) in parts.items():
            load_part(module, ckpt, keys[part], f"{label} of {source}", device, part_dtype)
        ae.set_attention_backend(backend)
        dit.set_attention_backend(backend)
        attach_text_encoder(conditioner, files, text_encoder, device, token=token, offload=bool(offload_text_encoder))
        apply_tier(tier, dit, ae, conditioner.prompt_conditioners()["prompt"].text_encoder.model)
        loras = LoraSet({"model.": dit, "": conditioner}, skip_prefixes=("conditioners.prompt.text_encoder",))
        components = Components(conditioner, dit, ae, cfg, device, attention_padding, loras,
                                limits=DEFAULT_LIMITS if limits is None else limits)
        model = cls(components, files)
        model.precision = tier_name
        if compile:
            from .compiling import compile_components

            compile_components(model.components)
        return model

    @property
    def limits(self) -> Limits:
        """What every request to this model is held to (`from_pretrained(limits=...)`; see `Limits`)."""
        return self.components.limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        if not isinstance(limits, Limits):
            raise TypeError(f"limits: expected a stable_audio_3.request.Limits, got {type(limits).__name__}")
        self.components.limits = limits

    @property
    def load_options(self) -> LoadOptions:
        """How this model was loaded, as the options that load it again the same way: the device it is
        on, its precision tier (which sets the dtypes), the attention padding and whether it is compiled."""
        c = self.components
        return LoadOptions(device=str(self.device), precision=self.precision, attention_padding=c.attention_padding,
                           compile=c.compile_step is not None)

    @property
    def defaults(self) -> ModelDefaults:
        """The model's recommended settings and limits, which fill a request's unset options."""
        return ModelDefaults.from_config(self.components.config, self.limits)

    @property
    def max_duration(self) -> float:
        """Longest output in seconds: the config's sample_size (380 s for medium, 120 s for small)."""
        return self.defaults.max_duration

    @property
    def default_duration(self) -> float:
        """Seconds generated when no duration is given: the config's `default_duration` (3 s for the
        demo model), else 120 s (the reference's default) or the model's maximum if that is shorter."""
        return self.defaults.duration

    @property
    def is_base(self) -> bool:
        """-base (rectified_flow) models want Euler, ~50 steps and cfg ~7; post-trained ones 8 steps, cfg 1."""
        return self.defaults.is_base

    @property
    def recommended_steps(self) -> int:
        return self.defaults.steps

    @property
    def recommended_cfg_scale(self) -> float:
        return self.defaults.cfg_scale

    @torch.inference_mode()
    def run(self, request: GenerationRequest, callback=None, on_audio=None) -> Generation:
        """Generate what `request` asks for; unset options take this model's recommended values.

        `callback(step, total, x)` is called after every sampling step (x: the current clean-latent
        estimate); returning False stops the run with `GenerationCancelled`. The result carries the
        audio (B, C, T) float32 (or the latents), the seeds used and the resolved request.

        Raises `OptionError` (a ValueError) for a bad or too-large request, before any model runs;
        `NonFiniteAudio` (a ValueError naming the likely cause) instead of returning NaN or infinite
        samples; ValueError for an unreadable input audio file.

        `on_audio(audio, start_sample)` receives the decoded audio stretch by stretch, final, as the
        (chunked) decoder finishes each one, to play or send it before the whole piece is decoded."""
        from .pipeline import generate

        resolved = request.resolve(self.defaults)
        result, seeds = generate(self.components, resolved, callback=callback, on_audio=on_audio)
        self.last_seeds = seeds
        return Generation(result, seeds, resolved, self.sample_rate)

    def generate(self, prompt: str | Sequence[str] | None = None, negative_prompt: str | Sequence[str] | None = None,
                 duration: float | Sequence[float] | None = None, steps: int | None = None,
                 cfg_scale: float | None = None, seed: int | Sequence[int] = -1, batch_size: int | None = None,
                 callback=None, **options) -> torch.Tensor:
        """Generate (B, 2, samples) float32 audio in [-1, 1] at 44.1 kHz (or the latents).

        Every option of `GenerationRequest` is a keyword here; unset ones take the model's
        recommendations (`model.defaults`: 8 steps, cfg 1, ping-pong for post-trained models, the
        reference's defaults; 50, 7, Euler for -base ones; the demo's card values for the demo).
        - `prompt`, `negative_prompt`, `duration` (seconds, at most `max_duration`), `seed`: one
          value, or a list with one per batch item (a list sets the batch size). Items of different
          durations come back at the longest one's length, each silent past its own duration (one
          tensor holds the batch; the command line writes each at its own length). `seed`: an int
          (one generator for the whole batch, as the reference), -1 for a random one, or a list of
          per-item seeds (item i then equals a batch-1 call with seed i). `model.last_seeds` holds
          the seeds used after the call.
        - `init_audio` with `init_noise_level` (default 0.9 with init audio); `inpaint_audio` with
          `inpaint_mask_start_seconds` / `inpaint_mask_end_seconds` (numbers, or lists for several
          regions) or `inpaint_mask`, or `continuation=True`. `inpaint_paste_back=True` puts the
          given audio back over the kept parts; unset, it stays off here, as in the reference, even
          where the model recommends it (`model.defaults.inpaint_paste_back`, which the command line,
          the page and the server use; `request.recommended(model.defaults)` applies it). Audio is
          `(sample_rate, x)`, `(x, sample_rate)` or a file path.
        - Guidance and sampling: `apg_scale`, `sampler_type`, `dist_shift`, `cfg_interval`,
          `scale_phi`, `cfg_norm_threshold`, `duration_padding_sec`, `sample_size`, `lora_configs`.
        - Output: `chunked_decode`, `return_latents`, `truncate_output_to_duration`, `clamp`.
        - `callback(step, total, x)`: returning False raises `GenerationCancelled`.
          `noise_device="cpu"` draws all noise on the CPU so a seed gives the same audio everywhere.
        """
        unknown = sorted(set(options) - set(FIELDS))
        if unknown:
            raise TypeError(f"generate() got unknown option(s) {', '.join(unknown)}; "
                            f"allowed: {', '.join(FIELDS)}")
        request = GenerationRequest(prompt=prompt, negative_prompt=negative_prompt, duration=duration, steps=steps,
                                    cfg_scale=cfg_scale, seed=seed, batch_size=batch_size, **options)
        return self.run(request, callback).audio

    # -- LoRA ------------------------------------------------------------------------------------
    def load_lora(self, paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[int]:
        """Load LoRA files (stacked in order) or LoRAs shipped with the model, by name (`bundled_loras`);
        returns their indices for `set_lora_strength`."""
        if not TIERS[self.precision].takes_loras:
            raise ValueError(f"load_lora: this model was loaded with precision={self.precision!r}, whose int8 layers "
                             "cannot take LoRAs; load it with precision='float32' or 'bfloat16' to use LoRAs")
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        from .models.lora import LoraError

        shipped = self.bundled_loras
        paths = [shipped[str(p)] if str(p) in shipped and not os.path.exists(p) else p for p in paths]
        missing = [str(p) for p in paths if not os.path.exists(p)]
        if missing and shipped:
            raise LoraError(f"load_lora: {missing[0]!r} is neither a file nor a LoRA shipped with this model "
                            f"(shipped: {', '.join(shipped)})")
        return self.loras.load(paths, svd_bases_path=self.model_config.get("svd_bases_path"))

    @property
    def bundled_loras(self) -> dict[str, os.PathLike]:
        """LoRAs shipped in the model's folder (`loras/<name>.safetensors`); `load_lora` takes their names."""
        return bundled_loras(os.path.dirname(self.config_path))

    def set_lora_strength(self, strength: float, lora_index: int | None = None) -> None:
        self.loras.set_lora_strength(strength, lora_index)

    def unload_lora(self) -> None:
        self.loras.unload_loras()
