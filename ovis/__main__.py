"""``python -m ovis``: the same as the ``ovis`` console script."""

import sys

from ovis.cli import main

sys.exit(main())
