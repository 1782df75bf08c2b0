"""Origins of visual attention: the classic models (Itti-Koch saliency, RAM, RA-CNN, Bahdanau attention,
Show-Attend-Tell, the Transformer)."""
from . import itti, racnn, ram  # noqa: F401
from . import bahdanau, show_attend_tell, transformer  # noqa: F401
