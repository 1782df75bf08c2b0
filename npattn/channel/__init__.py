"""Channel & spatial attention: SE, Gather-Excite, Residual Attention, SK, SPA, ECA; after the survey:
Coordinate Attention, SGE, GCT, SRM, ResNeSt Split-Attention."""
from . import coord, eca, gather_excite, gct, residual_attention, se, sge, sk, spa, split_attention, srm  # noqa: F401
