"""Supervision tree (OTP semantics)."""
