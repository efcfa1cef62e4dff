"""The global switches of ccg_layers.config: value checks and the fused-attention path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ccg_layers import config
from ccg_layers import validation as v
from ccg_layers.errors import CCGValueRangeError


def test_value_checks_are_skipped_while_compiling(monkeypatch):
    monkeypatch.setattr(config, "is_compiling", lambda: True)
    assert not config.values_checkable()
    v.check_binary(torch.tensor([0.5]), "y")  # no error: a compiled graph cannot read values


def test_is_compiling_is_true_inside_a_compiled_function():
    seen = []

    def f(x):
        seen.append(config.is_compiling())
        return x + 1

    torch.compile(f, backend="eager")(torch.zeros(1))
    assert seen == [True]
    assert not config.is_compiling()


def test_value_checks_switch_skips_value_checks_and_restores() -> None:
    import ccg_layers
    from ccg_layers.validation import check_finite

    bad = torch.tensor([float("nan")])
    with ccg_layers.set_value_checks(False):
        assert not ccg_layers.value_checks_enabled()
        check_finite(bad, "x")  # skipped: no error, no host synchronisation
    assert ccg_layers.value_checks_enabled()
    with pytest.raises(CCGValueRangeError, match="`x` must be finite"):
        check_finite(bad, "x")
    ccg_layers.set_value_checks(False)
    try:
        assert not ccg_layers.value_checks_enabled()
    finally:
        ccg_layers.set_value_checks(True)


def test_value_checks_switch_rejects_non_bool() -> None:
    import ccg_layers

    with pytest.raises(CCGValueRangeError, match="`enabled` must be a bool, got 'no'"):
        ccg_layers.set_value_checks("no")  # type: ignore[arg-type]


def test_value_checks_env_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("CCG_VALUE_CHECKS", "0")
    assert config.parse_value_checks(os.environ["CCG_VALUE_CHECKS"]) is False
    monkeypatch.setenv("CCG_VALUE_CHECKS", "maybe")
    with pytest.raises(CCGValueRangeError, match="`CCG_VALUE_CHECKS` must be 0 or 1"):
        config.parse_value_checks(os.environ["CCG_VALUE_CHECKS"])


@pytest.mark.parametrize(
    ("value", "want"),
    [("", None), ("auto", None), ("0", False), ("false", False), ("1", True), (" ON ", True)],
)
def test_environment_variable_values(value, want):
    assert config.parse_fused_attn(value) is want


@pytest.mark.slow
def test_environment_variable_is_read_at_import():
    code = "from ccg_layers.functional import get_fused_attn; print(get_fused_attn())"
    env = {**os.environ, "CCG_FUSED_ATTN": "0"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "False"


def test_error_bad_environment_variable():
    with pytest.raises(CCGValueRangeError, match=r"`CCG_FUSED_ATTN` must be 0 .* got 'yes'"):
        config.parse_fused_attn("yes")
