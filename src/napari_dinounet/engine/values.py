"""Checks of numbers that come from users, files and JSON, where True and False must not count as numbers."""

from __future__ import annotations

import numbers


def is_number(value, kind: type = numbers.Real) -> bool:
    """Whether ``value`` is a number of ``kind`` (numbers.Real, numbers.Integral). bool is an int subclass,
    so JSON's ``true`` or a checkbox's value would otherwise pass as 1."""
    return isinstance(value, kind) and not isinstance(value, bool)
