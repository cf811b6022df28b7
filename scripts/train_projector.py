#!/usr/bin/env python
"""Train a Co-Settle projector on any backend.

``python scripts/train_projector.py ...`` is the console command ``cosettle-train ...``; the code lives in
``cosettle/commands/train_projector.py``.
Both need the project installed (``pip install -e .``), which puts the packages on the path: no path hacks.
"""
import sys

try:
    from cosettle.commands.train_projector import main
except ModuleNotFoundError as err:  # a checkout without `pip install -e .`
    print(f"error: cannot import {err.name} -- install the project first: pip install -e . (in the checkout)",
          file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main())
