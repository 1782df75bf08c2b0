"""Category-based attention: OCR (object-contextual representations)."""
from . import ocr  # noqa: F401
