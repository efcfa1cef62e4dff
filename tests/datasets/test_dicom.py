"""DICOM decoding: transfer syntaxes, MONOCHROME1/2, VOI LUT, window, rescale, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ccg_layers import CCGDTypeError
from ccg_layers.datasets import (
    dicom_frame_size,
    dicom_to_unit,
    read_dicom,
    read_image,
    read_radiograph,
)
from tests.datasets.dicom_files import LOSSLESS, read_back, write_dicom

pytestmark = pytest.mark.extras  # needs the `dicom` extra

H, W = 64, 96


def ramp12() -> np.ndarray:
    """A 12-bit (H, W) image spanning 100 .. 4000."""
    return np.linspace(100, 4000, H * W).reshape(H, W).round().astype(np.uint16)


def minmax_uint8(values: np.ndarray) -> np.ndarray:
    v = values.astype(np.float64)
    return np.rint((v - v.min()) / (v.max() - v.min()) * 255).astype(np.uint8)


@pytest.mark.parametrize("syntax", LOSSLESS)
def test_lossless_syntaxes_decode_to_the_min_max_scaled_pixels(tmp_path, syntax):
    pixels = ramp12()
    path = write_dicom(tmp_path / "x.dcm", pixels, syntax=syntax, bits_stored=12)
    assert read_back(path).file_meta.TransferSyntaxUID.name  # written as asked
    image = read_dicom(path)
    assert image.shape == (1, H, W)
    assert image.dtype == torch.uint8
    np.testing.assert_array_equal(image[0].numpy(), minmax_uint8(pixels))


def test_the_syntaxes_are_really_different_files(tmp_path):
    syntaxes = {
        s: read_back(write_dicom(tmp_path / f"{s}.dcm", ramp12(), syntax=s, bits_stored=12))
        for s in LOSSLESS
    }
    uids = {str(ds.file_meta.TransferSyntaxUID) for ds in syntaxes.values()}
    assert len(uids) == len(LOSSLESS)


def test_jpeg_baseline_8bit_decodes_close_to_the_pixels(tmp_path):
    pixels = (np.linspace(0, 255, H * W).reshape(H, W)).astype(np.uint8)
    path = write_dicom(tmp_path / "x.dcm", pixels, syntax="jpeg-baseline")
    image = read_dicom(path)[0].numpy().astype(int)
    assert np.abs(image - minmax_uint8(pixels)).max() <= 6  # lossy, quality 95


@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpeg2000"])
def test_monochrome1_is_inverted(tmp_path, syntax):
    pixels = ramp12()
    m1 = read_dicom(
        write_dicom(
            tmp_path / "m1.dcm", pixels, syntax=syntax, photometric="MONOCHROME1", bits_stored=12
        )
    )
    m2 = read_dicom(write_dicom(tmp_path / "m2.dcm", pixels, syntax=syntax, bits_stored=12))
    assert int(m1[0, 0, 0]) == 255
    assert int(m1[0, -1, -1]) == 0
    assert int(m2[0, 0, 0]) == 0
    assert int(m2[0, -1, -1]) == 255
    assert (m1.int() + m2.int() - 255).abs().max() <= 1


def test_the_window_is_applied_and_mapped_to_0_255(tmp_path):
    pixels = np.array([[0, 500, 999, 1000, 1500, 2000, 4095]], dtype=np.uint16)
    path = write_dicom(tmp_path / "x.dcm", pixels, bits_stored=12, window=(1000.0, 1000.0))
    got = read_dicom(path)[0, 0].tolist()
    # DICOM linear window (PS3.3 C.11.2.1.2.1), c = 1000, w = 1000: 500.5 .. 1499.5 -> 0 .. 1
    c, w = 1000 - 0.5, 1000 - 1
    want = [round(255 * min(1.0, max(0.0, (v - c) / w + 0.5))) for v in pixels[0].tolist()]
    assert got == want
    assert got[0] == 0
    assert got[-1] == 255
    assert got[3] in (127, 128)


def test_the_window_applies_after_the_rescale(tmp_path):
    pixels = np.array([[0, 1000, 2000]], dtype=np.uint16)
    # stored 1000 -> 2 * 1000 - 1000 = 1000, the window's centre
    path = write_dicom(
        tmp_path / "x.dcm", pixels, bits_stored=12, window=(1000.0, 2000.0), rescale=(2.0, -1000.0)
    )
    assert read_dicom(path)[0, 0].tolist()[1] in (127, 128)


def test_a_voi_lut_sequence_is_applied_over_its_nominal_range(tmp_path):
    pixels = np.array([[0, 1, 2, 3]], dtype=np.uint16)
    table = [0, 100, 200, 255]  # 8-bit LUT: output 0 .. 255
    path = write_dicom(tmp_path / "x.dcm", pixels, bits_stored=12, voi_lut=(0, 8, table))
    assert read_dicom(path)[0, 0].tolist() == table


def test_without_voi_the_image_min_and_max_are_black_and_white(tmp_path):
    pixels = np.array([[300, 400, 500]], dtype=np.uint16)
    assert read_dicom(write_dicom(tmp_path / "x.dcm", pixels, bits_stored=12))[0, 0].tolist() == [
        0,
        128,
        255,
    ]


def test_a_flat_image_is_black(tmp_path):
    pixels = np.full((4, 4), 7, dtype=np.uint16)
    assert int(read_dicom(write_dicom(tmp_path / "x.dcm", pixels)).max()) == 0


def test_rgb_becomes_its_luma(tmp_path):
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    pixels[..., 1] = 200
    got = read_dicom(write_dicom(tmp_path / "x.dcm", pixels))
    assert got.unique().tolist() == [round(200 * 0.587)]


def test_resize_is_that_of_read_radiograph(tmp_path):
    pixels = (np.arange(H * W).reshape(H, W) % 256).astype(np.uint8)
    dcm = write_dicom(tmp_path / "x.dcm", pixels)
    png = tmp_path / "x.png"
    Image.fromarray(minmax_uint8(pixels)).save(png)
    assert torch.equal(read_dicom(dcm, 32), read_radiograph(png, 32))  # block mean: exact
    # bilinear: the same filter, on float gray levels (DICOM) instead of 8-bit ones (PNG)
    diff = read_dicom(dcm, 20).int() - read_radiograph(png, 20).int()
    assert diff.abs().max() <= 1
    assert read_dicom(dcm, 20).shape == (1, 20, 20)


def test_frame_size_is_columns_rows(tmp_path):
    path = write_dicom(tmp_path / "x.dicom", ramp12(), syntax="jpeg2000", bits_stored=12)
    assert dicom_frame_size(path) == (W, H)


def test_read_image_dispatches_by_suffix_and_by_preamble(tmp_path):
    pixels = ramp12()
    path = write_dicom(tmp_path / "x.dicom", pixels, bits_stored=12)
    renamed = path.rename(tmp_path / "no_suffix")
    assert torch.equal(read_image(renamed), read_dicom(renamed))
    png = tmp_path / "y.png"
    Image.fromarray(np.full((5, 5), 9, dtype=np.uint8)).save(png)
    assert read_image(png).unique().tolist() == [9]


def test_several_frames_are_refused(tmp_path):
    path = write_dicom(tmp_path / "x.dcm", ramp12(), bits_stored=12, frames=2)
    with pytest.raises(ValueError, match=r"x\.dcm: expected one frame, got 2"):
        read_dicom(path)


def test_an_unknown_photometric_interpretation_is_refused(tmp_path):
    ds = read_back(write_dicom(tmp_path / "x.dcm", ramp12(), bits_stored=12))
    ds.PhotometricInterpretation = "PALETTE COLOR"
    with pytest.raises(
        ValueError, match=r"x\.dcm: expected PhotometricInterpretation .* got PALETTE"
    ):
        dicom_to_unit(ds, "x.dcm")


def test_a_file_that_is_not_dicom_raises_oserror_naming_it(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"not a dicom file" * 20)
    with pytest.raises(OSError, match=r"fake\.dcm: not a DICOM file"):
        read_dicom(path)
    with pytest.raises(OSError, match=r"fake\.dcm: not a DICOM file"):
        dicom_frame_size(path)


@pytest.mark.parametrize("ds", [None, np.zeros((2, 2))], ids=["None", "ndarray"])
def test_dicom_to_unit_names_a_dataset_that_is_not_one(ds):
    with pytest.raises(
        CCGDTypeError, match=r"`ds` must be a pydicom Dataset, got (NoneType|ndarray)\."
    ):
        dicom_to_unit(ds)
