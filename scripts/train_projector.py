#!/usr/bin/env python
"""Train a Co-Settle projector on any backend.

``python scripts/train_projector.py ...`` is the console command ``cosettle-train ...``; the code is ``cosettle.commands.train_projector``.
"""
from _entry import run  # scripts/_entry.py: needs the project installed (pip install -e .)

if __name__ == "__main__":
    run("cosettle.commands.train_projector")
