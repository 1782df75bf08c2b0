"""Category-based attention: OCR (object-contextual representations)."""
from . import blocks, ocr  # noqa: F401
