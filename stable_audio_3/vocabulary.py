"""What a model's prompt vocabulary knows: unknown words, a one-line warning, example prompts.

For every surface (API log, CLI, web page, server job) that wants to tell a user that a prompt has
words the model cannot read. Only a *closed* vocabulary (a WordLevel tokenizer, like the built-in
demo's: every word outside its list becomes `<unk>`) has unknown words; an open one (the official
T5Gemma's byte-level BPE) reads any text, so it reports none.

Importing this module is cheap (no torch): the tokenizer is reached through the model's components
or loaded from a folder only when a function is called.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Good general prompts for the official (open-vocabulary) models.
OFFICIAL_EXAMPLES = [
    "Warm analog synth pad, slow evolving chords, 90 BPM",
    "Upbeat acoustic guitar strumming, folk, 120 BPM",
    "Rain on a window with distant thunder",
    "Punchy techno drum loop, 128 BPM",
    "Gentle solo piano melody, reflective",
]
# Candidates for a closed-vocabulary model (the demo); only those whose every word the model reads
# (after its prompt normaliser) are offered, so a vocabulary without drums offers no drum prompt.
CLOSED_EXAMPLES = [
    "sine a4",
    "saw c3",
    "square wave e4",
    "triangle g4",
    "a sine tone at 440 hz",
    "plucked saw c4",
    "square a3 minor chord",
    "sine c4 major chord",
    "pink noise",
    "brown noise",
    "rising saw sweep",
    "drum beat 120 bpm",
    "kick drum",
]


def _tokenizer(model: Any):
    """The PromptTokenizer of a StableAudioModel, a PromptTokenizer itself, or one loaded from a
    model folder (model_config.json naming its text encoder subfolder) or a tokenizer folder."""
    if hasattr(model, "unknown_words") and hasattr(model, "closed_vocabulary"):
        return model
    if isinstance(model, (str, os.PathLike)):
        return _tokenizer_from_folder(Path(model))
    conditioner = getattr(model, "conditioner", None)
    if conditioner is None:
        kind = type(model).__name__
        raise TypeError(f"model: expected a StableAudioModel, a PromptTokenizer or a model folder, got {kind}")
    prompt = conditioner.prompt_conditioners().get("prompt")
    if prompt is None or prompt.text_encoder is None:
        raise ValueError("model: it has no prompt conditioner with a text encoder attached")
    return prompt.text_encoder.tokenizer


def _tokenizer_from_folder(folder: Path):
    from .models.conditioning import PromptTokenizer

    max_length = 128
    config_path = folder / "model_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        for entry in config["model"]["conditioning"]["configs"]:
            if entry.get("type") == "t5gemma":
                cfg = entry.get("config", {})
                max_length = cfg.get("max_length", max_length)
                if cfg.get("subfolder") and (folder / cfg["subfolder"] / "tokenizer.json").is_file():
                    folder = folder / cfg["subfolder"]
                break
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"model: no tokenizer.json in {folder} or the subfolder its model_config.json names")
    return PromptTokenizer.from_dir(folder, max_length)


def unknown_words(model: Any, prompt: str) -> list[tuple[str, list[str]]]:
    """Each word of `prompt` that the model's closed vocabulary does not know, as typed, with its
    nearest known words (possibly none); [] for an open vocabulary."""
    return _tokenizer(model).unknown_words(prompt)


def describe_unknown(pairs: list[tuple[str, list[str]]]) -> str:
    """One line naming the unknown words and the nearest known ones; "" when there are none."""
    from .models.conditioning import describe_unknown_words

    return describe_unknown_words(pairs)


def example_prompts(model: Any) -> list[str]:
    """Prompts that work well: for a closed vocabulary, those of CLOSED_EXAMPLES it fully knows;
    for an open one, OFFICIAL_EXAMPLES."""
    tokenizer = _tokenizer(model)
    if not tokenizer.closed_vocabulary:
        return list(OFFICIAL_EXAMPLES)
    return [p for p in CLOSED_EXAMPLES if not tokenizer.unknown_words(p)]
