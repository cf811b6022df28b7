#!/usr/bin/env python
"""Extract a video's features with any backend (and write a PCA preview).

``python scripts/extract_features.py ...`` is the console command ``cosettle-features ...``; the code is ``cosettle.commands.extract_features``.
"""
from _entry import run  # scripts/_entry.py: needs the project installed (pip install -e .)

if __name__ == "__main__":
    run("cosettle.commands.extract_features")
