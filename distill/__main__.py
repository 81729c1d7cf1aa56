"""``python -m distill`` == ``pathbench distill``."""

import sys

from distill.cli import main

sys.exit(main())
