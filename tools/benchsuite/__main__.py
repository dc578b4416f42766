"""``python -m tools.benchsuite``: run the full suite (see run.py)."""

import sys

from .run import main

sys.exit(main())
