"""Where random draws come from.

The reference draws everything (initial noise, sampler noise, decoder dither and mask noise) from
torch's global generator, so one seed covers the whole batch. A `NoiseSource` can instead give each
batch item its own generator, so that item i of a batch equals a batch-1 run with seed i, and can
draw on the CPU, so that a seed gives the same audio on every device.
"""

from __future__ import annotations

import torch


class NoiseSource:
    """`randn_like(x)` from the global generator (default) or from one generator per batch item.

    With per-item generators, the first dimension of every draw is split into len(generators) equal
    blocks, item-major: (B, ...) tensors and the decoder's (B * T, ...) mask noise alike.
    """

    def __init__(self, generators: list[torch.Generator] | None = None, device: str | torch.device | None = None):
        self.generators = generators
        self.device = None if device is None else torch.device(device)

    @classmethod
    def per_item(cls, seeds: list[int], device: str | torch.device = "cpu") -> NoiseSource:
        gens = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        return cls(gens, device)

    def randn(self, shape: tuple[int, ...] | torch.Size, device: torch.device | str,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        draw_device = self.device or torch.device(device)
        if self.generators is None:
            out = torch.randn(shape, device=draw_device, dtype=dtype)
        else:
            n = len(self.generators)
            if shape[0] % n:
                raise ValueError(f"a draw of shape {tuple(shape)} cannot be split between {n} batch items")
            block = (shape[0] // n, *shape[1:])
            out = torch.cat([torch.randn(block, generator=g, device=draw_device, dtype=dtype)
                             for g in self.generators])
        return out.to(device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape, x.device, x.dtype)


GLOBAL = NoiseSource()
