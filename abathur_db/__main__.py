"""Run the operator's tool: ``python -m abathur_db [--db PATH] COMMAND`` (see abathur_db.cli)."""

import os
import sys

from abathur_db.cli import main

if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        # The reader went away (`... | head`): the output is no longer wanted. Point
        # stdout at /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
