"""Temporal attention: the IAUnet video block."""
from . import iau  # noqa: F401
