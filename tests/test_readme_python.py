"""The README's Python block runs exactly as printed (issue 28: it used ``video`` and ``queries`` without saying
where they come from, and the package exported no video reader). The block is cut out of README.md, written to a
file and run in a fresh interpreter from a folder holding the quick start's demo clip; only the preset is made
tiny (4 training iterations), from outside the block, so that the text a user copies is the text tested."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from cosettle.demo import make_demo_clip

REPO = Path(__file__).resolve().parents[1]

# run before the block: the same preset, shortened (the block's own text is never edited)
TINY = """import runpy, sys, tracker
full = tracker.preset
tracker.preset = lambda name, **kw: full(name, **{**dict(iterations=4, cyc_after=2, rbb_after=2,
                                                       checkpoint_every=2, batch_size=64, cl_points=32,
                                                       cyc_points=32), **kw})
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def readme_python_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Python\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_block_runs_as_printed(tmp_path):
    block = readme_python_block()
    assert "read_video(" in block and "from cosettle import" in block and "queries = " in block
    make_demo_clip(tmp_path / "outputs" / "demo" / "demo")     # what `python scripts/track.py` leaves behind
    (tmp_path / "readme_block.py").write_text(block)
    (tmp_path / "tiny.py").write_text(TINY)
    env = dict(os.environ, PYTHONPATH=str(REPO), COSETTLE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "tiny.py", "readme_block.py"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    # it prints tracks: two points' last-frame positions, twice (pure DINO-Tracker, then the default)
    rows = re.findall(r"\[\s*(-?\d+\.?\d*)\s+(-?\d+\.?\d*)\s*\]", p.stdout)
    assert len(rows) == 4, p.stdout
    assert all(0 <= float(x) <= 255 and 0 <= float(y) <= 191 for x, y in rows)
    # the API logs its stages and its estimate as the CLI does (logging.basicConfig in the block shows them)
    assert "estimated time about" in p.stderr and "stage frames" in p.stderr and "overall:" in p.stderr
    # the second tracker (dino-flow) checks flow first: both demo points keep consistent flow on the foreground,
    # so it says so and does not train (tracker/fusion_gate.py); its positions are then flow's
    assert "no training needed" in p.stderr


def test_both_import_orders_make_idle_openmp_threads_sleep():
    """``from cosettle import ...`` first (the README's order) imported torch before ``tracker`` could set
    OMP_WAIT_POLICY, so the API's idle OpenMP threads spun (a fit 2x slower than the CLI's on 2 shared cores)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO)
    for first in ("cosettle", "tracker", "badja_eval.davis_vos"):  # the last imports torch at its top
        code = f"import os, {first}, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == "PASSIVE", (first, out.stderr[-2000:])
    env["OMP_WAIT_POLICY"] = "ACTIVE"  # a user's own setting wins
    out = subprocess.run([sys.executable, "-c", "import os, cosettle; print(os.environ['OMP_WAIT_POLICY'])"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ACTIVE"


def test_torch_imported_first_gets_a_warning_with_the_fix():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", "import torch, cosettle"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "OMP_WAIT_POLICY=PASSIVE" in out.stderr and "import cosettle" in out.stderr


TORCH_LOADERS = {"torch", "torchvision", "timm", "kornia"}  # each loads torch, and with it OpenMP, at import
PROJECT = {"cosettle", "tracker", "badja_eval"}


def _top_level_import_order(path: Path) -> list[str]:
    """The root package of each module-level import, in file order (imports inside functions are deferred)."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module.split(".")[0])
    return names


def test_no_script_loads_torch_before_the_project_sets_the_openmp_wait_policy():
    """scripts/bench_vos.py imported torch above cosettle, so its timings ran with spinning idle OpenMP threads (and
    every run printed the warning above). A script may defer torch into functions or import the project first."""
    late = []
    for script in sorted((REPO / "scripts").glob("*.py")):
        order = _top_level_import_order(script)
        first_project = next((i for i, n in enumerate(order) if n in PROJECT), len(order))
        loaders = [n for n in order[:first_project] if n in TORCH_LOADERS]
        if loaders:
            late.append(f"{script.name}: {loaders[0]} before the project")
    assert not late, late


def test_the_import_order_check_sees_torch_first(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nimport torch\nfrom cosettle.cli import ArgumentParser\n")
    good = tmp_path / "good.py"
    good.write_text("import os\nfrom cosettle.cli import ArgumentParser\nimport torch\n")
    assert _top_level_import_order(bad) == ["os", "torch", "cosettle"]
    assert _top_level_import_order(good) == ["os", "cosettle", "torch"]
