"""Every ```python block in README.md and docs/*.md runs (signatures are ```text blocks)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
# Blocks that import an `examples` extra are marked, so `make test-min` (the library with only
# its declared dependencies) can deselect them with `-m "not extras"`.
EXTRAS = re.compile(r"^\s*(?:import|from)\s+(?:matplotlib|torchvision|tqdm|examples)\b", re.M)


def _blocks():
    for path in DOCS:
        for i, block in enumerate(BLOCK.findall(path.read_text())):
            marks = [pytest.mark.extras] if EXTRAS.search(block) else []
            yield pytest.param(block, id=f"{path.name}-{i}", marks=marks)


@pytest.mark.parametrize("code", list(_blocks()))
def test_doc_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<doc>", "exec"), {"__name__": "__doc__"})
