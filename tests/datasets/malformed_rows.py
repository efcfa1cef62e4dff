"""The two checks of a reader on a CSV with one malformed row, shared by the reader tests: the
error names the file and the line; with ``skip_bad_rows`` the row is logged and skipped."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ccg_layers.datasets import DatasetFormatError


def assert_row_is_named(
    read: Callable[..., Any], root: Path, csv_name: str, line: int, match: str
) -> None:
    """``read(root)`` raises a ``DatasetFormatError`` ``"<csv_name>:<line>: <match>"``."""
    with pytest.raises(DatasetFormatError, match=f"{re.escape(csv_name)}:{line}: {match}"):
        read(root)


def assert_row_is_skipped(
    read: Callable[..., Any],
    root: Path,
    good_root: Path,
    csv_name: str,
    line: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``read(root, skip_bad_rows=True)`` logs ``"<csv_name>:<line>:"`` and reads ``good_root``'s
    images and boxes (``good_root`` holds the same CSV without the bad row)."""
    with caplog.at_level(logging.WARNING, logger="ccg_layers.datasets"):
        index = read(root, skip_bad_rows=True)
    assert f"{csv_name}:{line}:" in caplog.text
    good = read(good_root)
    assert index.images == good.images
    assert torch.equal(index.boxes, good.boxes)
