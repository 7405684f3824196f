"""`python -m rnnlab ...` is the `rnnlab` command; torchrun starts it so: `torchrun ... -m rnnlab train`."""

import sys

from .cli import program

sys.exit(program())
