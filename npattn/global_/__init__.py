"""Global attention: RGA (relation-aware global attention)."""
from . import rga  # noqa: F401
