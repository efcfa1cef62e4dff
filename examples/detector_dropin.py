"""CrossImageAttention dropped into torchvision's Faster R-CNN after every FPN level.

    python examples/detector_dropin.py              # 256-px images, 12 training steps
    python examples/detector_dropin.py --steps 30 --size 320
    python examples/detector_dropin.py --light --size 128 --steps 6   # a quick CPU run

1. Builds ``fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` (no downloads) and a
   copy of it whose FPN outputs each pass through a ``CrossImageAttention(256, heads=8,
   mode="residual")``: every image of the batch attends to its partner ``(i + 1) mod B`` at
   every level, and the result is added back through a gate that starts at 0.
2. Shows that at initialisation both detectors give identical detections (boxes, scores,
   labels) on the same images: inserting the layer changes nothing until it is trained.
3. Trains the detector with attention for a few SGD steps on synthetic images with boxes
   (bright rectangles on noise) and shows the loss going down and the gates moving off 0.
"""

from __future__ import annotations

import argparse
import copy
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from ccg_layers import CrossImageAttention


class FPNWithCrossImageAttention(nn.Module):
    """Wraps a torchvision FPN: one residual CrossImageAttention per output level."""

    def __init__(self, fpn: nn.Module, channels: int, levels: list[str], heads: int = 8) -> None:
        super().__init__()
        self.fpn = fpn
        self.attention = nn.ModuleDict(
            {name: CrossImageAttention(channels, heads=heads, mode="residual") for name in levels}
        )

    def forward(self, x: dict[str, Tensor]) -> dict[str, Tensor]:
        features = self.fpn(x)
        return OrderedDict(
            (name, self.attention[name](f) if name in self.attention else f)
            for name, f in features.items()
        )


# Fewer proposals and sampled RoIs than torchvision's defaults: the box head's two 1024-wide
# layers dominate a CPU step otherwise. Used with --light (and by the test).
LIGHT = {
    "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 100,
    "rpn_batch_size_per_image": 64,
    "box_batch_size_per_image": 32,
    "box_detections_per_img": 50,
}


def build_detectors(size: int, seed: int, light: bool = False) -> tuple[nn.Module, nn.Module]:
    """The plain detector and a copy with attention after each FPN level (same weights)."""
    torch.manual_seed(seed)
    plain = fasterrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=2,
        min_size=size,
        max_size=size,
        box_score_thresh=0.0,  # keep every detection, so that the comparison is not vacuous
        **(LIGHT if light else {}),
    )
    with_attention = copy.deepcopy(plain)
    levels = ["0", "1", "2", "3", "pool"]
    backbone = with_attention.backbone
    backbone.fpn = FPNWithCrossImageAttention(backbone.fpn, backbone.out_channels, levels)
    return plain, with_attention


def synthetic_batch(
    n: int, size: int, generator: torch.Generator
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Images of noise with one bright rectangle each, and its box (label 1)."""
    images, targets = [], []
    for _ in range(n):
        img = torch.rand(3, size, size, generator=generator) * 0.3
        w, h = (int(v) for v in torch.randint(size // 5, size // 2, (2,), generator=generator))
        x0 = int(torch.randint(0, size - w, (1,), generator=generator))
        y0 = int(torch.randint(0, size - h, (1,), generator=generator))
        img[:, y0 : y0 + h, x0 : x0 + w] += 0.7
        images.append(img)
        box = torch.tensor([[x0, y0, x0 + w, y0 + h]], dtype=torch.float32)
        targets.append({"boxes": box, "labels": torch.ones(1, dtype=torch.int64)})
    return images, targets


def detections_identical(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> bool:
    return all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
        for x, y in zip(a, b, strict=True)
    )


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=12, help="training steps")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--light", action="store_true", help="fewer proposals and RoIs (CPU)")
    args = parser.parse_args(argv)

    plain, model = build_detectors(args.size, args.seed, args.light)
    g = torch.Generator().manual_seed(args.seed)
    images, targets = synthetic_batch(args.batch, args.size, g)

    plain.eval()
    model.eval()
    with torch.no_grad():
        before = plain(images)
        after = model(images)
    identical = detections_identical(before, after)
    n_det = sum(len(d["boxes"]) for d in before)
    print(f"detections at initialisation: {n_det} boxes, identical with attention: {identical}")

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    losses = []
    for step in range(args.steps):
        loss_dict = model(images, targets)
        loss = sum(loss_dict.values())
        assert isinstance(loss, Tensor)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        print(f"step {step:3d}  loss {losses[-1]:.4f}")
    gates = {
        name: float(layer.gate.detach())  # type: ignore[union-attr]
        for name, layer in model.backbone.fpn.attention.items()
    }
    print("gates after training:", ", ".join(f"{k}={v:+.2e}" for k, v in gates.items()))
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return {"identical": identical, "detections": n_det, "losses": losses, "gates": gates}


if __name__ == "__main__":
    main()
