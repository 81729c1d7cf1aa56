"""``python -m pathbench`` runs the command-line interface."""

import sys

from pathbench.cli import main

sys.exit(main())
