#!/usr/bin/env python
"""Track points through a video (DINO-Tracker + flow by default, or a baseline) on any feature backend.

``python scripts/track.py ...`` is the console command ``cosettle-track ...``; the code lives in
``tracker/commands/track.py``.
Both need the project installed (``pip install -e .``), which puts the packages on the path: no path hacks.
"""
import sys

try:
    from tracker.commands.track import main
except ModuleNotFoundError as err:  # a checkout without `pip install -e .`
    print(f"error: cannot import {err.name} -- install the project first: pip install -e . (in the checkout)",
          file=sys.stderr)
    sys.exit(2)

if __name__ == "__main__":
    sys.exit(main())
