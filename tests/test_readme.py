"""The README's Python examples run as written (the command-line ones: tests/test_cli.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of a README section, in order."""
    body = README.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in body.split("```python\n")[1:]]


def test_python_examples_run_as_written_with_the_demo_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """The "Generating audio (Python)" block, in an empty folder, with the default model: every line
    runs, the files it names appear, and no prompt has words the demo model does not know."""
    blocks = python_blocks("Generating audio (Python)")
    assert blocks and "from_pretrained()" in blocks[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    with caplog.at_level(logging.WARNING):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    assert not [r.getMessage() for r in caplog.records if "vocabulary does not know" in r.getMessage()]
    loop, sr = sf.read("loop.wav")
    assert sr == 44100 and loop.shape == (3 * 44100, 2) and np.isfinite(loop).all()
    assert namespace["model"].last_seeds == [7]
