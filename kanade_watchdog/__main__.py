"""`python -m kanade_watchdog` is the `kanade-watchdog` command."""

import sys

from .cli import main

sys.exit(main())
