"""``python -m cellweave`` (also what ``torchrun -m cellweave`` runs)."""

import sys

from .cli import main

sys.exit(main())
