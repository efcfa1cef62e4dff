"""Input validation shared by every public function of ccg-layers.

Shape checks are static and always run (they are free under ``torch.compile``). Checks that
read tensor *values* (``{0, 1}`` labels, finiteness, index ranges) synchronise with the device
and would break a compiled graph, so they run only while :func:`ccg_layers.config.values_checkable`
(switched on by :class:`ccg_layers.set_value_checks`, and not compiling); call the eager function
once to validate a data pipeline.

These helpers are the package's own toolkit (every concept file validates its public functions
with them); they are not part of the ``ccg_layers`` namespace.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from ccg_layers.config import values_checkable
from ccg_layers.errors import CCGDTypeError, CCGShapeError, CCGValueRangeError

Reduction = Literal["none", "mean", "sum"]

__all__ = [
    "Reduction",
    "check_batch",
    "check_binary",
    "check_choice",
    "check_dtype",
    "check_finite",
    "check_flag",
    "check_float_dtype",
    "check_grid",
    "check_index",
    "check_labels",
    "check_memory_valid",
    "check_positive",
    "check_probabilities",
    "check_reduction",
    "check_seed",
    "check_shape",
    "check_size2",
    "check_tensor",
    "describe",
    "optional_positive_int",
    "positive_int",
    "real_number",
    "reduce",
]


def _fmt_shape(shape: Sequence[int]) -> str:
    return str(tuple(int(s) for s in shape))


def check_tensor(x: object, name: str) -> Tensor:
    """Raise unless ``x`` is a tensor; return it typed."""
    if not isinstance(x, Tensor):
        raise CCGDTypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    return x


def check_shape(
    x: Tensor,
    name: str,
    spec: Sequence[str | int],
    dims: dict[str, int] | None = None,
    *,
    leading: bool = False,
) -> dict[str, int]:
    """Check ``x.shape`` against a symbolic ``spec`` and bind the symbols in ``dims``.

    Args:
        x: The tensor.
        name: The argument's name, used in the message.
        spec: One entry per dimension: an ``int`` is a fixed size, a ``str`` a symbol that must
            equal the size already bound to it in ``dims`` (or binds it).
        dims: Symbols bound so far, updated in place; a new dict when ``None``.
        leading: Allow any number of extra leading dimensions before ``spec``.

    Returns:
        ``dims``, with the symbols of ``spec`` bound.

    Raises:
        CCGShapeError: With the expected and the received shape.
    """
    bound: dict[str, int] = {} if dims is None else dims
    shape = tuple(x.shape)
    rank_ok = len(shape) >= len(spec) if leading else len(shape) == len(spec)
    names = ", ".join(str(s) for s in spec)
    if leading:
        names = "..., " + names
    if not rank_ok:
        raise CCGShapeError(
            f"`{name}` must have {'at least ' if leading else ''}{len(spec)} dimensions "
            f"({names}), got shape {_fmt_shape(shape)}."
        )
    tail = shape[len(shape) - len(spec) :]
    for i, sym in enumerate(spec):  # not zip(strict=True): torch 2.1's dynamo cannot trace it
        size = tail[i]
        if isinstance(sym, int):
            if size != sym:
                raise CCGShapeError(
                    f"`{name}` must have shape ({names}) with {sym} in that position, "
                    f"got shape {_fmt_shape(shape)}."
                )
        elif sym in bound and bound[sym] != size:
            raise CCGShapeError(
                f"`{name}` must have shape ({names}) with {sym}={bound[sym]} as bound by the "
                f"other arguments, got shape {_fmt_shape(shape)} ({sym}={size})."
            )
        else:
            bound[sym] = int(size)
    return bound


def check_dtype(x: Tensor, name: str, kinds: Sequence[Literal["float", "int", "bool"]]) -> None:
    """Raise unless ``x``'s dtype is of one of the ``kinds``."""
    if x.dtype == torch.bool:
        kind = "bool"
    elif x.dtype.is_floating_point:
        kind = "float"
    elif x.dtype.is_complex:
        kind = "complex"
    else:
        kind = "int"
    if kind not in kinds:
        raise CCGDTypeError(f"`{name}` must have a {' or '.join(kinds)} dtype, got {x.dtype}.")


def check_binary(x: Tensor, name: str) -> None:
    """Raise unless every value of ``x`` is 0 or 1 (skipped while compiling)."""
    if not values_checkable() or x.dtype == torch.bool or x.numel() == 0:
        return
    bad = (x != 0) & (x != 1)
    if bool(bad.any()):
        first = x[bad].flatten()[0].item()
        raise CCGValueRangeError(
            f"`{name}` must hold only 0 and 1, got {int(bad.sum())} other value(s), e.g. {first}."
        )


