"""Layer-name patterns: the include / exclude lists of a LoRA file and the per-LoRA `layer_filter` of a
request (§3.8). A pattern may hold numeric ranges, `layers.[0-3].` meaning `layers.0.` ... `layers.3.`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import product


def expand_ranges(pattern: str) -> list[str]:
    """'layers[0-2]' -> ['layers0', 'layers1', 'layers2'] (literal concatenation; ranges may descend)."""
    parts = re.split(r"\[(\d+)-(\d+)\]", pattern)
    literals, starts, ends = parts[0::3], parts[1::3], parts[2::3]
    pools = []
    for a, b in zip(starts, ends, strict=True):
        a, b = int(a), int(b)
        step = 1 if b >= a else -1
        pools.append([str(n) for n in range(a, b + step, step)])
    expanded = []
    for numbers in product(*pools):
        pieces = [literals[0]]
        for number, literal in zip(numbers, literals[1:], strict=True):
            pieces += [number, literal]
        expanded.append("".join(pieces))
    return expanded


def matches_any(name: str, patterns: Iterable[str]) -> bool:
    """True if any (range-expanded, stripped) pattern is a substring of `name`."""
    return any(p in name for pattern in patterns for p in expand_ranges(pattern.strip()))


def as_patterns(value: object) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else [str(v) for v in value]


def layer_filter_patterns(layer_filter: str) -> list[str]:
    """The Gradio per-LoRA layer filter (§3.8), parsed once: comma-separated, lower-cased, range-expanded
    substrings; a layer whose name contains one of them is filtered out."""
    filters = [part.lower().strip() for part in (layer_filter or "").strip().split(",") if len(part)]
    return [p for f in filters for p in expand_ranges(f)]
