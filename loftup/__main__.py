"""`python -m loftup ...` (used by torchrun: `torchrun --nproc-per-node 2 -m loftup train ...`)."""

import sys

from .cli import main

sys.exit(main())
