"""``python -m daemon``: the `satchel` command, for the login service's absolute argv."""

import sys

from daemon.cli import main

sys.exit(main())
