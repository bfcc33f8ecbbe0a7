"""Text and number conditioning: what the DiT cross-attends to and its global (seconds) vector.

    batch [{"prompt": str, "seconds_total": float}, ...]
      prompt        -> tokenizer -> T5Gemma encoder -> learned padding -> (B, L, 768), mask (B, L)
      seconds_total -> clamp, normalise -> expo Fourier features -> Linear -> (B, 1, 768), ones (B, 1)
    cross_attn_cond = cat([prompt, seconds], dim=1)  (B, L + 1, 768)
    global_cond     = seconds[:, 0]                  (B, 768)

Module names mirror the official checkpoint: after stripping `conditioner.` its keys are
`conditioners.prompt.padding_embedding` and `conditioners.seconds_total.embedder.embedding.1.{weight,bias}`.
The T5 encoder is deliberately *not* a submodule: it lives in its own files, is not part of the
checkpoint, is not cast by `.half()` and runs in the dtype of its weight file (bf16 for the real one).
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fourier import ExpoFourierFeatures
from .t5gemma import T5GemmaEncoder

# Hidden size of each supported text model (the official conditioner fixes it by model name).
T5GEMMA_MODEL_DIMS = {"google/t5gemma-b-b-ul2": 768}
# What transformers' GemmaTokenizer does when tokenizer_config.json is silent.
GEMMA_TOKENIZER_DEFAULTS = {"add_bos_token": True, "add_eos_token": False, "padding_side": "left"}

log = logging.getLogger(__name__)


# -- prompt vocabulary -----------------------------------------------------------------------------

# A note word: letter, optional sharp or flat, octave ("a4", "c#3", "bb2").
NOTE_WORD = re.compile(r"^([a-g])(#|b)?(\d)$")
SEMITONES = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
# A frequency as people type it: "440 Hz", "440hz", "1.5 kHz", "1,000 hertz".
FREQUENCY = re.compile(
    r"(?<![\w.,#])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)\s*(khz|kilohertz|hz|hertz)(?![\w#])", re.IGNORECASE
)


def note_hz(word: str) -> float | None:
    """Equal-tempered pitch of a note word (A4 = 440 Hz); None if `word` is not one."""
    m = NOTE_WORD.match(word)
    if m is None:
        return None
    letter, accidental, octave = m.groups()
    midi = SEMITONES[letter] + {"#": 1, "b": -1, None: 0}[accidental] + 12 * (int(octave) + 1)
    return 440.0 * 2.0 ** ((midi - 69) / 12)


class FrequencyToNote:
    """Rewrites "440 Hz" as a note word of the vocabulary ("a4"), for a model that knows pitches by note.

    A frequency is rewritten only inside the vocabulary's note range (within `max_deviation` of a
    known note's pitch); others stay as typed, so they count as unknown words and the user hears of
    them. `frame_hz`: the model plays a note on the multiple of frame_hz nearest to it (the demo's
    frame-locked tones); then of the notes within a semitone the one *heard* nearest is chosen.
    """

    def __init__(self, words: Iterable[str], max_deviation: float = 0.03, frame_hz: float | None = None):
        notes: dict[float, str] = {}
        for word in sorted(words, key=lambda w: ("b" in w[1:], w)):  # one spelling per pitch: sharps first
            hz = note_hz(word)
            if hz is not None:
                notes.setdefault(round(hz, 6), word)
        if not notes:
            raise ValueError("frequency_to_note: the vocabulary has no note words (like 'a4') to map to")
        self.notes = sorted(notes.items())
        self.max_deviation = max_deviation
        self.frame_hz = frame_hz

    def heard(self, note: float) -> float:
        return round(note / self.frame_hz) * self.frame_hz if self.frame_hz else note

    def nearest(self, hz: float) -> tuple[str, float]:
        """The known note word nearest to `hz` in pitch and its relative deviation from it."""
        note, word = min(self.notes, key=lambda item: abs(math.log(item[0] / hz)))
        return word, abs(note - hz) / hz

    def choose(self, hz: float) -> str | None:
        """The note word to play for `hz`, or None outside the vocabulary's note range."""
        word, deviation = self.nearest(hz)
        if deviation > self.max_deviation:
            return None
        semitone = math.log(2) / 12 + 1e-9
        near = [(note, w) for note, w in self.notes if abs(math.log(note / hz)) <= semitone]
        return min(near, key=lambda item: abs(math.log(self.heard(item[0]) / hz)))[1] if near else word

    @staticmethod
    def hz(match: re.Match) -> float:
        value = float(match.group(1).replace(",", ""))
        return value * (1000.0 if match.group(2).lower().startswith("k") else 1.0)

    def __call__(self, text: str) -> str:
        def replace(match: re.Match) -> str:
            hz = self.hz(match)
            word = self.choose(hz) if hz > 0 else None
            return word or match.group(0)

        return FREQUENCY.sub(replace, text)

    def unmapped(self, text: str) -> list[tuple[str, list[str]]]:
        """Frequencies in `text` outside the note range, each with the nearest note word."""
        out = []
        for match in FREQUENCY.finditer(text):
            hz = self.hz(match)
            if hz <= 0:
                out.append((match.group(0), []))
            elif self.choose(hz) is None:
                out.append((match.group(0), [self.nearest(hz)[0]]))
        return out


