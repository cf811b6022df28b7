#!/usr/bin/env python
"""Extract a video's features with any backend (and write a PCA preview).

``python scripts/extract_features.py ...`` is the console command ``cosettle-features ...``; the code lives in
``cosettle/commands/extract_features.py``.
Both need the project installed (``pip install -e .``), which puts the packages on the path: no path hacks.
"""
import sys

try:
    from cosettle.commands.extract_features import main
except ModuleNotFoundError as err:  # a checkout without `pip install -e .`
    print(f"error: cannot import {err.name} -- install the project first: pip install -e . (in the checkout)",
          file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main())
