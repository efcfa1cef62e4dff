"""Where a dataset's images are and the frame their boxes are in: DICOM or PNG/JPEG copies.

VinDr-CXR and RSNA Pneumonia publish DICOM files; users often convert them to PNG or JPEG
(often downsampled). The readers find each image's file by its id in one folder, of the kind
asked for (``"dicom"``, ``"png"``, ``"jpeg"``) or of any kind (``"auto"``: DICOM first), and
take the frame of its boxes from the DICOM header, from ``frame_sizes`` given by the user (the
original DICOM sizes of resized copies), or from the copy itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from ccg_layers.datasets.dicom import DICOM_SUFFIXES, dicom_frame_size
from ccg_layers.datasets.published_csv import DatasetFormatError, csv_records
from ccg_layers.errors import CCGDTypeError
from ccg_layers.validation import check_choice, check_flag

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageKind",
    "check_image_kind",
    "check_reader_options",
    "frame_sizes_of",
    "locate_images",
    "name_list",
    "read_frame_sizes",
    "repeated_names",
    "scan_image_folder",
]

_log = logging.getLogger(__name__)

ImageKind = Literal["auto", "dicom", "png", "jpeg"]
#: The file suffixes of each kind of image; ``"auto"`` takes them all, DICOM first.
IMAGE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "dicom": DICOM_SUFFIXES,
    "png": (".png",),
    "jpeg": (".jpg", ".jpeg"),
    "auto": (*DICOM_SUFFIXES, ".png", ".jpg", ".jpeg"),
}


def scan_image_folder(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Map the stem of every file in ``folder`` whose suffix (any case) is in ``suffixes`` to it.

    When a stem has several files, the one whose suffix comes first in ``suffixes`` wins.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for f in ("a.png", "a.dcm", "b.jpg", "c.txt"):
        ...     _ = (d / f).write_bytes(b"")
        >>> sorted((k, v.name) for k, v in scan_image_folder(d, (".dcm", ".png", ".jpg")).items())
        [('a', 'a.dcm'), ('b', 'b.jpg')]
    """
    rank = {s: i for i, s in enumerate(suffixes)}
    best: dict[str, tuple[int, Path]] = {}
    if not folder.is_dir():
        return {}
    with os.scandir(folder) as it:
        for entry in it:
            stem, dot, suffix = entry.name.rpartition(".")
            r = rank.get(f"{dot}{suffix}".lower()) if dot else None
            if r is None or not entry.is_file():
                continue
            if stem not in best or r < best[stem][0]:
                best[stem] = (r, Path(entry.path))
    return {stem: path for stem, (_, path) in best.items()}


def locate_images(
    folder: Path, names: Sequence[str], images: ImageKind
) -> tuple[list[Path | None], tuple[str, ...]]:
    """The file ``<name><suffix>`` of each image in ``folder``, and the suffixes looked for.

    ``None`` for an image without a file.

    Raises:
        CCGValueRangeError: ``images`` is not one of ``"auto"``, ``"dicom"``, ``"png"``,
            ``"jpeg"``.
    """
    suffixes = IMAGE_SUFFIXES[check_image_kind(images)]
    found = scan_image_folder(folder, suffixes)
    return [found.get(n) for n in names], suffixes


def check_image_kind(images: object) -> ImageKind:
    """Return ``images`` if it is an :data:`ImageKind`; else raise naming it.

    Raises:
        CCGValueRangeError: ``images`` is not one of ``"auto"``, ``"dicom"``, ``"png"``,
            ``"jpeg"``.
    """
    return check_choice(images, "images", ImageKind)  # type: ignore[no-any-return]


def check_reader_options(images: object, frame_sizes: object, skip_bad_rows: object) -> None:
    """Check the options the readers of VinDr-CXR and RSNA share, before they touch the disk.

    Raises:
        CCGValueRangeError: ``images`` is not one of ``"auto"``, ``"dicom"``, ``"png"``,
            ``"jpeg"`` (:func:`check_image_kind`), or ``skip_bad_rows`` is not a bool.
        CCGDTypeError: ``frame_sizes`` is neither ``None`` nor a mapping.
    """
    check_image_kind(images)
    if frame_sizes is not None and not isinstance(frame_sizes, Mapping):
        raise CCGDTypeError(
            f"`frame_sizes` must be a dict {{name: (width, height)}} or None, got "
            f"{type(frame_sizes).__name__}."
        )
    check_flag(skip_bad_rows, "skip_bad_rows")