def describe_unknown_words(pairs: Sequence[tuple[str, Sequence[str]]]) -> str:
    """One line for a user: the prompt words the model cannot read and the nearest ones it can."""
    if not pairs:
        return ""
    parts = []
    for word, near in pairs:
        parts.append(f"'{word}' (nearest known: {', '.join(near)})" if near else f"'{word}' (no similar known word)")
    return (
        f"the prompt has words this model's vocabulary does not know, so it cannot follow them: {'; '.join(parts)}. "
        "Its model card lists the words it knows."
    )


# -- tokenizer ------------------------------------------------------------------------------------


def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class PromptTokenizer:
    """A `tokenizers` BPE tokenizer set up the way transformers' GemmaTokenizer is for SA3.

    The BOS/EOS template is rebuilt from `add_bos_token` / `add_eos_token` in tokenizer_config.json
    (transformers does the same, whatever post-processor tokenizer.json carries). Every prompt is
    truncated to `max_length` tokens, special tokens included, and padded to exactly `max_length`.

    A WordLevel tokenizer has a *closed* vocabulary: a word outside its list becomes the unknown
    token, and the model cannot follow it, so each call logs one warning naming such words. Two
    optional tokenizer_config.json settings rewrite prompts first (the built-in demo uses both):
    `"frequency_to_note": {"max_deviation": 0.03, "frame_hz": ...}` turns "440 Hz" into a note
    word of the vocabulary ("a4", see `FrequencyToNote`), and `"ignored_words": [...]` drops filler
    words ("a", "at", "the") that carry nothing for the model.
    """

    def __init__(self, tokenizer_file: str | Path, tokenizer_config: dict, max_length: int):
        from tokenizers import Tokenizer
        from tokenizers.processors import TemplateProcessing

        settings = {**GEMMA_TOKENIZER_DEFAULTS, **tokenizer_config}
        self.max_length = max_length
        self.add_bos = bool(settings["add_bos_token"])
        self.add_eos = bool(settings["add_eos_token"])
        self.padding_side = settings["padding_side"]
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._setup_vocabulary(settings)

        def token_id(name: str, default: str) -> tuple[str, int]:
            text = _token_text(settings.get(name)) or default
            idx = self.tokenizer.token_to_id(text)
            if idx is None:
                raise ValueError(f"{tokenizer_file}: {name} {text!r} is not in the vocabulary")
            return text, idx

        bos, eos = token_id("bos_token", "<bos>"), token_id("eos_token", "<eos>")
        pad_text, self.pad_id = token_id("pad_token", "<pad>")
        single = " ".join([f"{bos[0]}:0"] * self.add_bos + ["$A:0"] + [f"{eos[0]}:0"] * self.add_eos)
        pair = " ".join([single] + [f"{bos[0]}:1"] * self.add_bos + ["$B:1"] + [f"{eos[0]}:1"] * self.add_eos)
        specials = ([bos] if self.add_bos else []) + ([eos] if self.add_eos and eos != bos else [])
        self.tokenizer.post_processor = TemplateProcessing(single=single, pair=pair, special_tokens=specials)
        self.tokenizer.enable_truncation(max_length, direction=settings.get("truncation_side", "right"))
        self.tokenizer.enable_padding(
            direction=self.padding_side, pad_id=self.pad_id, pad_token=pad_text, length=max_length
        )

    def _setup_vocabulary(self, settings: dict) -> None:
        from tokenizers.models import WordLevel

        self.closed_vocabulary = isinstance(self.tokenizer.model, WordLevel)
        specials = {t.content for t in self.tokenizer.get_added_tokens_decoder().values()}
        vocab = self.tokenizer.get_vocab(with_added_tokens=False)
        self.known_words = sorted(w for w in vocab if w not in specials) if self.closed_vocabulary else []
        self.ignored_words = frozenset(w.lower() for w in settings.get("ignored_words", []))
        rule = settings.get("frequency_to_note")
        self.frequency_to_note = None
        if rule is not None:
            if not isinstance(rule, dict) or set(rule) - {"max_deviation", "frame_hz"}:
                allowed = "{'max_deviation': <fraction, e.g. 0.03>, 'frame_hz': <Hz, optional>}"
                raise ValueError(f"tokenizer_config.json: frequency_to_note {rule!r}; expected {allowed}")
            frame_hz = rule.get("frame_hz")
            self.frequency_to_note = FrequencyToNote(
                vocab, float(rule.get("max_deviation", 0.03)), None if frame_hz is None else float(frame_hz)
            )

    def _words(self, text: str) -> list[tuple[str, str]]:
        """(word as the vocabulary sees it, word as typed) for each word of `text`."""
        normalizer, pre = self.tokenizer.normalizer, self.tokenizer.pre_tokenizer
        normal = normalizer.normalize_str(text) if normalizer is not None else text
        if pre is None:
            return [(w, w) for w in normal.split()]
        pieces = pre.pre_tokenize_str(normal)
        same = len(normal) == len(text)  # lower-casing kept the offsets: report the word as typed
        return [(w, text[a:b] if same else w) for w, (a, b) in pieces]

    def normalize(self, prompt: str) -> str:
        """The prompt the vocabulary reads: frequencies as note words, filler words dropped."""
        if self.frequency_to_note is not None:
            prompt = self.frequency_to_note(prompt)
        if self.ignored_words:
            prompt = " ".join(typed for word, typed in self._words(prompt) if word not in self.ignored_words)
        return prompt

    def unknown_words(self, prompt: str) -> list[tuple[str, list[str]]]:
        """Words of `prompt` a closed vocabulary does not know, as typed, each with up to three
        similar known words; a frequency no known note is near counts as one word. [] when open."""
        if not self.closed_vocabulary:
            return []
        out: list[tuple[str, list[str]]] = []
        if self.frequency_to_note is not None:
            out = self.frequency_to_note.unmapped(prompt)
            prompt = FREQUENCY.sub(" ", prompt)
        seen = {word.lower() for word, _ in out}
        for word, typed in self._words(self.normalize(prompt)):
            if self.tokenizer.token_to_id(word) is None and word not in self.ignored_words and word not in seen:
                seen.add(word)
                out.append((typed, difflib.get_close_matches(word, self.known_words, n=3, cutoff=0.6)))
        return out

    @classmethod
    def from_dir(cls, folder: str | Path, max_length: int) -> PromptTokenizer:
        folder = Path(folder)
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        return cls(folder / "tokenizer.json", config, max_length)

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask (1 = real token), both int64 (B, max_length).

        Logs one warning per call when prompts have words a closed vocabulary does not know."""
        if self.closed_vocabulary:
            unknown: dict[str, list[str]] = {}
            for prompt in dict.fromkeys(prompts):
                for word, near in self.unknown_words(prompt):
                    unknown.setdefault(word, near)
            if unknown:
                log.warning(describe_unknown_words(list(unknown.items())))
        prompts = [self.normalize(p) for p in prompts]
        encodings = self.tokenizer.encode_batch(prompts, add_special_tokens=True)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask


# -- text encoder ----------------------------------------------------------------------------------


class TextEncoder:
    """Tokenizer + T5Gemma encoder. A plain object, so it stays out of the DiT checkpoint's state dict."""

    def __init__(self, tokenizer: PromptTokenizer, model: T5GemmaEncoder):
        self.tokenizer = tokenizer
        self.model = model

    @classmethod
    def from_dir(cls, folder: str | Path, max_length: int, device: str | torch.device = "cpu") -> TextEncoder:
        return cls(PromptTokenizer.from_dir(folder, max_length), T5GemmaEncoder.from_pretrained(folder, device))

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], device: str | torch.device) -> tuple[torch.Tensor, ...]:
        """(input_ids, attention_mask) int64 and the encoder's last hidden state, in the weights' dtype."""
        ids, mask = self.tokenizer(prompts)
        if self.model.embed_tokens.weight.device != torch.device(device):
            self.model.to(device)
        ids, mask = ids.to(device), mask.to(device)
        return ids, mask, self.model(ids, mask)


