"""Adapters for real resources: PostgreSQL (psycopg 3) and HTTP (requests)."""