def name_list(names: Sequence[str], shown: int = 5, *, quote: bool = False, sep: str = ", ") -> str:
    """The first ``shown`` of ``names`` for a message, joined by ``sep``, and how many more.

    Args:
        names: What the message lists.
        shown: How many of them to name.
        quote: Name each one by its ``repr``.
        sep: What joins the names.

    Example:
        >>> name_list(["a", "b", "c"], shown=2)
        'a, b and 1 more'
        >>> name_list(["a", "b"], quote=True, sep="; ")
        "'a'; 'b'"
    """
    listed = sep.join(repr(n) if quote else n for n in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def repeated_names(names: Iterable[str]) -> list[str]:
    """The names that stand more than once in ``names``, in the order they are first repeated.

    The one duplicate check of the datasets (an index's names, a split's sides, a dataset's
    images); list them in a message with :func:`name_list`.

    Example:
        >>> repeated_names(["a", "b", "b", "c", "a", "b"])
        ['b', 'a']
    """
    seen: set[str] = set()
    again: dict[str, None] = {}
    for n in names:
        if n in seen:
            again[n] = None
        seen.add(n)
    return list(again)


def frame_sizes_of(
    names: Sequence[str],
    files: Sequence[Path | None],
    frame_sizes: Mapping[str, tuple[int, int]] | None,
    default: tuple[int, int] | None,
    dataset_name: str,
) -> Tensor:
    """``(N, 2)`` long ``(width, height)`` of the frame each image's boxes are in.

    For each image, in this order: ``frame_sizes[name]`` if given; the header of its DICOM
    file; ``default`` (a frame the publisher fixes, e.g. RSNA's 1024 x 1024); the size of its
    PNG/JPEG copy (read from the file's header).

    Raises:
        FileNotFoundError: An image has no file and no size from ``frame_sizes`` or
            ``default`` (names the first ones).
        ValueError: A ``frame_sizes`` entry that is not two positive ints.
    """
    from PIL import Image

    from ccg_layers.datasets.dicom import is_dicom

    sizes: list[tuple[int, int]] = []
    missing: list[str] = []
    for name, path in zip(names, files, strict=True):
        if frame_sizes is not None and name in frame_sizes:
            w, h = frame_sizes[name]
            if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
                raise ValueError(
                    f"`frame_sizes[{name!r}]` must be (width, height) positive ints, "
                    f"got {frame_sizes[name]!r}"
                )
            sizes.append((w, h))
        elif path is not None and is_dicom(path):
            sizes.append(dicom_frame_size(path))
        elif default is not None:
            sizes.append(default)
        elif path is not None:
            with Image.open(path) as im:
                sizes.append(im.size)
        else:
            missing.append(name)
            sizes.append((0, 0))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} {dataset_name} image(s) have no file and no entry in "
            f"`frame_sizes`, so the frame of their boxes is unknown: "
            f"{name_list(missing)}"
        )
    return torch.tensor(sizes, dtype=torch.long).reshape(-1, 2)


def read_frame_sizes(
    path: str | os.PathLike[str], *, id_column: str = "image_id"
) -> dict[str, tuple[int, int]]:
    r"""The original sizes of resized PNG/JPEG copies, from a CSV file, as ``frame_sizes``.

    The file has a header with ``id_column``, ``width`` and ``height`` (other columns allowed)
    and one row per image: the width and height in pixels of the DICOM the copy was made from,
    the frame its boxes are in (:func:`~ccg_layers.datasets.read_vindr_cxr`'s
    ``frame_sizes``).

    Raises:
        FileNotFoundError: No such file.
        DatasetFormatError: A missing column, a size that is not a positive integer, or an
            image listed twice, named by ``file:line``.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "sizes.csv"
        >>> _ = path.write_text("image_id,width,height\na,2540,3072\n")
        >>> read_frame_sizes(path)
        {'a': (2540, 3072)}
    """
    file = Path(path)
    sizes: dict[str, tuple[int, int]] = {}
    rows = csv_records(file, [id_column, "width", "height"], skip_bad_rows=False, log=_log)
    for line, row in rows:
        name = row[id_column]
        try:
            w, h = int(row["width"]), int(row["height"])
        except ValueError:
            w = h = 0
        if not name or w <= 0 or h <= 0:
            raise DatasetFormatError(
                f"{file}:{line}: expected an {id_column} and a positive integer width and "
                f"height, got {row[id_column]!r}, {row['width']!r}, {row['height']!r}"
            )
        if name in sizes:
            raise DatasetFormatError(f"{file}:{line}: {id_column} {name!r} is listed twice")
        sizes[name] = (w, h)
    return sizes
