"""The ``transformer`` family: the attention core (scaled dot-product attention with every major library's
conventions) and the vision-transformer attention that followed the survey (windowed, neighborhood,
deformable, ...). One module per mechanism; importing this package registers them."""

from . import attention_pool, axial, botnet, mha_gqa, mobilevit, msdeform, nat, outlook, sdpa, swin, swin_v2, vit  # noqa: F401
