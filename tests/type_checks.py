"""The test suite's run-time type checks (installed by tests/conftest.py) and how tests of bad input live with them.

``checker``: beartype with PEP 484's numeric tower (an ``int`` passes where ``float`` is annotated, as a type
checker allows), wrapped around every annotated function of threed by jaxtyping's import hook.

A value outside a ``Literal`` or of the wrong dtype is refused by the checker before the function's own check
can word its error, so tests of those errors accept either refusal (:func:`refused`); a user without the
checks gets the function's own.
"""

import contextlib
import re

import pytest
from beartype import BeartypeConf, beartype

checker = beartype(conf=BeartypeConf(is_pep484_tower=True))


@contextlib.contextmanager
def refused(match: str):
    """The block raises the function's own ValueError matching ``match``, or the type checker's TypeError."""
    with pytest.raises((ValueError, TypeError)) as info:
        yield
    if not isinstance(info.value, TypeError):
        assert re.search(match, str(info.value)), (match, str(info.value))
