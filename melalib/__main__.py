"""`python -m melalib ...` (also under `torchrun -m melalib train ...`)."""

import sys

from .cli import main

sys.exit(main())
