"""Kept for old imports: the checks live in :mod:`tests.overlap` now."""

from __future__ import annotations

from tests.overlap import assert_exclusive

__all__ = ["assert_exclusive"]
