"""``python -m threed ...``: the same command line as ``threed ...``."""

import sys

from threed.cli import main

sys.exit(main())
