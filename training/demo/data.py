"""Procedurally generated, labelled audio for the built-in `demo` model.

Every clip is a (prompt, duration, stereo audio) triple drawn from a seeded numpy Generator, so a
dataset is reproducible from its seed alone. The vocabulary is deliberately small and regular:

    tones    "<timbre> <note>" / "<timbre> at <hz> hz"     sine, saw, square, triangle; C2..C6
    plucks   "plucked <timbre> <note>"                    same, with a fast exponential decay
    chords   "<timbre> <root> major|minor chord"
    noise    "white|pink|brown noise"
    silence  "silence"
    drums    "kick|snare|hihat", "drum beat at <bpm> bpm"
    sweeps   "rising|falling <timbre> sweep"
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 44100
NOTE_NAMES = ["c", "c#", "d", "d#", "e", "f", "f#", "g", "g#", "a", "a#", "b"]
FLAT_NAMES = {"c#": "db", "d#": "eb", "f#": "gb", "g#": "ab", "a#": "bb"}
TIMBRES = {
    "sine": ["sine", "sine wave", "pure tone"],
    "saw": ["saw", "sawtooth", "saw synth"],
    "square": ["square", "square wave", "square synth"],
    "triangle": ["triangle", "triangle wave", "soft triangle"],
}
NOTE_RANGE = (36, 84)  # MIDI C2 .. C6
MIN_SECONDS, MAX_SECONDS = 1.0, 6.0


def midi_to_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def midi_to_name(midi: int, flat: bool = False) -> str:
    name = NOTE_NAMES[midi % 12]
    if flat and name in FLAT_NAMES:
        name = FLAT_NAMES[name]
    return f"{name}{midi // 12 - 1}"


def name_to_midi(name: str) -> int:
    """'c#4' / 'db4' / 'a2' -> MIDI number."""
    name = name.strip().lower()
    pitch, octave = name[:-1], int(name[-1])
    flats = {v: k for k, v in FLAT_NAMES.items()}
    pitch = flats.get(pitch, pitch)
    return NOTE_NAMES.index(pitch) + 12 * (octave + 1)


@dataclass
class Clip:
    prompt: str
    seconds: float
    audio: np.ndarray  # (2, int(seconds * SAMPLE_RATE)) float32
    kind: str
    pitch_hz: float | None = None


# -- oscillators ----------------------------------------------------------------------------------


def oscillator(timbre: str, phase: np.ndarray, max_hz: float) -> np.ndarray:
    """Band-limited waveform from a phase track (cycles); harmonics stop below 6 kHz to stay clean."""
    if timbre == "sine":
        return np.sin(2 * np.pi * phase)
    n_harm = int(max(1, min(12, 6000 // max(max_hz, 1.0))))
    out = np.zeros_like(phase)
    for k in range(1, n_harm + 1):
        if timbre == "saw":
            out += np.sin(2 * np.pi * k * phase) / k * 0.6
        elif timbre == "square" and k % 2:
            out += np.sin(2 * np.pi * k * phase) / k * 0.8
        elif timbre == "triangle" and k % 2:
            out += ((-1) ** ((k - 1) // 2)) * np.sin(2 * np.pi * k * phase) / k**2 * 0.8
    return out


def envelope(n: int, rng: np.random.Generator, pluck: bool) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    attack = 0.005 if pluck else rng.uniform(0.005, 0.05)
    release = min(0.05, n / SAMPLE_RATE / 4)
    env = np.minimum(1.0, t / attack) * np.minimum(1.0, (n / SAMPLE_RATE - t) / release)
    if pluck:
        env *= np.exp(-t * rng.uniform(2.0, 5.0))
    return env


def tone(freqs: list[float], timbre: str, n: int, rng: np.random.Generator, pluck: bool = False) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n)
    for f in freqs:
        out += oscillator(timbre, f * t + rng.uniform(0, 1), max(freqs))
    return out / len(freqs) * envelope(n, rng, pluck)


def coloured_noise(colour: str, n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0)
    if colour == "pink":
        spec /= np.sqrt(f)
    elif colour == "brown":
        spec /= f
    x = np.fft.irfft(spec, n)
    return x / (np.abs(x).max() + 1e-9)


def drum_hit(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    if kind == "kick":
        f = 50 + 120 * np.exp(-t * 30)
        return np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE) * np.exp(-t * 12)
    noise = rng.standard_normal(n)
    if kind == "snare":
        return (0.6 * noise + 0.5 * np.sin(2 * np.pi * 190 * t)) * np.exp(-t * 25) * 0.7
    hat = np.diff(noise, prepend=0.0)  # crude high-pass
    return hat * np.exp(-t * 70) * 0.35


# -- clips ----------------------------------------------------------------------------------------


def _stereo(mono: np.ndarray, rng: np.random.Generator, amp: float) -> np.ndarray:
    pan = rng.uniform(-0.3, 0.3)
    gains = np.array([np.cos((pan + 1) * np.pi / 4), np.sin((pan + 1) * np.pi / 4)]) * np.sqrt(2)
    peak = np.abs(mono).max() + 1e-9
    return (gains[:, None] * mono[None, :] / peak * amp).astype(np.float32)


def _timbre_word(rng: np.random.Generator, timbre: str) -> str:
    words = TIMBRES[timbre]
    return words[rng.integers(len(words))]


def make_clip(rng: np.random.Generator, seconds: float | None = None, kind: str | None = None) -> Clip:
    """One random labelled clip. `kind` forces a category (tone, pluck, chord, noise, silence, drums, sweep)."""
    if seconds is None:
        seconds = float(np.round(rng.uniform(MIN_SECONDS, MAX_SECONDS), 1))
    n = int(seconds * SAMPLE_RATE)
    if kind is None:
        kinds = ["tone", "pluck", "chord", "noise", "silence", "drums", "sweep"]
        kind = kinds[rng.choice(len(kinds), p=[0.48, 0.12, 0.1, 0.09, 0.06, 0.09, 0.06])]
    amp = rng.uniform(0.35, 0.7)
    timbre = list(TIMBRES)[rng.integers(len(TIMBRES))]
    if kind in ("tone", "pluck"):
        midi = int(rng.integers(NOTE_RANGE[0], NOTE_RANGE[1] + 1))
        hz = midi_to_hz(midi)
        use_hz = rng.random() < 0.3
        if use_hz and rng.random() < 0.5:  # off-grid frequencies too, so "hz" prompts interpolate
            hz = float(np.round(np.exp(rng.uniform(np.log(65.0), np.log(1050.0)))))
        label = f"{int(round(hz))} hz" if use_hz else midi_to_name(midi, flat=rng.random() < 0.2)
        word = _timbre_word(rng, timbre)
        if kind == "pluck":
            prompt = f"plucked {word} {label}"
        else:
            prompt = [f"{word} {label}", f"{label} {word}", f"{word} at {label}"][rng.integers(3)]
        return Clip(prompt, seconds, _stereo(tone([hz], timbre, n, rng, kind == "pluck"), rng, amp), kind, hz)
    if kind == "chord":
        root = int(rng.integers(NOTE_RANGE[0], 72))
        quality = ["major", "minor"][rng.integers(2)]
        notes = [root, root + (4 if quality == "major" else 3), root + 7]
        name = NOTE_NAMES[root % 12] if rng.random() < 0.5 else midi_to_name(root)
        prompt = f"{_timbre_word(rng, timbre)} {name} {quality} chord"
        audio = tone([midi_to_hz(m) for m in notes], timbre, n, rng)
        return Clip(prompt, seconds, _stereo(audio, rng, amp), kind, midi_to_hz(root))
    if kind == "noise":
        colour = ["white", "pink", "brown"][rng.integers(3)]
        left, right = coloured_noise(colour, n, rng), coloured_noise(colour, n, rng)
        mix = 0.7 * left + 0.3 * right
        audio = np.stack([left, mix]) * amp * 0.8 * envelope(n, rng, False)
        return Clip(f"{colour} noise", seconds, audio.astype(np.float32), kind)
    if kind == "silence":
        return Clip(
            ["silence", "quiet silence", "nothing"][rng.integers(3)], seconds, np.zeros((2, n), np.float32), kind
        )
    if kind == "drums":
        if rng.random() < 0.35:
            hit = ["kick", "snare", "hihat"][rng.integers(3)]
            audio = np.zeros(n)
            length = min(n, SAMPLE_RATE // 2)
            audio[:length] = drum_hit(hit, length, rng)
            return Clip(f"{hit} drum" if hit != "hihat" else "hihat", seconds, _stereo(audio, rng, amp), kind)
        bpm = int(rng.choice([80, 90, 100, 110, 120, 130, 140]))
        beat = int(SAMPLE_RATE * 60 / bpm)
        audio = np.zeros(n)
        for i, start in enumerate(range(0, n, beat // 2)):
            hit = "hihat" if i % 2 else ("kick" if (i // 2) % 2 == 0 else "snare")
            length = min(n - start, beat // 2)
            audio[start : start + length] += drum_hit(hit, length, rng)
        return Clip(f"drum beat at {bpm} bpm", seconds, _stereo(audio, rng, amp), kind)
    # sweep
    direction = ["rising", "falling"][rng.integers(2)]
    lo, hi = 110.0, 1760.0
    t = np.arange(n) / SAMPLE_RATE
    frac = t / seconds if direction == "rising" else 1 - t / seconds
    freq = lo * (hi / lo) ** frac
    phase = np.cumsum(freq) / SAMPLE_RATE
    audio = oscillator(timbre, phase, hi) * envelope(n, rng, False)
    return Clip(f"{direction} {_timbre_word(rng, timbre)} sweep", seconds, _stereo(audio, rng, amp), kind)


def vocabulary() -> list[str]:
    """Every word the generator's prompts use (after the tokenizer's split), for the WordLevel vocab."""
    words = {
        "plucked",
        "at",
        "hz",
        "major",
        "minor",
        "chord",
        "noise",
        "white",
        "pink",
        "brown",
        "silence",
        "quiet",
        "nothing",
        "kick",
        "snare",
        "hihat",
        "drum",
        "beat",
        "bpm",
        "rising",
        "falling",
        "sweep",
        "tone",
        "wave",
        "synth",
        "soft",
        "pure",
    }
    for timbre_words in TIMBRES.values():
        for w in timbre_words:
            words.update(w.split())
    words.update(NOTE_NAMES)
    words.update(FLAT_NAMES.values())
    words.update(str(d) for d in range(10))
    return sorted(words)
