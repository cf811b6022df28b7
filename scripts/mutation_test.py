#!/usr/bin/env python
"""Mutation testing of the rule modules with mutmut 3 (not part of CI: minutes per module); prints JSON.

    python scripts/mutation_test.py --work runs/mutation                       # all five modules
    python scripts/mutation_test.py --work runs/mutation --modules tracker/fusion.py,cosettle/io/masks.py
    python scripts/mutation_test.py --repo ../main-checkout --work runs/mutation_main   # another checkout's tests
    python scripts/mutation_test.py --work runs/mutation_fs --modules tracker/fusion.py \
        --mutants 'tracker.fusion.x_fuse_step__mutmut_*'       # one function's mutants only (fnmatch patterns)

Each module is mutated in its own scratch copy of ``--repo`` (the packages, tests/ and pyproject.toml; never
the checkout itself), and each mutant is tested only with the test files that cover that module (``MODULES``:
a whole-suite run per mutant would take days on 2 cores). mutmut runs only the tests that reach the mutated
function. Per module the JSON gives the mutants, how many the tests killed, how many survived (a test
reached the code and still passed) or had no test reaching them, the surviving share ((survived + no
tests) / mutants) and each survivor's diff. A module whose ``<work>/<module>.json`` exists is not run again
(delete it to re-measure), so a killed run resumes. Needs ``pip install mutmut`` (3.x) and ../shared.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("mutation_test")

# module -> the pytest arguments that select the tests covering it (fast ones: the end-to-end tracker
# fit of test_flow_guided.py trains DINO-Tracker, ~20 s per mutant, and is left out)
MODULES = {
    "tracker/fusion.py": ["tests/test_flow_guided.py", "tests/test_fusion_survivors.py", "tests/test_fusion_states.py",
                          "tests/test_fusion_head_weight.py", "-k", "not end_to_end"],
    "cosettle/io/masks.py": ["tests/test_mask_reader.py"],
    "tracker/eta.py": ["tests/test_eta.py"],
    "badja_eval/metrics.py": ["tests/test_eval_metrics.py"],
    "cosettle/losses.py": ["tests/test_cosettle_losses.py"],
}
PACKAGES = ("cosettle", "tracker", "badja_eval")
KILLED, SURVIVED, NO_TESTS = {1, 3}, {0}, {5, 33}


def scratch_copy(repo: Path, dest: Path, module: str, tests: list[str],
                 timeout_multiplier: float | None = None) -> None:
    """The packages, tests and pyproject of ``repo`` in ``dest`` with a setup.cfg that points mutmut at
    ``module`` only (the other packages are copied unmutated so that nothing is imported from elsewhere)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "mutants")
    for name in (*PACKAGES, "tests"):
        shutil.copytree(repo / name, dest / name, ignore=ignore)
    shutil.copy2(repo / "pyproject.toml", dest / "pyproject.toml")
    lines = ["[mutmut]", "source_paths =", *(f"    {p}" for p in PACKAGES), f"only_mutate = {module}",
             "pytest_add_cli_args_test_selection =", *(f"    {a}" for a in tests),
             "pytest_add_cli_args =", "    -p", "    no:cacheprovider", "process_isolation = forkserver",
             *([f"timeout_multiplier = {timeout_multiplier}"] if timeout_multiplier else []), ""]
    (dest / "setup.cfg").write_text("\n".join(lines))


def read_results(work: Path, module: str) -> dict:
    """The exit code of every mutant from mutmut's ``.meta`` file of the module."""
    meta = json.loads((work / "mutants" / (module + ".meta")).read_text())
    return meta["exit_code_by_key"]


def mutant_diff(work: Path, name: str, env: dict) -> str:
    p = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, env=env, capture_output=True,
                       text=True, timeout=120)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(("-", "+")) and not ln.startswith(("---", "+++"))]
    return "\n".join(lines)


