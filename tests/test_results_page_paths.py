"""The results page prints every command as a reader types it in the checkout (issue 28): the evaluator's
recorded command named the absolute folders of the machine it ran on (``--data-root /work/shared/data
--out /work/runs/...``); the page shows ``--data-root ../shared/data --out runs/<the table's folder>``,
also for a folder without a recorded command, and regenerating keeps them so."""
from __future__ import annotations

import re
import shlex

from badja_eval.results_page import REPO_ROOT, checkout_args, relative_paths
from cosettle.provenance import git_sha
from tests.test_make_results import _folder, _info, _make, _manifest, _rows, _table


def test_commands_on_the_page_are_relative_to_the_checkout(tmp_path):
    head = git_sha()
    data = (REPO_ROOT.parent / "shared" / "data").resolve()      # where the project's data lies, absolute
    root = tmp_path / "machine" / "runs"                          # the measuring machine's absolute folders
    for s in (0, 1):
        recorded = (f"{REPO_ROOT / 'badja_eval' / 'run.py'} --data-root {data} --sequences cows --trackers dino "
                    f"--tracker-args dino.seed={s} --out {tmp_path / 'elsewhere' / f'final_s{s}'} --quiet")
        _folder(root, f"default_s{s}", _rows({("cows", "flow"): (75.0, 19.0)}), _info(head, command=recorded))
    _folder(root, "bare", _rows({("cows", "flow"): (75.0, 19.0)}), _info(head, command=None))
    man = _manifest(tmp_path / "results.yaml", [
        {"id": "seeded", "title": "Seeded", "args": "--sequences cows --trackers dino --tracker-args dino.seed={seed}",
         "out": "default_s{seed}", "seeds": [0, 1], "columns": ["delta_seg"]},
        {"id": "bare", "title": "Bare", "args": "--sequences cows --trackers flow", "out": "bare",
         "columns": ["delta_seg"]}])
    out = tmp_path / "results.md"
    assert _make(["--manifest", man, "--runs-root", root, "--out", out, "--data-root", data]) == 0
    page = out.read_text()
    seeded = _table(page, "Seeded")
    assert ("python badja_eval/run.py --data-root ../shared/data --sequences cows --trackers dino "
            "--tracker-args dino.seed=1 --out runs/default_s1 --quiet") in seeded
    bare = _table(page, "Bare")
    assert "python badja_eval/run.py --sequences cows --trackers flow --data-root ../shared/data --out runs/bare" in bare
    commands = [ln for ln in page.splitlines() if ln.startswith("python ")]
    assert len(commands) == 3
    for ln in commands:  # no absolute folder of any machine on the page
        assert not [t for t in shlex.split(ln.split("  (")[0]) if t.startswith("/")], ln
        assert not re.search(r"(/work/|/tmp/|/home/|/root/)", ln), ln


def test_projector_paths_in_arguments_and_backend_labels_are_relative_to_the_checkout():
    """A davis-vos run records its projectors as absolute paths (``--backends dsift+cosettle:/x/runs/p``), and its
    table rows carry them as backend labels: both reach the page relative to the checkout."""
    proj = REPO_ROOT.parent / "runs" / "vos" / "p.safetensors"      # beside the checkout: ../runs/vos/...
    inside = REPO_ROOT / "runs" / "q.safetensors"                   # inside it: runs/...
    assert relative_paths(f"dsift+cosettle:{proj}") == "dsift+cosettle:../runs/vos/p.safetensors"
    assert relative_paths(f"a,b+cosettle:{inside},c") == "a,b+cosettle:runs/q.safetensors,c"
    assert relative_paths("dsift 1/2 and a/b") == "dsift 1/2 and a/b"      # not absolute: untouched

    class Spec:
        out = "vos_{seed}"
    args = checkout_args(["--backends", f"dsift,dsift+cosettle:{proj}", "--out", "/abs/x"], Spec, 0)
    assert args == ["--backends", "dsift,dsift+cosettle:../runs/vos/p.safetensors", "--out", "runs/vos_0"]
