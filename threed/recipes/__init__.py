"""The shipped recipes: one YAML file per recipe in this folder (package data: a wheel carries them).

:mod:`threed.recipe` reads them; the names below are the defaults of ``threed generate`` and
:func:`threed.generate`, kept here, free of imports, so that the command line's option help can name them
without loading torch.
"""

DEFAULT_RECIPE = "quickstart"
"""The recipe of ``threed generate`` (and ``threed batch``) when no ``--recipe`` is given."""
DEFAULT_IMAGE_RECIPE = "quickstart-image"
"""The recipe of ``threed generate --image`` when no ``--recipe`` is given."""
DEFAULT_TEXTURE_RECIPE = "texture"
"""The recipe of ``threed texture`` when no ``--recipe`` is given."""
