#!/usr/bin/env python
"""Choose davis-vos propagation settings on the tune half, report the choice on the held-out half.

``python scripts/vos_select.py --backend dsift --backend-args resolution=240 --topk 1,5,10``; the code is
``badja_eval.vos_select`` (see its docstring and docs/evaluation.md).
"""
from _entry import run  # scripts/_entry.py: needs the project installed (pip install -e .)

if __name__ == "__main__":
    run("badja_eval.vos_select")
