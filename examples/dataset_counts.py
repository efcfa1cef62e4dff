"""What the dataset readers count in a dataset folder: images, images with a box, boxes per
class (for VinDr-CXR under each way of combining the radiologists' boxes), and the sizes of the
paper's three data settings (fold 0). Check a download against its publisher's numbers with it
(docs/data.md gives them).

    python examples/dataset_counts.py --dataset vindr-cxr --data-root /data/vinbigdata
    python examples/dataset_counts.py --dataset rsna-pneumonia --data-root /data/rsna-pneumonia
    python examples/dataset_counts.py --dataset vindr-cxr --data-root DIR --labels-only

``--labels-only`` counts the label CSV of a folder without its images (VinDr-CXR's frames are
then not read; the counts do not depend on them).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from ccg_layers.datasets import (
    DatasetIndex,
    dataset_splits,
    read_chestxray14,
    read_rsna_pneumonia,
    read_vindr_cxr,
)

# a frame larger than any radiograph, for counting labels without the images
_NO_FRAME = (1 << 16, 1 << 16)


def describe(index: DatasetIndex, title: str) -> list[str]:
    """The counts of one index, as lines."""
    per_class = torch.bincount(index.box_class, minlength=len(index.class_names)).tolist()
    boxed = int(index.annotated.sum())
    lines = [
        f"{title}: {len(index)} images, {boxed} with a box, {len(index) - boxed} without, "
        f"{len(index.boxes)} boxes, {len(index.boxed_classes)} boxed classes",
        "  boxes per class: "
        + ", ".join(f"{c} {n}" for c, n in zip(index.class_names, per_class, strict=True)),
    ]
    for setting in ("a", "b", "c"):
        split = dataset_splits(index, setting, 0)  # type: ignore[arg-type]
        lines.append(
            f"  setting ({setting}), fold 0: {len(split['train'])} train, {len(split['test'])} test"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset", choices=("chestxray14", "vindr-cxr", "rsna-pneumonia"), required=True
    )
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument(
        "--labels-only",
        action="store_true",
        help="count the label CSV without the images (VinDr-CXR)",
    )
    args = p.parse_args(argv)
    root: Path = args.data_root
    if args.dataset == "chestxray14":
        print("\n".join(describe(read_chestxray14(root), "ChestX-ray14")))
    elif args.dataset == "rsna-pneumonia":
        print("\n".join(describe(read_rsna_pneumonia(root), "RSNA Pneumonia")))
    else:
        sizes = None
        if args.labels_only:
            with open(root / "train.csv", newline="", encoding="utf-8-sig") as f:
                sizes = {row["image_id"]: _NO_FRAME for row in csv.DictReader(f)}
        for combine in ("all", "merge", "single"):
            index = read_vindr_cxr(root, combine=combine, frame_sizes=sizes)
            print("\n".join(describe(index, f"VinDr-CXR, combine={combine}")))


if __name__ == "__main__":
    main()
