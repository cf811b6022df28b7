#!/usr/bin/env python
"""Write docs/results.md from the evaluator's output folders (``--run``: run the missing evaluations first).

    python scripts/make_results.py --runs-root runs [--run | --rerun] [--data-root ../shared/data]

The tables, their commands and folders are listed in docs/results.yaml; the logic is
``badja_eval/results_page.py``.
"""
from badja_eval.results_page import main

if __name__ == "__main__":
    main()
