"""Exceptions raised by ccg-layers for bad input.

Every error raised at the public boundary is a :class:`ValueError` subclass whose message names
the argument, what was expected and what was received, so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = ["CCGDTypeError", "CCGInputError", "CCGShapeError", "CCGValueRangeError"]


class CCGInputError(ValueError):
    """Base class of every input-validation error of ccg-layers."""


class CCGShapeError(CCGInputError):
    """An argument has the wrong rank or a dimension that does not match."""


class CCGDTypeError(CCGInputError):
    """An argument has a dtype the function cannot take."""


class CCGValueRangeError(CCGInputError):
    """An argument holds values outside the allowed set or range."""
