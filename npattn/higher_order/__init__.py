"""Higher-order attention: GSoP-Net."""
from . import gsop  # noqa: F401
