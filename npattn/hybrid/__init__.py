"""Hybrid channel & spatial attention: CBAM, BAM, scSE, A²-Nets double attention; after the survey: SimAM,
Triplet Attention, Polarized Self-Attention, SA-Net Shuffle Attention."""
from . import a2, bam, cbam, psa, scse, shuffle_attention, simam, triplet  # noqa: F401
