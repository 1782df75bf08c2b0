"""Self-attention and beyond: Non-local, DANet, ANN (APNB / AFNB), CCNet, GCNet."""
from . import ann, ccnet, danet, gcnet, non_local  # noqa: F401
