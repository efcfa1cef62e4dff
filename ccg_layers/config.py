"""The global switches of ccg-layers, in one place.

* **Value checks** (:class:`set_value_checks`, :func:`value_checks_enabled`): checks that read
  tensor *values* (``{0, 1}`` labels, finiteness, index ranges) synchronise the host with the
  device. They are on by default (environment variable ``CCG_VALUE_CHECKS=0|1``), and skipped
  while ``torch.compile`` traces, while scripting/tracing and while exporting to ONNX
  (:func:`values_checkable`). Shape, dtype and device checks are free and always run.
* **Fused attention** (:func:`set_fused_attn`, :func:`get_fused_attn`): the process-wide path
  of cross-image attention for calls with ``fused=None`` (environment variable
  ``CCG_FUSED_ATTN=0|1|auto``); :func:`ccg_layers.functional.use_fused_path` applies it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import torch

from ccg_layers.errors import CCGValueRangeError

__all__ = [
    "FUSED_ATTN_ENV_VAR",
    "VALUE_CHECKS_ENV_VAR",
    "get_fused_attn",
    "is_compiling",
    "parse_fused_attn",
    "parse_value_checks",
    "set_fused_attn",
    "set_value_checks",
    "value_checks_enabled",
    "values_checkable",
]

VALUE_CHECKS_ENV_VAR = "CCG_VALUE_CHECKS"
FUSED_ATTN_ENV_VAR = "CCG_FUSED_ATTN"


# --------------------------------------------------------------------------- value checks


def parse_value_checks(value: str) -> bool:
    """The value-checks switch from the text of ``CCG_VALUE_CHECKS`` (unset or empty: on).

    Example:
        >>> parse_value_checks("0"), parse_value_checks("yes")
        (False, True)
    """
    raw = value.strip().lower()
    if raw in ("1", "true", "yes", "on", ""):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise CCGValueRangeError(f"`{VALUE_CHECKS_ENV_VAR}` must be 0 or 1, got {raw!r}.")


_VALUE_CHECKS: bool = parse_value_checks(os.environ.get(VALUE_CHECKS_ENV_VAR, "1"))


def is_compiling() -> bool:
    """``torch.compiler.is_compiling()`` (torch >= 2.3), else ``torch._dynamo``'s (2.1, 2.2)."""
    public: Callable[[], bool] | None = getattr(torch.compiler, "is_compiling", None)
    if public is not None:
        return public()
    from torch._dynamo import is_compiling as dynamo_is_compiling

    return bool(dynamo_is_compiling())


def value_checks_enabled() -> bool:
    """Whether value checks (NaN, ``{0, 1}`` labels, index ranges) are switched on."""
    return _VALUE_CHECKS


class set_value_checks(contextlib.AbstractContextManager[None]):  # noqa: N801 (torch style)
    """Switch value checks on or off, globally or for a ``with`` block.

    Value checks read tensor values and therefore synchronise the host with the device; shape,
    dtype and device checks are free and always run. Checks are on by default, so an
    interactive user gets every named error; a training loop that validated its first step
    switches them off to run without host synchronisation. The environment variable
    ``CCG_VALUE_CHECKS=0|1`` sets the initial state (like ``CCG_FUSED_ATTN`` for the fused
    attention path).

    Args:
        enabled: The new state.

    Example:
        >>> import ccg_layers
        >>> with ccg_layers.set_value_checks(False):
        ...     ccg_layers.value_checks_enabled()
        False
        >>> ccg_layers.value_checks_enabled()
        True
    """

    def __init__(self, enabled: bool) -> None:
        global _VALUE_CHECKS
        if not isinstance(enabled, bool):
            raise CCGValueRangeError(f"`enabled` must be a bool, got {enabled!r}.")
        self._previous = _VALUE_CHECKS
        _VALUE_CHECKS = enabled

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        global _VALUE_CHECKS
        _VALUE_CHECKS = self._previous


def values_checkable() -> bool:
    """Whether value checks may run: switched on, and not compiling, scripting or exporting."""
    if not _VALUE_CHECKS:
        return False
    if is_compiling() or torch.onnx.is_in_onnx_export():
        return False
    return torch._C._get_tracing_state() is None


# --------------------------------------------------------------------------- fused attention


def parse_fused_attn(value: str) -> bool | None:
    """The fused-attention switch from the text of ``CCG_FUSED_ATTN`` (unset or ``auto``: None).

    Example:
        >>> parse_fused_attn("0"), parse_fused_attn(" ON "), parse_fused_attn("auto")
        (False, True, None)
    """
    text = value.strip().lower()
    if text in ("", "auto"):
        return None
    if text in ("0", "false", "off"):
        return False
    if text in ("1", "true", "on"):
        return True
    raise CCGValueRangeError(
        f"`{FUSED_ATTN_ENV_VAR}` must be 0 (reference path), 1 (fused path) or auto, got {value!r}."
    )


_FUSED_SETTING: bool | None = parse_fused_attn(os.environ.get(FUSED_ATTN_ENV_VAR, ""))


def set_fused_attn(enable: bool | None = True) -> None:
    """Set the process-wide path of cross-image attention for calls with ``fused=None``.

    Like timm's ``set_fused_attn``. The initial value comes from the environment variable
    ``CCG_FUSED_ATTN`` (``0``: reference, ``1``: fused, ``auto`` or unset: automatic).

    Args:
        enable: ``True`` always the fused path, ``False`` always the reference path, ``None``
            automatic by size and device. An explicit ``fused=`` argument of a call or a module
            wins over this switch; ONNX export always takes the reference path.

    Example:
        >>> set_fused_attn(False)
        >>> get_fused_attn()
        False
        >>> set_fused_attn(None)  # back to automatic
    """
    global _FUSED_SETTING
    if enable is not None and not isinstance(enable, bool):
        raise CCGValueRangeError(f"`enable` must be True, False or None, got {enable!r}.")
    _FUSED_SETTING = enable


def get_fused_attn() -> bool | None:
    """The process-wide switch set by :func:`set_fused_attn` (``None``: automatic)."""
    return _FUSED_SETTING
