"""`python -m transfer`: the same as the `transfer` command."""

import sys

from transfer.cli import main

sys.exit(main())