def check_finite(x: Tensor, name: str) -> None:
    """Raise if ``x`` holds NaN or infinity (skipped while compiling)."""
    if not values_checkable() or not x.dtype.is_floating_point or x.numel() == 0:
        return
    if not bool(torch.isfinite(x).all()):
        raise CCGValueRangeError(f"`{name}` must be finite, got NaN or infinite values.")


def check_grid(x: Tensor, name: str, axes: str = "H, W") -> None:
    """Raise unless the grid of ``x`` (its last two dimensions, ``axes``) has a cell.

    An empty grid would pool, attend to or threshold nothing.
    """
    if x.shape[-2] == 0 or x.shape[-1] == 0:
        raise CCGShapeError(
            f"`{name}` must have at least one cell ({axes} >= 1), got shape {tuple(x.shape)}."
        )


def check_probabilities(x: Tensor, name: str) -> None:
    """Raise unless every value of ``x`` is a finite number in ``[0, 1]`` (a value check).

    Logits passed for probabilities would give plausible answers. One reduction reads a valid
    ``x`` (NaN and infinity fail the interval too); a failure is :func:`check_finite`'s error
    for NaN or infinity, else the interval's. Skipped while the value checks are off.
    """
    if not values_checkable() or x.numel() == 0:
        return
    if not bool(((x >= 0) & (x <= 1)).all()):
        check_finite(x, name)
        raise CCGValueRangeError(
            f"`{name}` must hold probabilities in [0, 1] (e.g. logits.sigmoid()), got values in "
            f"[{float(x.min()):g}, {float(x.max()):g}]."
        )


def check_index(x: Tensor, name: str, size: int) -> None:
    """Raise unless ``x`` is an integer tensor with values in ``[0, size)``."""
    check_dtype(x, name, ("int",))
    if not values_checkable() or x.numel() == 0:
        return
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi >= size:
        raise CCGValueRangeError(
            f"`{name}` must hold indices in [0, {size}), got values in [{lo}, {hi}]."
        )


def check_positive(value: object, name: str, *, allow_zero: bool = False) -> None:
    """Raise unless ``value`` is a positive (or non-negative) real number (not a bool)."""
    expected = "non-negative" if allow_zero else "positive"
    real_number(value, name, low=0.0, low_open=not allow_zero, what=f"a {expected} number")


def real_number(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str | None = None,
) -> float:
    """Return ``value`` as a float if it is a finite real number in the interval.

    A real number (``int``, ``float``, a NumPy scalar; not a bool, a string or a tensor) from
    ``low`` to ``high``, each end open as flagged.

    Raises:
        CCGValueRangeError: Anything else, naming ``name``, the interval (or ``what``) and
            ``value``.
    """
    real = not isinstance(value, bool) and isinstance(value, numbers.Real)
    number = float(value) if real else math.nan  # type: ignore[arg-type]
    ok = math.isfinite(number)
    if low is not None:
        ok = ok and (number > low if low_open else number >= low)
    if high is not None:
        ok = ok and (number < high if high_open else number <= high)
    if not ok:
        if what is None:
            left = "(" if low_open else "["
            right = ")" if high_open else "]"
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            what = f"a finite number in {left}{lo}, {hi}{right}"
        raise CCGValueRangeError(f"`{name}` must be {what}, got {value!r}.")
    return number


def check_float_dtype(value: object, name: str, *, allow_none: bool = True) -> None:
    """Raise unless ``value`` is a floating ``torch.dtype`` (or ``None`` where allowed)."""
    if value is None and allow_none:
        return
    if not (isinstance(value, torch.dtype) and value.is_floating_point):
        expected = "a floating torch.dtype" + (" or None" if allow_none else "")
        raise CCGDTypeError(f"`{name}` must be {expected}, got {value!r}.")


