"""Channel & spatial attention: SE, Gather-Excite, Residual Attention, SK, SPA, ECA."""
from . import se  # noqa: F401
