"""ChestX-ray14: the on-disk reader, the paper's data settings, and a synthetic dataset.

See ``docs/data.md``.
"""

from typing import TYPE_CHECKING, Any

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
from ccg_layers.datasets.splits import (
    NUM_FOLDS,
    Setting,
    chestxray14_splits,
    patient_folds,
    read_split_files,
    save_split,
    split_summary,
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
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_FOLDS",
    "ChestXray14",
    "ChestXray14Batch",
    "ChestXray14FormatError",
    "ChestXray14Index",
    "ChestXray14Sample",
    "Setting",
    "SyntheticConfig",
    "chestxray14_splits",
    "collate_chestxray14",
    "ensure_synthetic_dataset",
    "find_image_files",
    "generate_synthetic_chestxray14",
    "normalize_radiographs",
    "patient_folds",
    "read_chestxray14",
    "read_radiograph",
    "read_split_files",
    "render_synthetic_image",
    "save_split",
    "split_summary",
    "synthetic_index",
]
