"""`compile=True`: the sampling step and the SAME decoder under `torch.compile`.

Two ways, picked by the device:

- CPU ("regional"): each DiT transformer block and each SAME transformer block is compiled with
  inductor. All blocks of a stack run the same code, so one graph serves them all and the first
  call stays short; shapes are left to torch.compile's automatic dynamic shapes, so a new duration
  compiles at most once more and no token is padded.
- CUDA ("step"): the whole sampling step (guided denoiser + sampler update) is one graph,
  captured as a CUDA graph (`mode="reduce-overhead"`), because eager CUDA time is launch
  overhead. A CUDA graph has fixed shapes, so the latent length is rounded up to a bucket
  (`bucket_length`: four sizes per octave, at most 25% and on average ~12% extra tokens, the
  model's maximum length its own bucket); the extra positions are treated exactly like padding
  (see `pipeline.sample_plan`), so the audio does not change.

Weights are not frozen into the graphs, so a LoRA loaded, unloaded or re-weighted afterwards (it
edits the weights in place) is picked up without recompiling.
"""

from __future__ import annotations

from functools import partial

import torch

COMPILE_MODES = ("regional", "step")
BUCKETS_PER_OCTAVE = 4
MIN_BUCKET = 32
RECOMPILE_LIMIT = 64  # buckets x guidance patterns; past torch's limit of 8 it would silently run eager


def bucket_length(n: int, maximum: int | None = None) -> int:
    """`n` latents rounded up to the next bucket: MIN_BUCKET, then BUCKETS_PER_OCTAVE evenly spaced
    sizes per octave (5/8, 6/8, 7/8, 8/8 of the octave's top); `maximum` (the model's longest
    latent sequence) is a bucket of its own."""
    rounded = _round_up(n)
    return min(rounded, maximum) if maximum is not None and n <= maximum else rounded


def _round_up(n: int) -> int:
    if n <= MIN_BUCKET:
        return MIN_BUCKET
    step = max(1, (1 << (n - 1).bit_length()) // (2 * BUCKETS_PER_OCTAVE))
    return -(-n // step) * step


def default_mode(device: torch.device) -> str:
    return "step" if device.type == "cuda" else "regional"


def compile_components(c, mode: str | None = None) -> str:
    """Compile a loaded model's `pipeline.Components` in place; returns the mode used."""
    mode = default_mode(c.device) if mode is None else mode
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r} is invalid; allowed: {', '.join(map(repr, COMPILE_MODES))}")
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    if mode == "step":
        cuda = c.device.type == "cuda"
        c.compile_step = partial(torch.compile, fullgraph=True, dynamic=False,
                                 mode="reduce-overhead" if cuda else None)
        maximum = int(c.config.get("sample_size", 0)) // c.autoencoder.downsampling_ratio or None
        c.bucket = partial(bucket_length, maximum=maximum)
    else:
        for block in c.dit.transformer.layers:
            block.compile(fullgraph=True)
    compile_decoder(c.autoencoder)
    return mode


def compile_decoder(autoencoder) -> None:
    """Regional compile of the SAME decoder's transformer blocks (one graph for the stack)."""
    for block in autoencoder.decoder_blocks():
        block.compile(fullgraph=True)
