"""`python -m mailplan` runs the `mailplan` command."""

import sys

from mailplan.cli import main

sys.exit(main())
