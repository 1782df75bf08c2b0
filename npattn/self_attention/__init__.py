"""Self-attention and beyond: Non-local, DANet, ANN (APNB / AFNB), CCNet, GCNet; after the survey: External
Attention, CoTNet's Contextual Transformer block."""
from . import ann, ccnet, cot, danet, external, gcnet, non_local  # noqa: F401
