"""Small helpers shared by the subpackages."""

from __future__ import annotations

import numbers


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
