"""CCG-Net: a ResNet backbone's C5 features -> two 1x1 convolutions -> class-wise logit maps.

The paper (Sec. 3.2) takes ResNet-50's C5 feature map F (2048x16x16 for a 512x512 image), applies
two 1x1 convolutions and a sigmoid to get the class-wise grid map P. At test time the feature map
is upsampled before the 1x1 convolutions (Sec. 3.7) for a finer map; ``test_upsample`` sets the
factor.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet50_Weights, resnet50
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FrozenBatchNorm2d

from ccg_layers.datasets import normalize_radiographs
from ccg_layers.functional import log_noisy_or

from .config import TrainConfig, check_tiny_backbone


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for but are not on this machine."""


class TinyResNet(nn.Module):
    """A small ResNet (torchvision ``BasicBlock``s) for the CPU demo.

    A 3x3 stride-2 stem (plus a max-pool when ``stride == 16``), then four stages of one block
    each with ``widths`` channels and strides 1, 2, 2, 1: output stride 8 or 16, so a 128x128
    (stride 8) or 256x256 (stride 16) input gives a 16x16 map like ResNet-50's C5 at 512x512.

    Every width is at least ``MIN_TINY_WIDTH`` (8). Narrower stages would give the
    stride-2 1x1 downsample convolutions fewer than 8 input channels, and the backward of such
    a convolution in channels_last crashes the process (SIGSEGV) in torch 2.14.1's oneDNN 3.12
    with its AVX2 kernels and one thread, as on AMD EPYC CPUs without AVX-512; ``--compile``
    reaches the same kernel, because inductor lays convolutions out in channels_last
    (docs/training.md, "A torch crash the tiny backbone avoids").
    """

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), stride: int = 16) -> None:
        super().__init__()
        check_tiny_backbone(widths, stride)
        w0 = widths[0]
        stem: list[nn.Module] = [
            nn.Conv2d(3, w0, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(w0),
            nn.ReLU(inplace=True),
        ]
        if stride == 16:
            stem.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.stem = nn.Sequential(*stem)
        stages = []
        in_ch = w0
        for w, s in zip(widths, (1, 2, 2, 1), strict=True):
            down = None
            if s != 1 or in_ch != w:
                down = nn.Sequential(
                    nn.Conv2d(in_ch, w, 1, stride=s, bias=False), nn.BatchNorm2d(w)
                )
            stages.append(BasicBlock(in_ch, w, s, down))
            in_ch = w
        self.layers = nn.Sequential(*stages)
        self.out_channels = in_ch
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(self.stem(x))


def _torchvision_cache_file() -> Path | None:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for w in (ResNet50_Weights.IMAGENET1K_V2, ResNet50_Weights.IMAGENET1K_V1):
        path = hub / os.path.basename(w.url)
        if path.is_file():
            return path
    return None


def resolve_weights(spec: str, backbone: str) -> Path | None:
    """Turn ``--weights`` into a file (or ``None`` for an explicit random init).

    Raises:
        WeightsNotFoundError: Pretrained weights were asked for and are not on this machine.
    """
    if spec.lower() == "none":
        return None
    if spec.lower() == "imagenet":
        if backbone != "resnet50":
            raise WeightsNotFoundError(
                f"--weights imagenet: there are no ImageNet weights for the {backbone!r} "
                "backbone; pass --weights none (random init) or a state-dict file."
            )
        path = _torchvision_cache_file()
        if path is None:
            hub = Path(torch.hub.get_dir()) / "checkpoints"
            raise WeightsNotFoundError(
                "--weights imagenet: torchvision's ImageNet ResNet-50 weights are not in its "
                f"cache ({hub}). Nothing is downloaded and the run will not silently start from "
                "random weights. Provide them in one of these ways:\n"
                f"  * download {ResNet50_Weights.IMAGENET1K_V1.url} (or "
                f"{ResNet50_Weights.IMAGENET1K_V2.url}) on a machine with internet access and "
                f"put the file in {hub}, or\n"
                "  * pass --weights /path/to/resnet50.pth (a torchvision ResNet-50 state dict), or\n"
                "  * pass --weights none to train from random initialisation on purpose."
            )
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"--weights {spec}: no such file. Pass a torchvision ResNet-50 state dict "
            "(e.g. resnet50-0676ba61.pth), 'imagenet' for torchvision's cache, or 'none' for "
            "random initialisation."
        )
    return path


