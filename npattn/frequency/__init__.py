"""Frequency-domain attention: FcaNet."""
from . import fca  # noqa: F401
