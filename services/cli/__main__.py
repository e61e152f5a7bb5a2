"""`python -m services.cli`: the `dim` command (how `dim up` and the tests start processes)."""

import sys

from services.cli import main

sys.exit(main())
