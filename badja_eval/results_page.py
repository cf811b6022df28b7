"""docs/results.md, generated: result tables read from the evaluator's output folders, each stamped with
the git SHA, versions, thread count, date and command that made it.

    python scripts/make_results.py                     # read runs/<folder>/results.json + run_info.json
    python scripts/make_results.py --run               # first run the evaluations whose folder is missing
    python scripts/make_results.py --rerun             # run every evaluation again (old folders kept aside)
    python scripts/make_results.py --runs-root /work/runs/results --data-root ../shared/data

Why generated: hand-typed tables drift (the flow baseline moved with OpenCV 5.1.0 and the README kept the
old numbers, with no versions beside them). Here every table carries the provenance its folders recorded,
a version a folder did not record says "not recorded", and a table made at another commit than the one
the page was generated at says so -- "current" only when no code under ``cosettle/``, ``tracker/`` or
``badja_eval/`` changed in between -- so a reader can tell stale numbers from current ones.

The manifest (``docs/results.yaml``) lists the tables: ``id``, ``title``, ``args`` (``badja_eval/run.py``
arguments without ``--out``), ``out`` (the output folder relative to ``--runs-root``), optional ``seeds``
(``{seed}`` in ``args``/``out`` expands to one folder per seed; the table then shows mean ± spread),
optional ``env`` (e.g. ``OMP_NUM_THREADS: 1``), ``rows`` (``sequence``/``tracker``/``backend`` lists:
which rows, in which order), ``columns`` (metric names) and an optional ``note``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cosettle.errors import UserError, cli_entry
from cosettle.io.atomic import write_text
from cosettle.provenance import REPO_ROOT, git_sha

DEFAULT_MANIFEST = REPO_ROOT / "docs" / "results.yaml"
DEFAULT_PAGE = REPO_ROOT / "docs" / "results.md"
# folders whose change can move a number; a table made at an older commit with none of these changed since
# is still current (docs-only commits do not make numbers stale)
CODE_PATHS = ("cosettle", "tracker", "badja_eval", "pyproject.toml")
# the provenance stamped beside every table: (label, run_info key)
STAMP_FIELDS = (("torch", "torch"), ("timm", "timm"), ("OpenCV", "opencv"), ("numpy", "numpy"),
                ("torch threads", "torch_threads"))
NOT_RECORDED = "not recorded"
HEADERS = {"delta_seg": "δseg", "delta_3px": "δ3px", "false_visible": "wrong-visible ↓", "visible": "visible",
           "average_jaccard": "AJ", "average_pts_within_thresh": "δavg", "occlusion_accuracy": "OA",
           "in_mask": "in-mask", "in_mask_all": "in-mask (all)", "jump": "jump ↓", "count": "entries",
           "jf": "J&F", "j": "J", "f": "F", "gain_jf": "ΔJ&F", "gain_j": "ΔJ", "gain_f": "ΔF"}
ROW_KEYS = ("sequence", "tracker", "backend")
TRACKER_CACHE_DIR = "tracker_cache"  # in every output folder --run / --rerun makes
TRACKER_CACHE_ENV = "COSETTLE_TRACKER_CACHE"  # read by tracker/dino/tracker.py (not imported: torch, slow)


@dataclass
class TableSpec:
    id: str
    title: str
    args: str
    out: str
    columns: list[str]
    rows: dict[str, list[str]] = field(default_factory=dict)
    seeds: list[Any] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def folders(self, runs_root: Path) -> list[Path]:
        return [runs_root / self.out.format(seed=s) for s in (self.seeds or [None])]

    def argv(self, seed: Any) -> list[str]:
        return shlex.split(self.args.format(seed=seed))


def load_manifest(path: str | os.PathLike) -> tuple[dict, list[TableSpec]]:
    """-> (page settings, table specs); one-line UserError on a missing file or a malformed table."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise UserError(f"cannot read the manifest {path}: {err.strerror}", "pass --manifest FILE") from None
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML ({err.__class__.__name__})", "fix the file") from None
    specs = []
    known = set(TableSpec.__dataclass_fields__)
    for i, t in enumerate(doc.get("tables") or []):
        missing = [k for k in ("id", "title", "args", "out", "columns") if k not in (t or {})]
        unknown = sorted(set(t or {}) - known)
        if missing or unknown:
            what = f"lacks {', '.join(missing)}" if missing else f"has unknown keys {', '.join(unknown)}"
            raise UserError(f"table {i + 1} of {path} {what}", f"keys: {', '.join(sorted(known))}")
        bad = sorted(set(t.get("rows") or {}) - set(ROW_KEYS))
        if bad:
            raise UserError(f"table {t['id']}: rows may select {', '.join(ROW_KEYS)}, not {', '.join(bad)}",
                            "fix docs/results.yaml")
        specs.append(TableSpec(**{**t, "env": {k: str(v) for k, v in (t.get("env") or {}).items()}}))
    if not specs:
        raise UserError(f"{path} lists no tables", "add a 'tables:' list")
    return {k: v for k, v in doc.items() if k != "tables"}, specs


