"""A short demo of ccg-layers on generated tensors (`make demo`).

Fits a tiny class-wise grid head with MILGridLoss on synthetic feature maps where one class's
"lesion" occupies a few grid cells, with boxes for some images and image labels for the rest,
then prints how well the predicted map covers the lesion. The full CCG-Net trainer replaces
this once it exists (see docs/).
"""

from __future__ import annotations

import torch
from torch import nn

import ccg_layers
from ccg_layers.functional import boxes_to_grid


def make_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    feats = torch.randn(n, 16, 8, 8, generator=generator) * 0.5
    labels = torch.randint(0, 2, (n, 1), generator=generator).float()
    xy = torch.randint(0, 192, (n, 2), generator=generator).float()
    boxes = torch.cat([xy, xy + 64], dim=1)  # 64-px lesions in a 256-px image
    grid = boxes_to_grid(boxes, (256, 256), (8, 8))[:, None] & labels.bool()[..., None, None]
    feats[:, :4] += 2.0 * grid.float()  # the lesion shows in 4 feature channels
    box_mask = labels.bool() & (torch.rand(n, 1, generator=generator) < 0.25)
    return feats, labels, grid.float(), box_mask


def main() -> None:
    g = torch.Generator().manual_seed(0)
    head = nn.Sequential(nn.Conv2d(16, 16, 1), nn.ReLU(), nn.Conv2d(16, 1, 1))
    loss_fn = ccg_layers.MILGridLoss(box_weight=4.0)
    opt = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    for step in range(201):
        feats, labels, grid, box_mask = make_batch(16, g)
        loss = loss_fn(head(feats), labels, grid, box_mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step:3d}  L_base {loss.item():.4f}")
    feats, labels, grid, _ = make_batch(256, g)
    with torch.no_grad():
        pred = torch.sigmoid(head(feats)) > 0.5
    pos = labels[:, 0].bool()
    inter = (pred & grid.bool())[pos].flatten(1).sum(1)
    union = (pred | grid.bool())[pos].flatten(1).sum(1)
    iou = inter.float() / union.clamp(min=1).float()
    print(
        f"mean IoU of the predicted region with the lesion on held-out positives: {iou.mean():.3f}"
    )
    print(f"fraction with IoU > 0.3: {(iou > 0.3).float().mean():.3f}")


if __name__ == "__main__":
    main()