class OffloadedTextEncoder:
    """A text encoder kept in CPU memory that visits the compute device only to encode a batch.

    For GPUs short of memory: the T5Gemma (~0.6 GB in bf16) leaves the GPU after every encode,
    at the cost of one transfer each way per prompt batch. Same outputs as the plain encoder.
    """

    def __init__(self, inner: TextEncoder):
        self.inner = inner
        self.tokenizer = inner.tokenizer
        self.model = inner.model

    @property
    def hidden_size(self) -> int:
        return self.inner.hidden_size

    def encode(self, prompts: Sequence[str], device: str | torch.device) -> tuple[torch.Tensor, ...]:
        try:
            return self.inner.encode(prompts, device)
        finally:
            if self.model.embed_tokens.weight.device.type != "cpu":
                self.model.to("cpu")
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()


# -- conditioners ----------------------------------------------------------------------------------


@dataclass
class Encoded:
    """One conditioner's output: embeddings (B, N, D) and mask (B, N); the prompt adds diagnostics."""

    embeds: torch.Tensor
    mask: torch.Tensor
    input_ids: torch.Tensor | None = None
    tokenizer_mask: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # raw T5 output, before the padding rule


class PromptConditioner(nn.Module):
    """T5Gemma text -> (B, max_length, output_dim) with a bool mask; padded slots follow `padding_mode`.

    "learned" (SA3): masked positions hold the learned `padding_embedding`, so an empty prompt is
    max_length copies of it. "zero": masked positions are 0. "none": raw encoder output.
    """

    def __init__(
        self,
        output_dim: int,
        max_length: int = 128,
        padding_mode: str = "zero",
        model_name: str = "google/t5gemma-b-b-ul2",
        project_out: bool = False,
        **source: Any,
    ):
        super().__init__()
        if model_name not in T5GEMMA_MODEL_DIMS:
            raise ValueError(f"unknown text model {model_name!r}; supported: {', '.join(T5GEMMA_MODEL_DIMS)}")
        if padding_mode not in ("learned", "zero", "none"):
            raise ValueError(f"unknown padding_mode {padding_mode!r}; allowed: learned, zero, none")
        unknown = set(source) - {"repo_id", "subfolder", "model_path", "enable_grad"}
        if unknown:
            raise ValueError(f"prompt conditioner config: unknown keys {sorted(unknown)}")
        self.text_dim = T5GEMMA_MODEL_DIMS[model_name]
        self.max_length = max_length
        self.padding_mode = padding_mode
        self.source = {"model_name": model_name, **source}
        needs_proj = project_out or self.text_dim != output_dim
        self.proj_out = nn.Linear(self.text_dim, output_dim) if needs_proj else None
        if padding_mode == "learned":
            self.padding_embedding = nn.Parameter(torch.zeros(output_dim))
        self.text_encoder: TextEncoder | None = None

    def attach(self, text_encoder: TextEncoder) -> None:
        if text_encoder.hidden_size != self.text_dim:
            raise ValueError(f"text encoder hidden size {text_encoder.hidden_size} != expected {self.text_dim}")
        if text_encoder.tokenizer.max_length != self.max_length:
            raise ValueError(f"tokenizer max_length {text_encoder.tokenizer.max_length} != {self.max_length}")
        self.text_encoder = text_encoder

    def forward(self, prompts: Sequence[str], device: str | torch.device) -> Encoded:
        if self.text_encoder is None:
            raise RuntimeError("the prompt conditioner has no text encoder; call Conditioner.load_text_encoder()")
        ids, tok_mask, hidden = self.text_encoder.encode(prompts, device)
        mask = tok_mask.bool()
        embeds = hidden
        if self.proj_out is not None:
            embeds = self.proj_out(embeds.to(self.proj_out.weight.dtype))
        if self.padding_mode == "learned":
            # torch.where promotes: a bf16 encoder output meets an fp32 parameter -> fp32.
            embeds = torch.where(mask[..., None], embeds, self.padding_embedding)
        elif self.padding_mode == "zero":
            embeds = embeds * mask[..., None].float()
        return Encoded(embeds, mask, input_ids=ids, tokenizer_mask=tok_mask, hidden=hidden)


