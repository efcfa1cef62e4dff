"""Radiographs stored as DICOM: decoded to the 8-bit grayscale a radiologist would see.

Needs the ``dicom`` extra (``pip install "ccg-layers[dicom]"``): pydicom, with the decoders of
the common transfer syntaxes (pylibjpeg with pylibjpeg-openjpeg for JPEG 2000, pyjpegls for
JPEG-LS, python-gdcm for JPEG baseline, extended and lossless; uncompressed, deflated and RLE
are pydicom's own). The pixels are those of the DICOM's own frame (``Rows x Columns``), the
frame VinDr-CXR's and RSNA's boxes are in. See ``docs/data.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ccg_layers.datasets.grayscale import gray_to_uint8, read_radiograph
from ccg_layers.errors import CCGDTypeError

__all__ = ["DICOM_SUFFIXES", "dicom_frame_size", "dicom_to_unit", "read_dicom", "read_image"]

#: File suffixes taken as DICOM (VinDr-CXR writes ``.dicom``, RSNA ``.dcm``).
DICOM_SUFFIXES: tuple[str, ...] = (".dicom", ".dcm")
_EXTRA = 'install the `dicom` extra: pip install "ccg-layers[dicom]"'


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - exercised without the extra only
        raise ImportError(f"reading DICOM files needs pydicom: {_EXTRA}") from err
    return pydicom


def _read(path: str | os.PathLike[str], *, pixels: bool) -> Any:
    pydicom = _pydicom()
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except pydicom.errors.InvalidDicomError as err:
        raise OSError(f"{path}: not a DICOM file ({err})") from err


def dicom_frame_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of a DICOM image (``Columns``, ``Rows``), read from its header only.

    Raises:
        OSError: The file is missing or not DICOM.
        ValueError: The header has no ``Rows`` or ``Columns``.

    Example:
        >>> from pydicom import examples
        >>> dicom_frame_size(examples.get_path("mr"))  # pydicom's example MR: 64 x 64
        (64, 64)
    """
    ds = _read(path, pixels=False)
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError(f"{path}: the DICOM header has no Rows/Columns; expected both")
    return int(ds.Columns), int(ds.Rows)


def _window_range(ds: Any) -> tuple[float, float]:
    """The output range of the first VOI LUT or window of ``ds``, as pydicom applies it."""
    from pydicom.pixels.processing import apply_voi_lut

    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    extremes = np.array([-1e30, 1e30])
    with np.errstate(over="ignore"):  # the sigmoid function of an extreme value
        lo, hi = apply_voi_lut(extremes, ds, index=0)
    return float(lo), float(hi)


