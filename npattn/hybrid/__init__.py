"""Hybrid channel & spatial attention: CBAM, BAM, scSE, A²-Nets double attention."""
from . import a2, bam, cbam, scse  # noqa: F401