# ------------------------------------------------------------------------------------ running
def eval_command(spec: TableSpec, seed: Any, folder: Path, data_root: str | None) -> list[str]:
    argv = spec.argv(seed)
    benchmark = argv[argv.index("--benchmark") + 1] if "--benchmark" in argv else "badja"
    if data_root and "--data-root" not in argv and benchmark in ("badja", "davis-masks", "davis-vos"):
        argv += ["--data-root", str(data_root)]
    return argv + ["--out", str(folder), "--quiet"]


def tracker_cache(folder: Path) -> Path:
    """The DINO trackers' work folders of one output folder's evaluation (``$COSETTLE_TRACKER_CACHE`` of its
    subprocess): fits are trained by the code that runs the evaluation, never taken from the shared
    ``$COSETTLE_CACHE/tracker`` where older code left fits with the same training key (the 74e8212 BADJA
    rows were scored from such fits)."""
    return folder / TRACKER_CACHE_DIR


def run_evaluation(spec: TableSpec, seed: Any, folder: Path, data_root: str | None, rerun: bool) -> None:
    """Run ``badja_eval/run.py`` for one folder, in a subprocess (its run_info.json then records the
    evaluator's own command line, and its thread settings come from ``env``), with its own tracker cache
    (``tracker_cache``). ``rerun`` moves an existing folder aside first, its tracker cache with it: the
    evaluator resumes from its caches, so running into the old folder would reuse every old result and fit
    instead of measuring again."""
    if rerun and folder.exists():
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        aside = folder.with_name(f"{folder.name}.old-{stamp}")
        folder.rename(aside)
        print(f"moved the previous {folder} to {aside}", file=sys.stderr)
    cmd = [sys.executable, "-m", "badja_eval.run", *eval_command(spec, seed, folder, data_root)]
    print(f"[{spec.id}] {shlex.join(cmd[1:])}", file=sys.stderr)
    env = {**os.environ, **spec.env, TRACKER_CACHE_ENV: str(tracker_cache(folder))}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env)
    if proc.returncode != 0 or not (folder / "results.json").is_file():
        raise UserError(f"table {spec.id}: the evaluation exited with status {proc.returncode} and wrote no "
                        f"{folder / 'results.json'}", "see its messages above; re-run to resume")


# ------------------------------------------------------------------------------------ reading
def read_folder(folder: Path) -> tuple[dict, dict]:
    """-> (results.json, run_info.json as a dict; {} when the folder has none)."""
    try:
        results = json.loads((folder / "results.json").read_text())
    except OSError:
        raise UserError(f"{folder} has no results.json",
                        "run the evaluations with --run, or point --runs-root at the folder holding them") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{folder / 'results.json'} is not valid JSON ({err.msg})", "re-run with --rerun") from None
    try:
        info = json.loads((folder / "run_info.json").read_text())
    except (OSError, json.JSONDecodeError):
        info = {}
    return results, info


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def aggregate(spec: TableSpec, results: list[dict], labels: list[str]) -> list[dict]:
    """Rows selected by ``spec.rows`` (in its order); each metric -> list of values, one per folder."""
    per_folder = []
    for res, label in zip(results, labels):
        per_folder.append({tuple(r.get(k, "-") for k in ROW_KEYS): r for r in res.get("rows", [])})
    keys = list(per_folder[0])
    wants = {k: [str(w) for w in spec.rows[k]] for k in ROW_KEYS if spec.rows.get(k)}
    keys = [key for key in keys if all(key[ROW_KEYS.index(k)] in w for k, w in wants.items())]
    # sequence outermost, then tracker, then backend; each in the manifest's order where it lists one,
    # else in the order of results.json
    order = {k: wants.get(k) or list(dict.fromkeys(key[i] for key in keys)) for i, k in enumerate(ROW_KEYS)}
    keys.sort(key=lambda key: tuple(order[k].index(key[i]) for i, k in enumerate(ROW_KEYS)))
    if not keys:
        raise UserError(f"table {spec.id}: no row of {labels[0]} matches rows: {spec.rows}",
                        "fix rows: in docs/results.yaml")
    out = []
    for key in keys:
        row = {"key": key, "values": {}}
        for res_rows, label in zip(per_folder, labels):
            if key not in res_rows:
                raise UserError(f"table {spec.id}: {label} has no row {'/'.join(key)}",
                                "re-run that folder (--rerun) or fix rows: in docs/results.yaml")
            for c in spec.columns:
                row["values"].setdefault(c, []).append(_num(res_rows[key].get(c)))
        out.append(row)
    return out