def check_seed(value: object) -> int:
    """Return ``seed`` if it is an ``int`` (not a bool); else raise naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise CCGValueRangeError(f"`seed` must be an int, got {value!r}.")
    return value


def check_flag(value: object, name: str) -> bool:
    """Return ``value`` if it is ``True`` or ``False``; else raise naming ``name``.

    A string such as ``"no"`` would otherwise count as true.
    """
    if not isinstance(value, bool):
        raise CCGValueRangeError(f"`{name}` must be True or False, got {value!r}.")
    return value


def positive_int(value: object, name: str, *, allow_zero: bool = False) -> int:
    """Return ``value`` as an ``int`` if it is a positive (or non-negative) integer.

    An ``int`` or a NumPy integer; a bool, a float, a string or a tensor raises, naming ``name``.
    """
    number = _as_index(value)
    if number is None or number < (0 if allow_zero else 1):
        kind = "non-negative" if allow_zero else "positive"
        raise CCGValueRangeError(f"`{name}` must be a {kind} int, got {value!r}.")
    return number


def optional_positive_int(value: object, name: str) -> int | None:
    """``None``, or ``value`` as a positive ``int`` (:func:`positive_int`); else raise."""
    if value is None:
        return None
    number = _as_index(value)
    if number is None or number < 1:
        raise CCGValueRangeError(f"`{name}` must be None or a positive int, got {value!r}.")
    return number


def _as_index(value: object) -> int | None:
    """``value`` as an ``int`` if it is a Python or NumPy integer (no bool or tensor), else None."""
    if isinstance(value, (bool, np.bool_, Tensor)):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_batch(x: object, name: str, *, min_dim: int = 1, what: str = "(n, ...)") -> Tensor:
    """A floating tensor of rank ``>= min_dim`` holding at least one sample; returned typed."""
    t = check_tensor(x, name)
    check_dtype(t, name, ("float",))
    if t.dim() < min_dim:
        raise CCGShapeError(
            f"`{name}` must have at least {min_dim} dimension{'s' if min_dim > 1 else ''} "
            f"{what}, got shape {tuple(t.shape)}."
        )
    if t.shape[0] == 0:
        raise CCGShapeError(
            f"`{name}` must hold at least 1 sample {what}, got shape {tuple(t.shape)} "
            "(an empty batch)."
        )
    return t


def check_labels(labels: object, name: str, n: int) -> tuple[int, int]:
    """Integer ``(n, H, W)`` segment labels; returns ``(H, W)`` (the range is checked apart)."""
    t = check_tensor(labels, name)
    check_dtype(t, name, ("int",))
    dims = {"N": n}
    check_shape(t, name, ("N", "H", "W"), dims)
    return dims["H"], dims["W"]


def check_memory_valid(memory_valid: object, k: int) -> None:
    """``None``, or the ``(K,)`` bool mask of the filled slots of a memory of ``K`` partners."""
    if memory_valid is None:
        return
    t = check_tensor(memory_valid, "memory_valid")
    check_dtype(t, "memory_valid", ("bool",))
    check_shape(t, "memory_valid", ("K",), {"K": k})


def _positive_index(value: object) -> int | None:
    """``value`` as a positive ``int`` if it is an integer (not a bool), else ``None``."""
    number = _as_index(value)
    return number if number is not None and number > 0 else None


def check_size2(value: object, name: str, axes: str = "(H, W)") -> tuple[int, int]:
    """Return the pair from a positive int (a square) or a pair of positive ints.

    ``axes`` names the pair's order in the message (``"(W, H)"`` where widths come first).

    Raises:
        CCGValueRangeError: Anything else, naming ``name``.
    """
    if isinstance(value, Sequence) and not isinstance(value, str):
        pair = [_positive_index(v) for v in value]
    else:
        side = _positive_index(value)
        pair = [side, side]
    if len(pair) != 2 or pair[0] is None or pair[1] is None:
        raise CCGValueRangeError(
            f"`{name}` must be a positive int or two positive ints {axes}, got {value!r}."
        )
    return pair[0], pair[1]


def check_choice(value: object, name: str, choices: Any) -> Any:
    """Return ``value`` if it is one of the strings of the ``Literal`` type ``choices``.

    Otherwise raise :class:`CCGValueRangeError` naming ``name``, the allowed values and
    ``value``.
    """
    allowed: tuple[str, ...] = get_args(choices)
    if not isinstance(value, str) or value not in allowed:
        raise CCGValueRangeError(
            f"`{name}` must be one of {', '.join(map(repr, allowed))}, got {value!r}."
        )
    return value


def check_reduction(reduction: object) -> Reduction:
    """Raise unless ``reduction`` is one of ``"none"``, ``"mean"``, ``"sum"``."""
    return check_choice(reduction, "reduction", Reduction)  # type: ignore[no-any-return]


def reduce(x: Tensor, reduction: Reduction, *, count: Tensor | int | None = None) -> Tensor:
    """Apply ``reduction`` to ``x``; ``"mean"`` divides the sum by ``count`` (default numel).

    The mean of an empty ``x`` (with the default ``count``) is ``0``, like its sum, and stays
    connected to the graph (its gradient is zero), so an empty batch does not give NaN.
    """
    if reduction == "none":
        return x
    total = x.sum()
    if reduction == "sum":
        return total
    if count is None:
        return total / x.numel() if x.numel() else total
    return total / count


def describe(mapping: Mapping[str, int]) -> str:
    """Format bound dimensions as ``N=2, K=3`` for messages."""
    return ", ".join(f"{k}={v}" for k, v in mapping.items())
