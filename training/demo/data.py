"""Procedurally generated, labelled audio for the built-in `demo` model.

Every clip is a (prompt, duration, audio) triple drawn from a seeded numpy Generator, so a data set
is reproducible from its seed alone. The audio is mono content in both channels (the demo's
autoencoder keeps the mid signal only). The vocabulary is deliberately small and regular:

    tones    "<timbre> <note>" or "<note> <timbre>"      sine, saw, square, triangle; notes C2..C7
    plucks   "plucked <timbre> <note>"                  the same, with a fast exponential decay
    chords   "<timbre> <note> major|minor chord"         root C2..B4
    noise    "white|pink|brown noise"
    silence  "silence"
    sweeps   "rising|falling <timbre> sweep"

A note is one word: a letter, an optional sharp or flat, an octave (`a4`, `c#3`, `bb2`).
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
    "square": ["square", "square wave"],
    "triangle": ["triangle", "triangle wave"],
}
NOTE_RANGE = (36, 96)  # MIDI C2 .. C7 (65 Hz .. 2.09 kHz), both included
CHORD_ROOTS = (36, 71)  # C2 .. B4
MIN_SECONDS, MAX_SECONDS = 1.0, 6.0
# Most tonal clips start every oscillator at phase 0: then a prompt fixes the waveform, not only its
# spectrum, and the DiT learns to follow the prompt far faster (with random phases the clean-audio
# estimate at high noise is ~0 whatever the prompt says). The rest keep random phases.
FRAME_FADE = 88  # samples (2 ms) of fade at each frame edge of frame-locked clips
NOISE_RMS = (0.15, 0.25)  # noise is levelled by RMS (peaks clipped at 0.99): white noise stays audible
# No drums: the demo's autoencoder keeps 128 directions of a 4096-sample frame, which hold steady
# tones but not a transient at an arbitrary position (the model trained on drums rendered none).
KINDS = {"tone": 0.61, "pluck": 0.08, "chord": 0.1, "noise": 0.08, "silence": 0.06, "sweep": 0.07}


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
    audio: np.ndarray  # (2, int(seconds * SAMPLE_RATE)) float32, both channels equal
    kind: str
    pitch_hz: float | None = None


# -- oscillators ----------------------------------------------------------------------------------


def oscillator(timbre: str, phase: np.ndarray, max_hz: float) -> np.ndarray:
    """Band-limited waveform from a phase track (cycles); harmonics stop below 5 kHz."""
    if timbre == "sine":
        return np.sin(2 * np.pi * phase)
    n_harm = int(max(1, min(16, 5000 // max(max_hz, 1.0))))
    out = np.zeros_like(phase)
    for k in range(1, n_harm + 1):
        if timbre == "saw":
            out += np.sin(2 * np.pi * k * phase) / k
        elif timbre == "square" and k % 2:
            out += np.sin(2 * np.pi * k * phase) / k
        elif timbre == "triangle" and k % 2:
            out += ((-1) ** ((k - 1) // 2)) * np.sin(2 * np.pi * k * phase) / k**2
    return out


def envelope(n: int, rng: np.random.Generator, pluck: bool) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    attack = 0.003 if pluck else rng.uniform(0.005, 0.03)
    release = min(0.05, n / SAMPLE_RATE / 4)
    env = np.minimum(1.0, t / attack) * np.minimum(1.0, (n / SAMPLE_RATE - t) / release)
    if pluck:
        env *= np.exp(-t * rng.uniform(2.0, 4.0))
    return env


def frame_locked(phase: np.ndarray, frame: int) -> np.ndarray:
    """A phase track restarted at 0 at every `frame`-sample boundary (see `make_clip`)."""
    starts = phase[(np.arange(phase.shape[0]) // frame) * frame]
    return phase - starts


def frame_fade(n: int, frame: int) -> np.ndarray:
    """Gain that dips to 0 over FRAME_FADE samples at each frame boundary (no clicks at the restarts)."""
    pos = np.arange(n) % frame
    edge = np.minimum(pos, frame - 1 - pos) / FRAME_FADE
    return np.sin(0.5 * np.pi * np.clip(edge, 0.0, 1.0)) ** 2


def tone(
    freqs: list[float], timbre: str, n: int, rng: np.random.Generator, pluck: bool = False, frame: int = 0
) -> np.ndarray:
    """Mono (n,) float64: the notes' waveforms summed under one envelope; random phases, or with
    `frame` > 0 every frame of that many samples starting at phase 0."""
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n)
    for f in freqs:
        phase = f * t
        phase = frame_locked(phase, frame) if frame else phase + rng.uniform(0, 1)
        out += oscillator(timbre, phase, max(freqs))
    if frame:
        out *= frame_fade(n, frame)
    return out * envelope(n, rng, pluck)


def coloured_noise(colour: str, n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0)
    if colour == "pink":
        spec /= np.sqrt(f)
    elif colour == "brown":
        spec /= f
    x = np.fft.irfft(spec, n)
    return x / (np.abs(x).max() + 1e-9)


def _out(mono: np.ndarray, peak: float) -> np.ndarray:
    """Normalise to `peak` and duplicate into two channels."""
    mono = mono / (np.abs(mono).max() + 1e-9) * peak
    return np.stack([mono, mono]).astype(np.float32)


def _timbre_word(rng: np.random.Generator, timbre: str) -> str:
    words = TIMBRES[timbre]
    return words[rng.integers(len(words))]


def _pick(rng: np.random.Generator, options: list) -> object:
    return options[rng.integers(len(options))]


def make_clip(
    rng: np.random.Generator,
    seconds: float | None = None,
    kind: str | None = None,
    transpose: int = 0,
    frame: int = 0,
) -> Clip:
    """One random labelled clip. `kind` forces a category (one of KINDS); `transpose` shifts the
    sounding pitch of tones, plucks and chords by that many semitones but not their prompt (the
    demo LoRA's training data).

    `frame` > 0 makes tones, chords and sweeps *frame-locked*: their waveform restarts at phase 0
    at every frame of that many samples (the autoencoder's patch), with 2 ms fades at the seams.
    Then each prompt has one latent vector, the same in every frame, which the DiT learns quickly
    and can produce from the prompt alone; with free-running phases the frames of a tone rotate
    through a 2-D latent plane, and at high noise levels the best prediction averages to silence.
    """
    if seconds is None:
        seconds = float(np.round(rng.uniform(MIN_SECONDS, MAX_SECONDS), 1))
    n = int(seconds * SAMPLE_RATE)
    if kind is None:
        kind = list(KINDS)[rng.choice(len(KINDS), p=list(KINDS.values()))]
    peak = rng.uniform(0.4, 0.7)
    timbre = _pick(rng, list(TIMBRES))
    word = _timbre_word(rng, timbre)
    if kind in ("tone", "pluck"):
        midi = int(rng.integers(NOTE_RANGE[0], NOTE_RANGE[1] + 1))
        hz = midi_to_hz(midi + transpose)
        note = midi_to_name(midi, flat=rng.random() < 0.3)
        if kind == "pluck":
            prompt = f"plucked {word} {note}"
        else:
            prompt = f"{word} {note}" if rng.random() < 0.8 else f"{note} {word}"
        return Clip(prompt, seconds, _out(tone([hz], timbre, n, rng, kind == "pluck", frame), peak), kind, hz)
    if kind == "chord":
        root = int(rng.integers(CHORD_ROOTS[0], CHORD_ROOTS[1] + 1))
        quality = _pick(rng, ["major", "minor"])
        notes = [root, root + (4 if quality == "major" else 3), root + 7]
        prompt = f"{word} {midi_to_name(root, flat=rng.random() < 0.3)} {quality} chord"
        audio = tone([midi_to_hz(m + transpose) for m in notes], timbre, n, rng, frame=frame)
        return Clip(prompt, seconds, _out(audio, peak), kind, midi_to_hz(root + transpose))
    if kind == "noise":
        colour = _pick(rng, ["white", "pink", "brown"])
        audio = coloured_noise(colour, n, rng) * envelope(n, rng, False)
        audio = np.clip(audio / (np.sqrt(np.mean(audio**2)) + 1e-9) * rng.uniform(*NOISE_RMS), -0.99, 0.99)
        return Clip(f"{colour} noise", seconds, np.stack([audio, audio]).astype(np.float32), kind)
    if kind == "silence":
        return Clip("silence", seconds, np.zeros((2, n), np.float32), kind)
    if kind != "sweep":
        raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    direction = _pick(rng, ["rising", "falling"])
    lo, hi = 110.0, 880.0
    t = np.arange(n) / SAMPLE_RATE
    frac = t / seconds if direction == "rising" else 1 - t / seconds
    phase = np.cumsum(lo * (hi / lo) ** frac) / SAMPLE_RATE
    phase = frame_locked(phase, frame) if frame else phase + rng.uniform(0, 1)
    audio = oscillator(timbre, phase, hi) * envelope(n, rng, False) * (frame_fade(n, frame) if frame else 1.0)
    return Clip(f"{direction} {word} sweep", seconds, _out(audio, peak), kind)


def note_words() -> list[str]:
    words = set()
    for midi in range(NOTE_RANGE[0], NOTE_RANGE[1] + 1):
        words.add(midi_to_name(midi))
        words.add(midi_to_name(midi, flat=True))
    return sorted(words)


def vocabulary() -> list[str]:
    """Every word the generator's prompts use, for the WordLevel tokenizer."""
    words = {
        "plucked", "major", "minor", "chord", "noise", "white", "pink", "brown", "silence",
        "rising", "falling", "sweep",
    }  # fmt: skip
    for timbre_words in TIMBRES.values():
        for w in timbre_words:
            words.update(w.split())
    words.update(note_words())
    return sorted(words)
