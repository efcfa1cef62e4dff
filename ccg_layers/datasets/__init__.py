"""ChestX-ray14: the on-disk reader, the paper's data settings, and a synthetic dataset.

See ``docs/data.md``.
"""

from ccg_layers.datasets.chestxray14 import (
    BBOX_LIST_FILE,
    BOX_FRAME,
    BOXED_CLASSES,
    CLASS_NAMES,
    DATA_ENTRY_FILES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ChestXray14,
    ChestXray14Batch,
    ChestXray14FormatError,
    ChestXray14Index,
    ChestXray14Sample,
    collate_chestxray14,
    find_image_files,
    read_chestxray14,
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
from ccg_layers.datasets.synthetic import (
    SyntheticConfig,
    ensure_synthetic_dataset,
    generate_synthetic_chestxray14,
    render_synthetic_image,
)

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
    "patient_folds",
    "read_chestxray14",
    "read_split_files",
    "render_synthetic_image",
    "save_split",
    "split_summary",
]
