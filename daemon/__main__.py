"""``python -m daemon``: the `satchel` command, for the login service's absolute argv."""

import sys

from daemon.cli import main

# Guarded: worker processes (anyio.to_process) load the parent's main module again, as
# __mp_main__; unguarded, each would run the CLI and die, and extraction and feed parsing would
# be left without their processes.
if __name__ == "__main__":
    sys.exit(main())