class CCGNet(nn.Module):
    """Backbone C5 features -> 1x1 conv -> BN -> ReLU -> 1x1 conv -> class logit maps.

    ``forward(x)`` takes ``(N, 1, H, W)`` uint8 radiographs (expanded to 3 channels and
    ImageNet-normalised on the model's device, :func:`ccg_layers.datasets.normalize_radiographs`)
    or ``(N, 3, H, W)`` float images already normalised, and returns ``(logits, features)``: ``logits`` ``(N, K, h, w)`` before the
    sigmoid (the paper's P is their sigmoid) and the C5 features ``(N, C, h, w)`` that the
    relation losses use. In eval mode with ``test_upsample > 1`` the features are upsampled
    bilinearly before the head (Sec. 3.7), so the logits are ``test_upsample`` times finer.
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_channels: int,
        num_classes: int = 14,
        head_channels: int = 512,
        test_upsample: int = 2,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_channels = feature_channels
        self.test_upsample = test_upsample
        self.noisy_or_floor: float | None = None  # the L_base floor, for image_scores
        self.channels_last = False  # set by .to(memory_format=torch.channels_last) users
        self.head = nn.Sequential(
            nn.Conv2d(feature_channels, head_channels, 1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(head_channels, num_classes, 1),
        )
        # Start from a low probability per cell so that the noisy-OR over the grid begins near
        # the class prior instead of saturating at 1 (common practice for dense detectors).
        nn.init.constant_(self.head[-1].bias, -4.0)  # type: ignore[arg-type]

    @torch.no_grad()
    def init_head_bias(
        self, class_prior: Tensor, grid_cells: int, noisy_or_floor: float | None = None
    ) -> None:
        """Start every class's image-level noisy-OR probability at its prior.

        With a per-cell probability ``q`` (times ``1 - noisy_or_floor`` under Li et al.'s
        floor) and ``grid_cells`` cells, the noisy-OR of Eq. 2 is ``1 - (1 - q) ** cells``;
        solving for ``q`` so that it equals the training prevalence ``class_prior`` (K,)
        gives the bias ``logit(q)``. The former constant bias of -4 on a 16x16 grid starts
        every image at P(positive) = 0.99, where the positive images' gradient (proportional
        to 1 - P) is near zero (docs/results.md, "Weak supervision").
        """
        prior = class_prior.double().clamp(1e-4, 1 - 1e-4)
        q = -torch.expm1(torch.log1p(-prior) / grid_cells)
        q = (q / (1.0 - (noisy_or_floor or 0.0))).clamp(max=0.5)
        bias = self.head[-1].bias  # type: ignore[union-attr]
        bias.copy_(torch.logit(q).to(bias))  # type: ignore[union-attr]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dtype == torch.uint8:
            # the loader ships 1-channel uint8 (1 byte per pixel); expand and normalise here,
            # on the model's device
            x = normalize_radiographs(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        feats = self.backbone(x)
        h = feats
        if not self.training and self.test_upsample > 1:
            h = F.interpolate(h, scale_factor=self.test_upsample, mode="bilinear")
        return self.head(h), feats

    def image_scores(self, features: Tensor) -> Tensor:
        """Image-level probabilities ``(N, K)`` from the C5 ``features`` ``forward`` returned.

        The noisy-OR of Eq. 2 (with the training loss's floor, ``self.noisy_or_floor``, set
        from the configuration by the trainer) over the map at
        the resolution the model was trained on: the test-time upsampled map has
        ``test_upsample ** 2`` times as many cells, and its noisy-OR is not the quantity the
        loss trained (on the synthetic twin it cost 0.06 of mean AUC, docs/results.md).
        """
        logits = self.head(features).float()
        return log_noisy_or(logits, noisy_or_floor=self.noisy_or_floor)[0].exp()


class FrozenBatchNorm2dCast(FrozenBatchNorm2d):
    """torchvision's ``FrozenBatchNorm2d`` computed in the input's dtype.

    Its ``x * scale + bias`` with float32 buffers turns every float16 activation under autocast
    into float32 (type promotion), so between two convolutions the whole network ran in float32;
    casting ``scale`` and ``bias`` to ``x.dtype`` keeps autocast's float16.
    """

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.to(x.dtype)[None, :, None, None] + bias.to(x.dtype)[None, :, None, None]


def _resnet50_c5(freeze_bn: bool) -> nn.Module:
    norm = FrozenBatchNorm2dCast if freeze_bn else nn.BatchNorm2d
    net = resnet50(weights=None, norm_layer=norm)
    return net


def build_model(
    backbone: str = "resnet50",
    weights: str = "imagenet",
    *,
    num_classes: int = 14,
    head_channels: int = 512,
    test_upsample: int = 2,
    freeze_bn: bool = True,
    tiny_widths: tuple[int, ...] = (16, 32, 64, 128),
    tiny_stride: int = 16,
) -> CCGNet:
    """Build CCG-Net; loads the backbone weights named by ``weights`` (see ``resolve_weights``)."""
    path = resolve_weights(weights, backbone)
    if backbone == "resnet50":
        net = _resnet50_c5(freeze_bn)
        if path is not None:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
            missing, _ = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing:
                raise ValueError(
                    f"--weights {path}: not a torchvision ResNet-50 state dict "
                    f"(missing {len(missing)} keys, e.g. {missing[:3]})"
                )
        body: nn.Module = nn.Sequential(
            net.conv1,
            net.bn1,
            net.relu,
            net.maxpool,
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        channels = 2048
    elif backbone == "tiny":
        tiny = TinyResNet(tiny_widths, tiny_stride)
        if path is not None:
            tiny.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        body, channels = tiny, tiny.out_channels
    else:
        raise ValueError(f"unknown backbone {backbone!r}")
    return CCGNet(body, channels, num_classes, head_channels, test_upsample)


def model_from_config(cfg: TrainConfig, weights: str) -> CCGNet:
    """The model a configuration describes, with backbone ``weights`` (a path, "imagenet",
    "none", or "twin": the file of :func:`.pretrain.twin_weights`, made beforehand by
    :func:`train` or :func:`compare`)."""
    if weights == "twin":
        from .pretrain import PRETRAIN_SEED, default_output

        weights = str(default_output(cfg, PRETRAIN_SEED))
    model = build_model(
        cfg.backbone,
        weights,
        num_classes=cfg.num_classes,
        head_channels=cfg.head_channels,
        test_upsample=cfg.test_upsample,
        freeze_bn=cfg.freeze_bn,
        tiny_widths=tuple(cfg.tiny_widths),
        tiny_stride=cfg.tiny_stride,
    )
    model.noisy_or_floor = cfg.noisy_or_floor
    return model
