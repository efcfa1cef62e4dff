"""Small DICOM files written by the tests (pydicom is imported inside, so that modules importing
this one still collect without the `dicom` extra)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

SYNTAXES = ("explicit", "implicit", "deflated", "rle", "jpeg-ls", "jpeg2000", "jpeg-baseline")
LOSSLESS = ("explicit", "implicit", "deflated", "rle", "jpeg-ls", "jpeg2000")


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    syntax: str = "explicit",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    voi_lut: tuple[int, int, list[int]] | None = None,
    frames: int = 1,
) -> Path:
    """Write ``pixels`` ((H, W) uint8/uint16, or (H, W, 3) uint8 RGB) as a DICOM file."""
    import pydicom.encaps
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
        JPEGLSLossless,
        RLELossless,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    rgb = pixels.ndim == 3
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = "RGB" if rgb else photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
        pixels = np.stack([pixels] * frames)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi_lut is not None:
        first, bits, table = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(table), first, bits]
        item.LUTData = table
        item["LUTData"].VR = "US"
        ds.VOILUTSequence = [item]
    ds.PixelData = pixels.tobytes()
    implicit = False
    if syntax == "implicit":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        implicit = True
    elif syntax == "deflated":
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    elif syntax in ("rle", "jpeg-ls", "jpeg2000"):
        uid = {"rle": RLELossless, "jpeg-ls": JPEGLSLossless, "jpeg2000": JPEG2000Lossless}[syntax]
        ds.compress(uid)
    elif syntax == "jpeg-baseline":
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="JPEG", quality=95)
        ds.PixelData = pydicom.encaps.encapsulate([out.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        if rgb:
            ds.PhotometricInterpretation = "YBR_FULL_422"
    elif syntax != "explicit":
        raise ValueError(syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=True)
    return path


def read_back(path: Path) -> Any:
    import pydicom

    return pydicom.dcmread(path)