class NumberEmbedder(nn.Module):
    def __init__(self, features: int, dim: int = 256):
        super().__init__()
        self.features = features
        self.embedding = nn.Sequential(ExpoFourierFeatures(dim), nn.Linear(dim, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x.reshape(-1)).view(*x.shape, self.features)


class NumberConditioner(nn.Module):
    """A number (e.g. seconds_total) -> one token (B, 1, output_dim) with mask ones (B, 1).

    The value is clamped to [min_val, max_val] and mapped to [0, 1] before the Fourier features.
    """

    def __init__(
        self, output_dim: int, min_val: float = 0.0, max_val: float = 1.0, fourier_features_type: str = "expo"
    ):
        super().__init__()
        if fourier_features_type != "expo":
            raise ValueError(f"number conditioner: fourier_features_type {fourier_features_type!r} unsupported")
        self.min_val, self.max_val = min_val, max_val
        self.embedder = NumberEmbedder(output_dim)

    def forward(self, values: Sequence[float], device: str | torch.device) -> Encoded:
        x = torch.tensor([float(v) for v in values], device=device).clamp(self.min_val, self.max_val)
        x = (x - self.min_val) / (self.max_val - self.min_val)
        x = x.to(self.embedder.embedding[1].weight.dtype)
        embeds = self.embedder(x)[:, None, :]
        return Encoded(embeds, torch.ones(embeds.shape[0], 1, device=device))


# -- the conditioner and the DiT inputs ------------------------------------------------------------


@dataclass
class DiTConditioning:
    """What the DiT receives from the conditioner (spec §4.5)."""

    cross_attn_cond: torch.Tensor  # (B, N, D)
    cross_attn_mask: torch.Tensor  # (B, N) float; not used by the DiT
    global_cond: torch.Tensor  # (B, D)
    parts: dict[str, Encoded]  # each conditioner's output, for inspection


class Conditioner(nn.Module):
    """All conditioners of a model, keyed by id (`prompt`, `seconds_total`), plus how the DiT consumes them."""

    def __init__(
        self,
        conditioners: dict[str, nn.Module],
        cross_attn_ids: Sequence[str] = ("prompt", "seconds_total"),
        global_ids: Sequence[str] = ("seconds_total",),
        default_keys: dict[str, str] | None = None,
    ):
        super().__init__()
        self.conditioners = nn.ModuleDict(conditioners)
        self.cross_attn_ids = list(cross_attn_ids)
        self.global_ids = list(global_ids)
        self.default_keys = dict(default_keys or {})

    @classmethod
    def from_config(cls, conditioning: dict, diffusion: dict | None = None) -> Conditioner:
        """From `model.conditioning` (and `model.diffusion` for which ids feed cross-attention / global cond)."""
        dim = conditioning["cond_dim"]
        modules: dict[str, nn.Module] = {}
        for entry in conditioning["configs"]:
            kind, cfg = entry["type"], entry.get("config", {})
            if kind == "t5gemma":
                modules[entry["id"]] = PromptConditioner(dim, **cfg)
            elif kind == "number":
                modules[entry["id"]] = NumberConditioner(dim, **cfg)
            else:
                raise ValueError(f"unknown conditioner type {kind!r} (id {entry['id']!r}); allowed: t5gemma, number")
        ids = {}
        if diffusion is not None:
            ids = {
                "cross_attn_ids": diffusion.get("cross_attention_cond_ids", []),
                "global_ids": diffusion.get("global_cond_ids", []),
            }
        return cls(modules, default_keys=conditioning.get("default_keys"), **ids)

    def prompt_conditioners(self) -> dict[str, PromptConditioner]:
        return {k: m for k, m in self.conditioners.items() if isinstance(m, PromptConditioner)}

    def load_text_encoder(
        self,
        folders: Mapping[str, str | Path],
        device: str | torch.device = "cpu",
        offload: bool = False,
    ) -> None:
        """Load the T5Gemma of every prompt conditioner from its folder and attach it.

        `folders`: {conditioner id: T5Gemma folder}; which folder holds a model's text encoder is
        decided by the loading layer (`stable_audio_3.loading.attach_text_encoder`).
        The weights go straight from the file onto `device` in the file's dtype. `offload=True`
        keeps them in CPU memory instead; they visit the compute device only while encoding.
        """
        for key, cond in self.prompt_conditioners().items():
            encoder = TextEncoder.from_dir(folders[key], cond.max_length, "cpu" if offload else device)
            cond.attach(OffloadedTextEncoder(encoder) if offload else encoder)
        self.offload_text_encoder = offload

    def _inputs(self, batch: Sequence[dict], key: str) -> list:
        values = []
        for item in batch:
            name = key if key in item else self.default_keys.get(key)
            if name not in item:
                raise ValueError(f"conditioning input {key!r} missing from batch item {item!r}")
            value = item[name]
            # Collated metadata wraps values in lists; the official code takes the first element.
            if isinstance(value, list) or (isinstance(value, tuple) and len(value) == 1):
                value = value[0]
            values.append(value)
        return values

    def forward(self, batch: Sequence[dict], device: str | torch.device = "cpu") -> dict[str, Encoded]:
        return {key: cond(self._inputs(batch, key), device) for key, cond in self.conditioners.items()}

    def dit_inputs(self, parts: dict[str, Encoded]) -> DiTConditioning:
        """Cross-attention = concat over tokens of the `cross_attn_ids` outputs; global = concat over channels."""
        cross = torch.cat([parts[k].embeds for k in self.cross_attn_ids], dim=1)
        glob = torch.cat([parts[k].embeds for k in self.global_ids], dim=-1).squeeze(1)
        # cat promotes bool (prompt) with float (seconds) masks to float, as the official code does.
        masks = torch.cat([parts[k].mask for k in self.cross_attn_ids], dim=1)
        return DiTConditioning(cross, masks, glob, parts)

    def encode(self, batch: Sequence[dict], device: str | torch.device = "cpu") -> DiTConditioning:
        """Batch of {"prompt", "seconds_total"} dicts -> DiT conditioning."""
        return self.dit_inputs(self(batch, device))
