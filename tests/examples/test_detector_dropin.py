"""A reduced run of examples/detector_dropin.py: identical detections at init, loss goes down."""

from __future__ import annotations

import pytest

from examples import detector_dropin as example


@pytest.mark.slow
def test_detector_dropin_reduced_run():
    result = example.main(["--light", "--size", "96", "--steps", "4", "--seed", "0"])
    assert result["detections"] > 0  # the comparison is not vacuous
    assert result["identical"] is True
    losses = result["losses"]
    assert len(losses) == 4
    assert losses[-1] < losses[0]
    assert any(abs(g) > 0 for g in result["gates"].values())


def test_fpn_wrapper_adds_one_residual_layer_per_level():
    import torch
    from torch import nn

    class TwoLevels(nn.Module):
        def forward(self, x):
            return {"0": x["a"], "pool": x["a"][..., ::2, ::2]}

    wrapper = example.FPNWithCrossImageAttention(TwoLevels(), 16, ["0", "pool"], heads=4)
    x = torch.randn(2, 16, 8, 8)
    out = wrapper({"a": x})
    assert list(out) == ["0", "pool"]
    assert torch.equal(out["0"], x)  # gates start at 0
    with torch.no_grad():
        wrapper.attention["0"].gate.fill_(1.0)
    assert not torch.equal(wrapper({"a": x})["0"], x)