def fmt_values(vals: list[float], integer: bool = False) -> str:
    """One folder: the value; several (seeds): mean ± sample standard deviation (n − 1). ``integer``
    (entry counts): the value without decimals when every folder has the same."""
    finite = [v for v in vals if not math.isnan(v)]
    if not finite:
        return "–"
    if integer and len(set(vals)) == 1:
        return f"{finite[0]:.0f}"
    if len(vals) == 1:
        return f"{finite[0]:.2f}"
    if len(finite) < len(vals):
        return f"{statistics.mean(finite):.2f} (n={len(finite)})"
    return f"{statistics.mean(finite):.2f} ± {statistics.stdev(finite):.2f}"


def _short(sha: str) -> str:
    return sha[:7] + ("-dirty" if sha.endswith("-dirty") else "")


def code_changed(sha: str, head: str) -> bool | None:
    """Did anything under CODE_PATHS change between ``sha`` and ``head``? None when git cannot tell
    (commit not in this checkout, no git)."""
    base = sha.removesuffix("-dirty")
    try:
        p = subprocess.run(["git", "diff", "--quiet", base, head.removesuffix("-dirty"), "--", *CODE_PATHS],
                           cwd=REPO_ROOT, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return {0: False, 1: True}.get(p.returncode)


def freshness(shas: list[str], head: str) -> str:
    """The stale/current mark beside a table."""
    marks = []
    for sha in dict.fromkeys(shas):
        if sha in ("", "unknown", NOT_RECORDED):
            marks.append("**stale?** the commit was not recorded")
            continue
        dirty = " with uncommitted changes" if sha.endswith("-dirty") else ""
        if sha.removesuffix("-dirty") == head.removesuffix("-dirty"):
            marks.append(f"current: made at this page's commit{dirty}")
            continue
        changed = code_changed(sha, head)
        if changed is False and not dirty:
            marks.append(f"current: made at `{_short(sha)}`, no code changed since (only docs/scripts)")
        elif changed is None:
            marks.append(f"**stale?** made at `{_short(sha)}`{dirty}, a commit this checkout cannot compare")
        else:
            marks.append(f"**stale**: made at `{_short(sha)}`{dirty}, code changed since then "
                         f"(this page: `{_short(head)}`)")
    return "; ".join(marks)


def fit_shas(infos: list[dict]) -> list[str]:
    """The distinct git SHAs that trained the folders' fits (run_info.json ``fit_git``, written since fits record
    their code in fit_info.json), in order; [] when no folder recorded any."""
    out: dict[str, None] = {}
    for info in infos:
        for v in (info.get("fit_git") or {}).values():
            for sha in str(v).split(","):
                out[sha.strip() or NOT_RECORDED] = None
    return list(out)


def _join(values: list) -> str:
    vals = list(dict.fromkeys(NOT_RECORDED if v is None else str(v) for v in values))
    return " / ".join(vals)


_ABS_PATH = re.compile(r"(?<![\w.])/[^\s,:;'\"`|]+")  # an absolute path inside an argument or a table cell


def relative_paths(text: str) -> str:
    """Absolute paths in ``text`` (a projector in ``--backends``, a backend label in a table cell) made relative
    to the checkout, as a reader types them there: ``/x/runs/p.safetensors`` -> ``../runs/p.safetensors``."""
    return _ABS_PATH.sub(lambda m: os.path.relpath(m.group(0), REPO_ROOT), text)


def checkout_args(argv: list[str], spec: TableSpec, seed: Any) -> list[str]:
    """The arguments as a reader types them in the checkout: ``--out`` is the table's folder under ``runs/``
    (what ``make_results.py --runs-root runs`` reads) and an absolute ``--data-root`` is made relative to the
    checkout (``../shared/data``): the absolute folders of the machine a run was made on never reach the page."""
    out = []
    i = 0
    while i < len(argv):
        flag, _, value = argv[i].partition("=")
        if flag in ("--out", "--data-root") and (value or i + 1 < len(argv)):
            if not value:
                i += 1
                value = argv[i]
            if flag == "--out":
                value = "runs/" + spec.out.format(seed=seed)
            elif os.path.isabs(value):
                value = os.path.relpath(value, REPO_ROOT)
            out += [flag, value]
        else:
            out.append(relative_paths(argv[i]))
        i += 1
    return out


def _command(info: dict, spec: TableSpec, seed: Any, folder: Path, data_root: str | None) -> str:
    cmd = info.get("command")
    if not cmd:
        return "python badja_eval/run.py " + \
            shlex.join(checkout_args(eval_command(spec, seed, folder, data_root), spec, seed)) + \
            "  (from the manifest; the folder recorded no command)"
    parts = cmd.split(" ", 1)
    if parts[0].endswith("badja_eval/run.py"):  # absolute path of the -m module or the script
        parts[0] = "badja_eval/run.py"
    args = checkout_args(shlex.split(parts[1]) if len(parts) > 1 else [], spec, seed)
    return "python " + " ".join([parts[0], shlex.join(args)]).rstrip()


def render_table(spec: TableSpec, folders: list[Path], head: str, data_root: str | None) -> str:
    read = [read_folder(f) for f in folders]
    results, infos = [r for r, _ in read], [i for _, i in read]
    labels = [str(f) for f in folders]
    rows = aggregate(spec, results, labels)
    lines = [f"## {spec.title}", ""]
    protocol = results[0].get("protocol")
    if protocol:
        lines += [f"Protocol: {protocol}", ""]
    seeds = f"mean ± s.d. over seeds {', '.join(map(str, spec.seeds))}" if len(folders) > 1 else ""
    shas = [str(i.get("git_sha") or NOT_RECORDED) for i in infos]
    stamp = [f"git `{' / '.join(_short(s) if s != NOT_RECORDED else s for s in dict.fromkeys(shas))}` "
             f"({freshness(shas, head)})"]
    fits = fit_shas(infos)
    if fits:  # the code that trained the DINO fits: older than the run's own when a cached fit was reused
        stamp.append(f"fits trained at git `{' / '.join(_short(s) if s != NOT_RECORDED else s for s in fits)}` "
                     f"({freshness(fits, head)})")
    stamp += [f"{label} {_join([i.get(key) for i in infos])}" for label, key in STAMP_FIELDS]
    dates = sorted({str(i.get("time_utc", NOT_RECORDED)).replace("T", " ").replace("+00:00", " UTC")
                    for i in infos})
    stamp.append(f"date {' / '.join(dates)}")
    lines += ["**Made with** " + " · ".join(stamp) + ".", ""]
    lines.append("```bash")
    for seed, folder, info in zip(spec.seeds or [None], folders, infos):
        lines.append(_command(info, spec, seed, folder, data_root))
    lines += ["```", ""]
    if spec.env:
        lines += ["(`--run` runs these with " + " ".join(f"`{k}={v}`" for k, v in spec.env.items()) + ".)", ""]
    shown = [k for k in ROW_KEYS if len({r["key"][ROW_KEYS.index(k)] for r in rows}) > 1 or k != "backend"]
    head_cells = shown + [HEADERS.get(c, c) for c in spec.columns]
    lines.append("| " + " | ".join(head_cells) + " |")
    lines.append("|" + "---|" * len(head_cells))
    for r in rows:
        cells = [relative_paths(r["key"][ROW_KEYS.index(k)]) for k in shown]
        cells += [fmt_values(r["values"][c], c == "count") for c in spec.columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if seeds:
        lines += [f"Values: {seeds} (sample standard deviation, n − 1; a tracker without a seed shows ± 0.00).",
                  ""]
    if spec.note:
        lines += [spec.note.strip(), ""]
    return "\n".join(lines)


def page_sections(text: str) -> dict[str, str]:
    """An existing page's tables: ``{title: its section, from its "## title" line to the next one}``."""
    out: dict[str, str] = {}
    title, lines = None, []
    for line in text.splitlines() + ["## "]:
        if line.startswith("## "):
            if title is not None:
                out[title] = "\n".join(lines).rstrip() + "\n"
            title, lines = line[3:].strip(), [line]
        elif title is not None:
            lines.append(line)
    return out


def kept_section(section: str, page_sha: str) -> str:
    """A table copied verbatim from the previous page (its run folders are not here), said so under its title:
    its freshness mark is the one it had when that page was generated."""
    first, _, rest = section.partition("\n")
    if rest.lstrip("\n").startswith("*Copied unchanged from"):  # copied before: keep the first page's commit
        return section
    note = (f"*Copied unchanged from the page generated at git `{page_sha}`: its run folders are not under "
            "`--runs-root` here, so its numbers and its freshness mark are as of that page.*")
    return "\n".join([first, "", note, "", rest.lstrip("\n")]).rstrip() + "\n"


def render_page(settings: dict, specs: list[TableSpec], runs_root: Path, head: str,
                data_root: str | None = None, manifest: str = "docs/results.yaml", link: str = "results.yaml",
                kept: dict[str, str] | None = None) -> str:
    """``kept``: title -> section text of tables whose folders are missing (``--keep-missing``)."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"# {settings.get('title', 'Results')}", "",
             f"<!-- generated by scripts/make_results.py from {manifest}; edit the manifest, not this file -->",
             "",
             f"Generated {now} at git `{_short(head)}` by `python scripts/make_results.py` from "
             f"[{Path(manifest).name}]({link}). Beside every table: the commit, versions, torch "
             f"threads, date and exact command of the runs it was read from; a table made at another commit "
             f"is marked **stale** when code under {', '.join(f'`{p}`' for p in CODE_PATHS)} changed since.",
             ""]
    if settings.get("intro"):
        parts += [str(settings["intro"]).strip(), ""]
    for spec in specs:
        if kept and spec.title in kept:
            parts.append(kept[spec.title])
        else:
            parts.append(render_table(spec, spec.folders(runs_root), head, data_root))
    return "\n".join(parts).rstrip() + "\n"


# ------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_results.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", default=str(DEFAULT_MANIFEST), help="table list (default docs/results.yaml)")
    p.add_argument("--out", default=str(DEFAULT_PAGE), help="the page to write (default docs/results.md)")
    p.add_argument("--runs-root", default="runs", help="folder holding the evaluations' output folders (runs/)")
    p.add_argument("--run", action="store_true", help="run the evaluations whose results.json is missing")
    p.add_argument("--rerun", action="store_true", help="run every evaluation again (old folders moved aside)")
    p.add_argument("--data-root", help="passed to badja_eval/run.py for BADJA / DAVIS tables that name none")
    p.add_argument("--only", help="comma list of table ids to (re)run; the page always shows every table")
    p.add_argument("--keep-missing", action="store_true",
                   help="a table whose run folders are missing is copied unchanged from the current page (--out), "
                        "marked as copied, instead of stopping the run")
    return p


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    settings, specs = load_manifest(args.manifest)
    runs_root = Path(args.runs_root).resolve()
    only = set(args.only.split(",")) if args.only else None
    unknown = sorted((only or set()) - {s.id for s in specs})
    if unknown:
        raise UserError(f"--only names unknown tables {', '.join(unknown)}",
                        f"ids: {', '.join(s.id for s in specs)}")
    if args.run or args.rerun:
        for spec in specs:
            if only and spec.id not in only:
                continue
            for seed, folder in zip(spec.seeds or [None], spec.folders(runs_root)):
                if args.rerun or not (folder / "results.json").is_file():
                    run_evaluation(spec, seed, folder, args.data_root, rerun=args.rerun)
    kept = None
    if args.keep_missing:
        kept = _kept_tables(specs, runs_root, Path(args.out))
        specs_to_check = [s for s in specs if s.title not in kept]
    else:
        specs_to_check = specs
    missing = [str(f) for s in specs_to_check for f in s.folders(runs_root) if not (f / "results.json").is_file()]
    if missing:
        raise UserError(f"no results.json in {', '.join(missing)}",
                        "run them with --run, or point --runs-root at the folder holding them")
    try:
        manifest_name = str(Path(args.manifest).resolve().relative_to(REPO_ROOT))
    except ValueError:
        manifest_name = str(args.manifest)
    link = os.path.relpath(Path(args.manifest).resolve(), Path(args.out).resolve().parent)
    page = render_page(settings, specs, runs_root, git_sha(), args.data_root, manifest_name, link, kept)
    write_text(args.out, page)  # atomic: a temp file renamed over the page, never a half-written page
    print(f"wrote {args.out} ({len(specs)} tables)")
    return 0


def _kept_tables(specs: list[TableSpec], runs_root: Path, page: Path) -> dict[str, str]:
    """The sections of ``page`` for the tables whose run folders are missing (each marked as copied); a missing
    table that the page lacks too is left out here, so the usual error names its folders."""
    old = page.read_text(encoding="utf-8") if page.is_file() else ""
    m = re.search(r"^Generated .*? at git `([^`]+)`", old, re.M)
    sections = page_sections(old)
    kept = {}
    for spec in specs:
        gone = any(not (f / "results.json").is_file() for f in spec.folders(runs_root))
        if gone and spec.title in sections:
            kept[spec.title] = kept_section(sections[spec.title], m.group(1) if m else "unknown")
    return kept
