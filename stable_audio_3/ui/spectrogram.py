"""The result's picture: a spectrogram with a log-frequency axis (notes evenly spaced, as a musician
reads them) and labelled time and frequency axes."""

from __future__ import annotations

import numpy as np
import torch

# A perceptually even dark-to-light colour ramp (the magma map's stops).
_MAGMA = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]], dtype=np.float32)
F_MIN = 20.0  # Hz at the bottom edge
FREQ_TICKS = (50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
DYNAMIC_RANGE_DB = 80.0
LEFT, BOTTOM, TOP, RIGHT = 58, 34, 8, 12  # margins for the axis labels, in pixels
INK, PAPER = (40, 40, 40), (255, 255, 255)


def log_frequency_levels(mono: torch.Tensor, sample_rate: int, rows: int, n_fft: int = 4096,
                         hop: int = 512) -> np.ndarray:
    """(rows, frames) levels in [0, 1] (0: 80 dB below the loudest bin); row 0 is the highest frequency."""
    if mono.numel() < n_fft:
        mono = torch.nn.functional.pad(mono, (0, n_fft - mono.numel()))
    spec = torch.stft(mono, n_fft, hop_length=hop, window=torch.hann_window(n_fft), return_complex=True).abs()
    db = 20 * torch.log10(spec.clamp(min=1e-5))
    level = ((db - db.max() + DYNAMIC_RANGE_DB) / DYNAMIC_RANGE_DB).clamp(0, 1).numpy()
    f_max = sample_rate / 2
    # Each output row's frequency, evenly spaced in log frequency, read between the two nearest STFT bins.
    freqs = F_MIN * (f_max / F_MIN) ** (np.arange(rows)[::-1] / max(rows - 1, 1))
    position = freqs / f_max * (level.shape[0] - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, level.shape[0] - 1)
    frac = (position - low)[:, None]
    return level[low] * (1 - frac) + level[high] * frac


def freq_label(hz: float) -> str:
    return f"{hz / 1000:g}k" if hz >= 1000 else f"{hz:g}"


def spectrogram_image(audio: torch.Tensor, sample_rate: int = 44100, width: int = 1000, height: int = 300):
    """A (C, T) item's spectrogram as a PIL image: log-frequency axis in Hz, time axis in seconds."""
    from PIL import Image, ImageDraw, ImageFont

    mono = audio.detach().float().cpu().mean(0)
    plot_w, plot_h = width - LEFT - RIGHT, height - TOP - BOTTOM
    level = log_frequency_levels(mono, sample_rate, plot_h)
    stops = np.linspace(0, 1, len(_MAGMA))
    rgb = np.stack([np.interp(level, stops, _MAGMA[:, c]) for c in range(3)], axis=-1).astype(np.uint8)
    plot = Image.fromarray(rgb).resize((plot_w, plot_h), Image.BILINEAR)

    image = Image.new("RGB", (width, height), PAPER)
    image.paste(plot, (LEFT, TOP))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    draw.rectangle((LEFT - 1, TOP - 1, LEFT + plot_w, TOP + plot_h), outline=INK)
    f_max = sample_rate / 2
    span = np.log(f_max / F_MIN)
    for hz in FREQ_TICKS:
        if hz > f_max:
            continue
        y = TOP + plot_h - 1 - round(np.log(hz / F_MIN) / span * (plot_h - 1))
        draw.line((LEFT - 5, y, LEFT - 1, y), fill=INK)
        draw.text((LEFT - 8, y), freq_label(hz), fill=INK, font=font, anchor="rm")
    draw.text((4, TOP), "Hz", fill=INK, font=font, anchor="la")
    seconds = mono.numel() / sample_rate
    step = next((s for s in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60) if seconds / s <= 12), 120)
    for i in range(int(seconds / step + 1e-9) + 1):
        x = LEFT + round(i * step / seconds * (plot_w - 1)) if seconds > 0 else LEFT
        draw.line((x, TOP + plot_h, x, TOP + plot_h + 4), fill=INK)
        draw.text((x, TOP + plot_h + 6), f"{i * step:g}", fill=INK, font=font, anchor="ma")
    draw.text((4, TOP + plot_h + 6), "time (s)", fill=INK, font=font, anchor="la")
    return image
