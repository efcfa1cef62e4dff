"""Reading a dataset's published CSV file row by row, naming a malformed row by ``file:line``.

The readers of VinDr-CXR and RSNA Pneumonia share it: the header must hold the publisher's
column names (in any order, other columns allowed), every row must have as many cells as the
header, and a malformed row raises :class:`DatasetFormatError` naming the file and the line, or
is logged and skipped with ``skip_bad_rows=True``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["DatasetFormatError", "csv_records", "fail_or_skip"]


class DatasetFormatError(ValueError):
    """A dataset's file is malformed; the message names the file, the line and the problem."""


def fail_or_skip(
    message: str,
    skip: bool,
    log: logging.Logger,
    error: type[DatasetFormatError] = DatasetFormatError,
) -> None:
    """Raise ``error`` with ``message``, or log the message at ``WARNING`` when ``skip``.

    ``error`` is :class:`DatasetFormatError` or a reader's subclass of it.

    Example:
        >>> import logging
        >>> fail_or_skip("a.csv:3: bad row", True, logging.getLogger("demo"))  # logged only
        >>> fail_or_skip("a.csv:3: bad row", False, logging.getLogger("demo"))
        Traceback (most recent call last):
        ...
        ccg_layers.datasets.published_csv.DatasetFormatError: a.csv:3: bad row
    """
    if not skip:
        raise error(message)
    log.warning("skipping: %s", message)


def csv_records(
    path: Path, columns: Sequence[str], *, skip_bad_rows: bool, log: logging.Logger
) -> Iterator[tuple[int, dict[str, str]]]:
    r"""``(line, {column: stripped cell})`` of every non-empty data row of a CSV file.

    Args:
        path: The CSV file (UTF-8, a byte-order mark is accepted).
        columns: The column names the header must contain.
        skip_bad_rows: Log and skip a row with the wrong number of cells instead of raising.
        log: Where skipped rows are logged.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DatasetFormatError: An empty file, a header without one of ``columns`` (line 1), or a
            row whose number of cells differs from the header's.

    Example:
        >>> import logging, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
        >>> _ = path.write_text("id,x\na,1\n\nb,2\n")
        >>> list(csv_records(path, ["x", "id"], skip_bad_rows=False, log=logging.getLogger()))
        [(2, {'x': '1', 'id': 'a'}), (4, {'x': '2', 'id': 'b'})]
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DatasetFormatError(f"{path}:1: the file is empty; expected a header")
        names = [cell.strip() for cell in header]
        missing = [c for c in columns if c not in names]
        if missing:
            raise DatasetFormatError(
                f"{path}:1: header must have the columns {', '.join(columns)}; "
                f"got {', '.join(header)} (missing {', '.join(missing)})"
            )
        where = {c: names.index(c) for c in columns}
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(names):
                fail_or_skip(
                    f"{path}:{reader.line_num}: expected {len(names)} fields "
                    f"({', '.join(names)}), got {len(row)}: {row}",
                    skip_bad_rows,
                    log,
                )
                continue
            yield reader.line_num, {c: row[i].strip() for c, i in where.items()}
