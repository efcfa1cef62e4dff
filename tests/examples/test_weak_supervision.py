"""What makes the trainer learn from image-level labels (issue: weakly supervised learning).

The head's bias from the class prior, Li et al.'s noisy-OR floor, the optimiser choice, the
image-level score at the trained resolution and the box-free reference map.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ccg_layers.functional import log_noisy_or
from examples.ccg_net.cli import build_parser
from examples.ccg_net.config import PRESETS, TrainConfig, resolve_config
from examples.ccg_net.data import reference_maps
from examples.ccg_net.engine import build_trainee, make_optimizer
from examples.ccg_net.model import build_model


def _tiny_model():
    return build_model("tiny", "none", head_channels=8, test_upsample=2, tiny_stride=8)


@settings(max_examples=25, deadline=None)
@given(
    prior=st.lists(st.floats(1e-3, 0.6), min_size=14, max_size=14),
    cells=st.sampled_from([1, 4, 64, 256, 1024]),
    floor=st.sampled_from([None, 0.0, 0.9, 0.98]),
)
def test_head_bias_from_the_prior_starts_the_noisy_or_at_the_prior(prior, cells, floor):
    model = _tiny_model()
    prior_t = torch.tensor(prior)
    model.init_head_bias(prior_t, cells, floor)
    bias = model.head[-1].bias.detach().double()
    side = math.isqrt(cells)
    logits = bias[None, :, None, None].expand(1, 14, side, side)
    p = log_noisy_or(logits, noisy_or_floor=floor)[0].exp()[0]
    # exact unless the floor makes the prior unreachable by cells at p <= 0.5 (clamped)
    reachable = 1 - (1 - 0.5 * (1 - (floor or 0.0))) ** cells >= prior_t.double()
    assert torch.allclose(p[reachable], prior_t.double()[reachable], rtol=1e-4, atol=1e-6)


def test_a_constant_bias_of_minus_4_saturates_the_noisy_or_on_a_16x16_grid():
    # the former initialisation: every image starts at P(positive) = 0.99
    logits = torch.full((1, 1, 16, 16), -4.0, dtype=torch.float64)
    assert float(log_noisy_or(logits)[0].exp()) > 0.99


def test_image_scores_use_the_trained_resolution_and_the_loss_floor():
    torch.manual_seed(0)
    model = _tiny_model().eval()
    model.noisy_or_floor = 0.98
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits_up, feats = model(x)
        scores = model.image_scores(feats)
        native = model.head(feats)
    assert logits_up.shape[-1] == 2 * native.shape[-1]
    expected = log_noisy_or(native, noisy_or_floor=0.98)[0].exp()
    assert torch.allclose(scores, expected)
    upsampled = log_noisy_or(logits_up, noisy_or_floor=0.98)[0].exp()
    assert not torch.allclose(scores, upsampled)


def test_trainer_initialises_the_head_bias_from_the_training_prior(make_config):
    from examples.ccg_net.data import build_data
    from examples.ccg_net.engine import init_head_bias

    cfg = make_config(losses=("base",))
    data = build_data(cfg, device=torch.device("cpu"))
    trainee = build_trainee(cfg, 1)
    init_head_bias(trainee.model, cfg, data)
    rows = [data.index.position(n) for n in data.split["train"]]
    prior = data.index.labels[rows].float().mean(0)
    g = cfg.image_size // cfg.tiny_stride
    logits = trainee.model.head[-1].bias.detach()[None, :, None, None].expand(1, -1, g, g)
    p = log_noisy_or(logits.double(), noisy_or_floor=cfg.noisy_or_floor)[0].exp()[0]
    seen = (prior > 0) & (prior < 1)
    assert torch.allclose(p[seen].float(), prior[seen], rtol=1e-3)
    cfg.head_bias_init = "-4"
    init_head_bias(trainee.model, cfg, data)
    assert torch.all(trainee.model.head[-1].bias == -4.0)


def test_noisy_or_floor_reaches_the_loss_and_none_means_eq2_as_printed():
    cfg = resolve_config(build_parser().parse_args(["train", "--preset", "demo"]))
    assert cfg.noisy_or_floor == 0.98
    trainee = build_trainee(cfg, 1)
    assert trainee.criterion.base.noisy_or_floor == 0.98
    assert trainee.model.noisy_or_floor == 0.98
    cfg = resolve_config(build_parser().parse_args(["train", "--noisy-or-floor", "none"]))
    assert cfg.noisy_or_floor is None


def test_optimizer_flag_selects_adamw_or_nesterov_sgd():
    model = torch.nn.Linear(2, 2)
    opt, _ = make_optimizer(TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05), model)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["weight_decay"] == 0.05
    opt, _ = make_optimizer(TrainConfig(), model)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["nesterov"] is True


def test_demo_preset_is_the_tuned_weak_supervision_recipe():
    demo = TrainConfig(**PRESETS["demo"])
    assert (demo.optimizer, demo.lr, demo.weight_decay, demo.setting) == ("sgd", 3e-3, 1e-4, "b")
    assert (demo.synthetic_images, demo.epochs, demo.lr_step_epochs) == (3000, 6, 4)
    assert (demo.head_bias_init, demo.noisy_or_floor) == ("prior", 0.98)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--noisy-or-floor", "1.5"], "--noisy-or-floor must be in"),
        (["--head-bias-init", "zero"], "--head-bias-init must be 'prior' or a number"),
        (["--optimizer", "adam"], "--optimizer must be sgd or adamw"),
    ],
)
def test_bad_weak_supervision_options_name_the_option(argv, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(build_parser().parse_args(["train", *argv]))


def test_whole_image_reference_needs_no_box_and_scores_the_box_share(make_config):
    from examples.ccg_net.data import build_data
    from examples.ccg_net.report import score_maps

    cfg = make_config(losses=("base",), setting="b")
    data = build_data(cfg, device=torch.device("cpu"), with_train=False)
    maps = reference_maps(data.index, data.split, cfg)
    whole = maps["Whole image"]
    assert torch.all(whole == 1)
    res = score_maps(whole, data.test, None)
    # IoU of the whole image with a box is the box's share of the image
    from examples.ccg_net.data import test_boxes

    boxes, _img, cls = test_boxes(data.test)
    share = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / cfg.image_size**2
    for k in cls.unique().tolist():
        sel = cls == k
        # one box per (image, class) in the fixture's test images
        expected = (share[sel] > 0.1).float().mean()
        assert res.accuracy[0, k] == pytest.approx(float(expected))


@pytest.mark.parametrize(("setting", "lr"), [("a", 3e-4), ("b", 3e-3), ("c", 3e-4)])
def test_demo_learning_rate_follows_the_setting_unless_given(setting, lr):
    parse = build_parser().parse_args
    cfg = resolve_config(parse(["train", "--preset", "demo", "--setting", setting]))
    assert cfg.lr == lr
    cfg = resolve_config(parse(["train", "--preset", "demo", "--setting", setting, "--lr", "0.01"]))
    assert cfg.lr == 0.01
    # the paper preset keeps its own rate in every setting
    assert resolve_config(parse(["train", "--setting", setting])).lr == 1e-3
