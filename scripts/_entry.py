"""Shared start of the script forms of the console commands (``python scripts/track.py`` = ``cosettle-track``).

Python puts this folder first on the path when it runs a script here, so the scripts import this module
without any path manipulation; the command's own code comes from the installed packages."""
from __future__ import annotations

import importlib
import sys


def run(module: str) -> None:
    """Run ``module.main()`` and exit with its status; one error line (exit 2) when the project is not
    installed (``ModuleNotFoundError`` for it or for one of its dependencies)."""
    try:
        main = importlib.import_module(module).main
    except ModuleNotFoundError as err:  # a checkout without `pip install -e .`
        print(f"error: cannot import {err.name} -- install the project first: pip install -e . (in the checkout)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(main())
