"""Run the operator's tool: ``python -m abathur_db [--db PATH] COMMAND`` (see abathur_db.cli)."""

import sys

from abathur_db.cli import main

if __name__ == "__main__":
    sys.exit(main())