def run_module(repo: Path, work_root: Path, module: str, children: int, timeout: float,
               patterns: list[str] | None = None, timeout_multiplier: float | None = None) -> dict:
    slug = module.replace("/", "_").removesuffix(".py")
    done = work_root / f"{slug}.json"
    if done.exists():
        log.info("%s: already measured (%s)", module, done)
        return json.loads(done.read_text())
    work = work_root / slug
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    scratch_copy(repo, work, module, MODULES[module], timeout_multiplier)
    env = dict(os.environ, COSETTLE_OFFLINE="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               OMP_WAIT_POLICY="PASSIVE", COSETTLE_SHARED=os.environ.get("COSETTLE_SHARED", str(repo.parent / "shared")))
    env.pop("PYTHONPATH", None)  # mutmut puts its mutants/ copy first on the path itself
    t0 = time.perf_counter()
    with open(work / "mutmut.log", "w") as fh:
        p = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *(patterns or [])],
                           cwd=work,
                           env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"mutmut run on {module} exited {p.returncode}; see {work / 'mutmut.log'}")
    codes = read_results(work, module)
    if patterns:  # mutmut's .meta lists every mutant of the module; those not run have no exit code
        codes = {k: v for k, v in codes.items() if any(fnmatch.fnmatch(k, pat) for pat in patterns)}
    killed = sorted(k for k, v in codes.items() if v in KILLED)
    survived = sorted(k for k, v in codes.items() if v in SURVIVED)
    untested = sorted(k for k, v in codes.items() if v in NO_TESTS)
    other = {k: v for k, v in codes.items() if v not in KILLED | SURVIVED | NO_TESTS}
    out = {"module": module, "tests": " ".join(MODULES[module]), "mutant_patterns": patterns or None,
           "mutants": len(codes), "killed": len(killed),
           "survived": len(survived), "no_tests": len(untested), "other": other,
           "surviving_share": round((len(survived) + len(untested)) / max(len(codes), 1), 4),
           "seconds": round(seconds, 1),
           "survivors": {k: mutant_diff(work, k, env) for k in survived + untested}}
    done.write_text(json.dumps(out, indent=1))
    log.info("%s: %d mutants, %d killed, %d survived, %d no tests, %.0f s", module, out["mutants"],
             out["killed"], out["survived"], out["no_tests"], seconds)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repo", type=Path, default=REPO, help="checkout whose code and tests are measured")
    p.add_argument("--work", type=Path, required=True, help="scratch folder (e.g. runs/mutation), one per measurement")
    p.add_argument("--modules", default=",".join(MODULES), help="comma list of modules (keys of MODULES)")
    p.add_argument("--max-children", type=int, default=1, help="mutants tested in parallel")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per module")
    p.add_argument("--timeout-multiplier", type=float, default=None,
                   help="mutmut's per-mutant wall limit, (estimated test time + 1 s) x this (mutmut's default 15); "
                        "on loaded shared cores at low priority 15 turns slow tests into spurious timeouts (exit -24)")
    p.add_argument("--mutants", action="append", default=None, metavar="PATTERN",
                   help="only mutants whose name matches (fnmatch, repeatable), e.g. "
                        "'tracker.fusion.x_fuse_step__mutmut_*'; the JSON then counts only those")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    mods = [m for m in args.modules.split(",") if m]
    bad = [m for m in mods if m not in MODULES]
    if bad:
        print(f"error: unknown module(s) {', '.join(bad)} -- choose from {', '.join(MODULES)}", file=sys.stderr)
        return 2
    repo = args.repo.resolve()
    work = args.work.resolve()
    if work == repo or any(work == repo / name or repo / name in work.parents for name in (*PACKAGES, "tests")):
        print(f"error: --work {work} is the checkout or inside its code -- give a scratch folder (e.g. runs/mutation)",
              file=sys.stderr)
        return 2
    work.mkdir(parents=True, exist_ok=True)
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout
    results = {m: run_module(repo, work, m, args.max_children, args.timeout, args.mutants,
                          args.timeout_multiplier) for m in mods}
    summary = {m: {k: r[k] for k in ("mutants", "killed", "survived", "no_tests", "surviving_share")}
               for m, r in results.items()}
    print(json.dumps({"repo_git": sha.strip(), "mutmut": _version(), "summary": summary, "modules": results},
                     indent=1))
    return 0


def _version() -> str:
    from importlib.metadata import version  # deferred: only for the report line

    return version("mutmut")


if __name__ == "__main__":
    sys.exit(main())
