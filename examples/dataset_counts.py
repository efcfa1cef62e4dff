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
import dataclasses
import sys
from pathlib import Path
from typing import get_args

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # for `examples.ccg_net`

from ccg_layers.datasets import Combine, DatasetIndex, dataset_splits, read_vindr_cxr
from examples.ccg_net.config import DATASETS, TrainConfig
from examples.ccg_net.data import read_index

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
    p.add_argument("--dataset", choices=tuple(DATASETS), required=True)
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument(
        "--labels-only",
        action="store_true",
        help="count the label CSV without the images (VinDr-CXR)",
    )
    args = p.parse_args(argv)
    root: Path = args.data_root
    cfg = TrainConfig(dataset=args.dataset, data_root=str(root))
    name = DATASETS[args.dataset]
    if args.dataset != "vindr-cxr":  # the trainer's reader, with its defaults
        print("\n".join(describe(read_index(cfg, root), name)))
        return
    sizes = None
    if args.labels_only:
        with open(root / "train.csv", newline="", encoding="utf-8-sig") as f:
            sizes = {row["image_id"]: _NO_FRAME for row in csv.DictReader(f)}
    for combine in get_args(Combine):
        if sizes is None:
            index = read_index(dataclasses.replace(cfg, vindr_combine=combine), root)
        else:
            index = read_vindr_cxr(root, combine=combine, frame_sizes=sizes)
        print("\n".join(describe(index, f"{name}, combine={combine}")))


if __name__ == "__main__":
    main()