def dicom_to_unit(ds: Any, where: str = "DICOM") -> np.ndarray:
    """The first frame of a pydicom ``Dataset`` as ``(H, W)`` float32 in [0, 1] (1 = white).

    The modality LUT (``RescaleSlope``/``RescaleIntercept`` or a Modality LUT Sequence) is
    applied, then the first VOI transform the file carries (VOI LUT Sequence, else the first
    ``WindowCenter``/``WindowWidth`` with its ``VOILUTFunction``), and its output range is
    mapped to [0, 1], as a viewer shows it; without a VOI transform the image's own minimum
    and maximum are. ``MONOCHROME1`` (low values white) is inverted. RGB is turned into its
    ITU-R 601-2 luma.

    Raises:
        CCGDTypeError: ``ds`` is not a pydicom ``Dataset``.
        ValueError: Several frames, or a photometric interpretation other than
            MONOCHROME1, MONOCHROME2 or RGB/YBR (``where`` names the file in the message).

    Example:
        >>> import numpy as np
        >>> from pydicom import Dataset, FileMetaDataset
        >>> from pydicom.uid import ExplicitVRLittleEndian
        >>> ds = Dataset()
        >>> ds.file_meta = FileMetaDataset()
        >>> ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        >>> ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = 1, 3, 16, 12
        >>> ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
        >>> ds.PhotometricInterpretation = "MONOCHROME1"
        >>> ds.PixelData = np.array([0, 2048, 4095], dtype=np.uint16).tobytes()
        >>> dicom_to_unit(ds).round(2).tolist()  # inverted: 0 is white
        [[1.0, 0.5, 0.0]]
    """
    from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

    if not isinstance(ds, _pydicom().Dataset):
        raise CCGDTypeError(f"`ds` must be a pydicom Dataset, got {type(ds).__name__}.")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ValueError(f"{where}: expected one frame, got {frames} (NumberOfFrames)")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    arr = ds.pixel_array
    if photometric.startswith(("RGB", "YBR")):  # pydicom gives RGB for both
        rgb = arr.astype(np.float32)
        luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return np.asarray(np.clip(luma / float(2 ** int(ds.BitsStored) - 1), 0.0, 1.0), np.float32)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(
            f"{where}: expected PhotometricInterpretation MONOCHROME1, MONOCHROME2 or RGB, "
            f"got {photometric or 'none'}"
        )
    values = apply_modality_lut(arr, ds)
    if ds.get("VOILUTSequence") or ("WindowCenter" in ds and "WindowWidth" in ds):
        if ds.get("VOILUTSequence"):  # the LUT is indexed by integers
            values = np.rint(values).astype(np.int64)
        lo, hi = _window_range(ds)
        values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
    else:
        lo, hi = float(values.min()), float(values.max())
    unit = (values.astype(np.float64) - lo) / (hi - lo) if hi > lo else np.zeros(values.shape)
    unit = np.clip(unit, 0.0, 1.0).astype(np.float32)
    return 1.0 - unit if photometric == "MONOCHROME1" else unit


def read_dicom(path: str | os.PathLike[str], size: int | None = None) -> Tensor:
    """Read a DICOM radiograph as ``(1, H, W)`` uint8, optionally resized to ``size`` x ``size``.

    The gray levels are those of :func:`dicom_to_unit` times 255, rounded; the resize is that
    of :func:`~ccg_layers.datasets.read_radiograph`.

    Raises:
        OSError: The file is missing or not DICOM.
        ValueError: Content :func:`dicom_to_unit` does not take, or a transfer syntax without
            an installed decoder (names the file).

    Example:
        >>> from pydicom import examples
        >>> image = read_dicom(examples.get_path("mr"), 32)  # window 600 +- 800 applied
        >>> image.shape, image.dtype
        (torch.Size([1, 32, 32]), torch.uint8)
    """
    from PIL import Image

    ds = _read(path, pixels=True)
    try:
        unit = dicom_to_unit(ds, str(path))
    except (RuntimeError, NotImplementedError) as err:  # no decoder for the transfer syntax
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", syntax)
        raise ValueError(f"{path}: cannot decode transfer syntax {name}: {err}; {_EXTRA}") from err
    gray = Image.fromarray(unit * np.float32(255.0), mode="F")
    return gray_to_uint8(gray, size)


def read_image(path: str | os.PathLike[str], size: int | None = None) -> Tensor:
    """A radiograph file of any kind as ``(1, H, W)`` uint8, optionally resized to ``size``.

    DICOM (by suffix, see :data:`DICOM_SUFFIXES`, or by its ``DICM`` preamble) with
    :func:`read_dicom`, anything else (PNG, JPEG) with
    :func:`~ccg_layers.datasets.read_radiograph`.

    Example:
        >>> import tempfile, numpy as np
        >>> from PIL import Image
        >>> path = tempfile.mkdtemp() + "/x.png"
        >>> Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(path)
        >>> read_image(path, 4).shape
        torch.Size([1, 4, 4])
    """
    if is_dicom(path):
        return read_dicom(path, size)
    return read_radiograph(path, size)


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is DICOM: a DICOM suffix, or ``DICM`` at byte 128 (the preamble)."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with p.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False
