"""Public entry points: `StableAudioModel` (generation) and `AutoencoderModel` (SAME encode/decode)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from .audio import as_channels_first, check_sample_rate, pad_or_crop, resample, set_channels
from .loading import (
    AUTOENCODER_MODELS,
    DIFFUSION_MODELS,
    ModelLoadError,
    autoencoder_section,
    load_strict,
    read_safetensors,
    resolve_model_files,
)
from .models.attention import check_backend
from .models.same import SAMEAutoencoder

log = logging.getLogger(__name__)


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _check_chunking(chunk_size: int, overlap: int) -> None:
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size={chunk_size!r} is invalid; a positive number of latents is required")
    if not isinstance(overlap, int) or not 0 <= overlap < chunk_size:
        raise ValueError(f"overlap={overlap!r} is invalid; an integer in [0, chunk_size={chunk_size}) is required")


def build_autoencoder(config: dict, state: dict[str, torch.Tensor] | None, source: str,
                      device: torch.device | str = "cpu") -> SAMEAutoencoder:
    """A SAME autoencoder from a (full or standalone) model config and its checkpoint tensors."""
    ae_cfg, _ = autoencoder_section(config, source)
    with torch.device("meta"):
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
                        config: str | os.PathLike | None = None, dtype: torch.dtype | None = None,
                        attention_backend: str | None = None, revision: str | None = None,
                        token: str | None = None) -> AutoencoderModel:
        """Load `same-s` / `same-l` (Hub), a local folder (model_config.json + model.safetensors),
        or a bare .safetensors file with `config=`. A full Stable Audio 3 model folder also works:
        its autoencoder (`pretransform.model.*`) is taken."""
        backend = check_backend(attention_backend)
        device = torch.device(device) if device is not None else default_device()
        files = resolve_model_files(name_or_path, AUTOENCODER_MODELS + DIFFUSION_MODELS, config=config,
                                    revision=revision, token=token)
        source = str(files.checkpoint_path)
        _, prefix = autoencoder_section(files.config, str(files.config_path))
        state = read_safetensors(files.checkpoint_path, prefix=prefix)
        if prefix:
            if not state:
                raise ModelLoadError(f"{source} holds no '{prefix}*' tensors; it is not a full SA3 checkpoint")
        ae = build_autoencoder(files.config, state, source, device)
        if dtype is not None:
            ae = ae.to(dtype)
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
            rates = [check_sample_rate(r, "sr") for r in sr]
        else:
            rates = [check_sample_rate(sr, "sr")] * len(items)
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
