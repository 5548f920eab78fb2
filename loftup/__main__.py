"""`python -m loftup ...` (used by torchrun: `torchrun --nproc-per-node 2 -m loftup train ...`)."""

from .cli import console

console()
