"""Channel & spatial attention: SE, Gather-Excite, Residual Attention, SK, SPA, ECA."""
from . import eca, gather_excite, residual_attention, se, sk, spa  # noqa: F401
