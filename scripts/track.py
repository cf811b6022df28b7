#!/usr/bin/env python
"""Track points through a video (DINO-Tracker + flow by default, or a baseline) on any feature backend.

``python scripts/track.py ...`` is the console command ``cosettle-track ...``; the code is ``tracker.commands.track``.
"""
from _entry import run  # scripts/_entry.py: needs the project installed (pip install -e .)

if __name__ == "__main__":
    run("tracker.commands.track")
