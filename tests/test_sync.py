"""Zero host synchronisations in forward and backward with value checks off (issue 13).

Value checks (NaN, {0, 1}, index ranges) read tensor values and so synchronise the host with
the device; with ``ccg_layers.set_value_checks(False)`` the layers below run without a single
read-back, counted by :func:`tests.host_sync.count_host_syncs`.
"""

from __future__ import annotations

import pytest
import torch

import ccg_layers
from ccg_layers import CrossImageAttention, MILGridLoss
from tests.host_sync import SYNC_METHODS, count_host_syncs


@pytest.fixture
def checks_off():
    with ccg_layers.set_value_checks(False):
        yield


def _mil_inputs():
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    box_mask = torch.tensor([[True, False, False], [False, False, True]])
    grid = torch.zeros(2, 3, 4, 4)
    grid[0, 0, 1:3, 1:3] = 1
    grid[1, 2, 3, 3] = 1
    return logits, labels, grid, box_mask


def test_the_counter_sees_every_kind_of_read_back():
    x = torch.tensor([1.0, 0.0])
    before = {name: vars(torch.Tensor).get(name) for name in SYNC_METHODS}
    with count_host_syncs() as syncs:
        x[0].item(), bool(x[0]), int(x[0]), float(x[0]), x.tolist(), x.nonzero()
        torch.nonzero(x)
        [0, 1, 2][torch.tensor(1)]  # __index__
    assert set(syncs) == {*SYNC_METHODS, "torch.nonzero"}
    assert {name: vars(torch.Tensor).get(name) for name in SYNC_METHODS} == before  # restored


def test_value_checks_on_do_synchronise():
    """The counter can fail: with value checks on the loss reads its inputs back."""
    logits, labels, grid, box_mask = _mil_inputs()
    with count_host_syncs() as syncs:
        MILGridLoss()(logits, labels, grid, box_mask).backward()
    assert sum(syncs.values()) > 0


@pytest.mark.usefixtures("checks_off")
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("boxes", [True, False])
def test_mil_grid_loss_forward_backward_without_sync(reduction, boxes):
    logits, labels, grid, box_mask = _mil_inputs()
    extra = (grid, box_mask) if boxes else ()
    with count_host_syncs() as syncs:
        MILGridLoss(reduction=reduction)(logits, labels, *extra).sum().backward()
    assert sum(syncs.values()) == 0, syncs
    assert logits.grad is not None


@pytest.mark.usefixtures("checks_off")
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("low_rank", [False, True])
def test_cross_image_attention_pair_without_sync(fused, low_rank):
    kwargs = {"qk_channels": 4, "heads": 2} if low_rank else {}
    layer = CrossImageAttention(8, fused=fused, **kwargs)
    fu = torch.randn(2, 8, 3, 3, requires_grad=True)
    fv = torch.randn(2, 8, 2, 4, requires_grad=True)
    with count_host_syncs() as syncs:
        a, b = layer(fu, fv)
        (a.sum() + b.sum()).backward()
    assert sum(syncs.values()) == 0, syncs


@pytest.mark.usefixtures("checks_off")
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("partners", [False, True])
@pytest.mark.parametrize("low_rank", [False, True])
def test_cross_image_attention_residual_without_sync(fused, partners, low_rank):
    kwargs = {"qk_channels": 4, "heads": 2} if low_rank else {}
    layer = CrossImageAttention(8, mode="residual", gate_init=0.5, fused=fused, **kwargs)
    x = torch.randn(3, 8, 3, 3, requires_grad=True)
    partner_index = torch.tensor([2, 0, 1]) if partners else None
    with count_host_syncs() as syncs:
        layer(x, partner_index).sum().backward()
    assert sum(syncs.values()) == 0, syncs
    assert layer.gate is not None
    assert layer.gate.grad is not None
