"""Helpers for building klpcore test fixtures (not used at run time)."""
