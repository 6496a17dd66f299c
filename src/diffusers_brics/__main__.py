"""``python -m diffusers_brics``: the `brics` command line."""

from .cli import console_main

console_main()
