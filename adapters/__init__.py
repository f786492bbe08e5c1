"""Adapters for real resources (PostgreSQL, HTTP)."""
