"""The ``transformer`` family: the attention core (scaled dot-product attention with every major library's
conventions) and the vision-transformer attention that followed the survey (windowed, neighborhood,
deformable, ...). One module per mechanism; importing this package registers them."""
