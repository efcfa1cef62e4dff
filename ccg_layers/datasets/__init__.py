"""Box-annotated chest X-ray datasets: one index interface, readers, settings, a synthetic twin.

The readers of ChestX-ray14, VinDr-CXR and RSNA Pneumonia give a :class:`DatasetIndex`; the
paper's data settings and :class:`RadiographDataset` take any of them.

See ``docs/data.md``.
"""

from typing import TYPE_CHECKING, Any

from ccg_layers.datasets.box_fusion import fuse_boxes
from ccg_layers.datasets.chestxray14 import (
    BBOX_LIST_FILE,
    BOX_FRAME,
    BOXED_CLASSES,
    CLASS_NAMES,
    DATA_ENTRY_FILES,
    ChestXray14,
    ChestXray14Batch,
    ChestXray14FormatError,
    ChestXray14Index,
    ChestXray14Sample,
    collate_chestxray14,
    find_image_files,
    read_chestxray14,
    read_radiograph,
)
from ccg_layers.datasets.dicom import (
    DICOM_SUFFIXES,
    dicom_frame_size,
    dicom_to_unit,
    read_dicom,
    read_image,
)
from ccg_layers.datasets.image_files import ImageKind, read_frame_sizes
from ccg_layers.datasets.index import DatasetIndex, RadiographIndex, boxes_at_size
from ccg_layers.datasets.published_csv import DatasetFormatError
from ccg_layers.datasets.radiographs import RadiographDataset
from ccg_layers.datasets.rsna_pneumonia import RSNA_CLASS_NAMES, RSNA_FRAME, read_rsna_pneumonia
from ccg_layers.datasets.splits import (
    NUM_FOLDS,
    Setting,
    chestxray14_splits,
    dataset_splits,
    patient_folds,
    read_split_files,
    save_split,
    split_summary,
)
from ccg_layers.datasets.vindr_cxr import (
    VINDR_CLASS_NAMES,
    VINDR_NO_FINDING,
    Combine,
    read_vindr_cxr,
)
from ccg_layers.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_radiographs

if TYPE_CHECKING:
    from ccg_layers.datasets.synthetic import (
        SyntheticConfig,
        ensure_synthetic_dataset,
        generate_synthetic_chestxray14,
        render_synthetic_image,
        synthetic_index,
    )

# The synthetic generator is imported on first use, so that its command line
# (``python -m ccg_layers.datasets.synthetic``) runs without runpy's "found in sys.modules"
# RuntimeWarning.
_SYNTHETIC = (
    "SyntheticConfig",
    "ensure_synthetic_dataset",
    "generate_synthetic_chestxray14",
    "render_synthetic_image",
    "synthetic_index",
)


def __getattr__(name: str) -> Any:
    if name in _SYNTHETIC:
        from ccg_layers.datasets import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BBOX_LIST_FILE",
    "BOXED_CLASSES",
    "BOX_FRAME",
    "CLASS_NAMES",
    "DATA_ENTRY_FILES",
    "DICOM_SUFFIXES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_FOLDS",
    "RSNA_CLASS_NAMES",
    "RSNA_FRAME",
    "VINDR_CLASS_NAMES",
    "VINDR_NO_FINDING",
    "ChestXray14",
    "ChestXray14Batch",
    "ChestXray14FormatError",
    "ChestXray14Index",
    "ChestXray14Sample",
    "Combine",
    "DatasetFormatError",
    "DatasetIndex",
    "ImageKind",
    "RadiographDataset",
    "RadiographIndex",
    "Setting",
    "SyntheticConfig",
    "boxes_at_size",
    "chestxray14_splits",
    "collate_chestxray14",
    "dataset_splits",
    "dicom_frame_size",
    "dicom_to_unit",
    "ensure_synthetic_dataset",
    "find_image_files",
    "fuse_boxes",
    "generate_synthetic_chestxray14",
    "normalize_radiographs",
    "patient_folds",
    "read_chestxray14",
    "read_dicom",
    "read_frame_sizes",
    "read_image",
    "read_radiograph",
    "read_rsna_pneumonia",
    "read_split_files",
    "read_vindr_cxr",
    "render_synthetic_image",
    "save_split",
    "split_summary",
    "synthetic_index",
]
