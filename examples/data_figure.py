"""Draw docs/synthetic.png: synthetic radiographs with their boxes next to two real ChestX-ray14 images.

    python examples/data_figure.py [--out docs/synthetic.png] [--real tests/data/nih]

Needs matplotlib (the `examples` extra).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from PIL import Image

from ccg_layers.datasets import CLASS_NAMES, generate_synthetic_chestxray14, read_chestxray14

ROOT = Path(__file__).resolve().parents[1]
REAL = {"00000001_000.png": "Cardiomegaly (no box)", "00027426_000.png": "No Finding"}
WANTED = [
    "Nodule",
    "Mass",
    "Effusion",
    "Pneumothorax",
    "Atelectasis",
    "Pneumonia",
    "Cardiomegaly",
    "Infiltration",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(ROOT / "docs" / "synthetic.png"))
    parser.add_argument("--real", default=str(ROOT / "tests" / "data" / "nih"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_synthetic_chestxray14(tmp, 120, seed=0, image_size=512)
        index = read_chestxray14(root)
        # one annotated image per wanted class, in that order
        chosen: list[int] = []
        for name in WANTED:
            k = CLASS_NAMES.index(name)
            for m in range(len(index.boxes)):
                i = int(index.box_image_index[m])
                if int(index.box_class[m]) == k and i not in chosen:
                    chosen.append(i)
                    break
        chosen = chosen[:6]
        fig, axes = plt.subplots(2, 4, figsize=(16, 8.4))
        panels = [("real", n) for n in REAL] + [("synthetic", i) for i in chosen]
        for ax, (kind, item) in zip(axes.flat, panels, strict=True):
            ax.set_axis_off()
            if kind == "real":
                img = np.asarray(Image.open(Path(args.real) / str(item)))
                ax.imshow(img, cmap="gray", vmin=0, vmax=255)
                ax.set_title(f"real {item}\n{REAL[str(item)]}", fontsize=10)
                continue
            i = int(item)
            img = np.asarray(Image.open(Path(root) / "images" / index.images[i]))
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            scale = img.shape[0] / 1024
            for m in np.flatnonzero((index.box_image_index == i).numpy()):
                x1, y1, x2, y2 = (index.boxes[m] * scale).tolist()
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="red", lw=1.5))
                ax.text(
                    x1, y1 - 6, CLASS_NAMES[int(index.box_class[m])], color="yellow", fontsize=9
                )
            labels = [CLASS_NAMES[k] for k in np.flatnonzero(index.labels[i].numpy())]
            ax.set_title(f"synthetic {index.images[i]}\n{' | '.join(labels)}", fontsize=10)
        fig.tight_layout()
        fig.savefig(args.out, dpi=72)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
