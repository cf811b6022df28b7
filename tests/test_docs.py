"""The documentation holds together: README.md stays short (≤ 350 lines), every relative link and every
#anchor in README.md and docs/*.md resolves (GitHub's heading slugs), and the README's results table
carries the numbers of the generated docs/results.md."""
from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 350
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^()\s]+)\)")


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code spans blanked out."""
    fence = None
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*(```+|~~~+)", line)
        if m:
            if fence is None:
                fence = m.group(1)[:3]
            elif m.group(1).startswith(fence):
                fence = None
            continue
        if fence is None:
            yield n, re.sub(r"`+[^`]*`+", lambda s: " " * len(s.group()), line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (code spans keep their text; emphasis and link
    markup drop), lowercased, every character but letters, marks, digits, '_', '-' and spaces removed,
    spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = text.strip().lower()
    keep = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return keep.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file; a repeated slug gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    fence = False
    for line in path.read_text().splitlines():
        if re.match(r"^\s*(```|~~~)", line):
            fence = not fence
            continue
        m = None if fence else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        s = slug(m.group(2))
        if s in seen:
            seen[s] += 1
            s = f"{s}-{seen[s]}"
        else:
            seen[s] = 0
        out.add(s)
    return out


def broken_links(files) -> list[str]:
    """'file:line: target (why)' for every relative link or anchor that leads nowhere."""
    problems = []
    cache: dict[Path, set[str]] = {}
    for f in files:
        for n, line in _prose_lines(f.read_text()):
            for target in LINK.findall(line) + IMAGE.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http(s), mailto: not checked here
                    continue
                path_part, _, anchor = target.partition("#")
                dest = (f.parent / path_part).resolve() if path_part else f
                where = f"{f.relative_to(REPO)}:{n}: {target}"
                if not dest.exists():
                    problems.append(f"{where} (no such file or folder)")
                    continue
                if anchor:
                    if dest.is_dir() or dest.suffix != ".md":
                        problems.append(f"{where} (an anchor into a non-markdown target)")
                        continue
                    if dest not in cache:
                        cache[dest] = anchors(dest)
                    if anchor not in cache[dest]:
                        problems.append(f"{where} (no heading with that anchor in {dest.name})")
    return problems


def test_readme_is_short():
    n = len((REPO / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail into docs/"


def test_every_relative_link_and_anchor_resolves():
    problems = broken_links(doc_files())
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("heading, expected", [
    ("Tracking points (`scripts/track.py`): DINO-Tracker on any feature backend",
     "tracking-points-scriptstrackpy-dino-tracker-on-any-feature-backend"),
    ("The default: `dino-flow` (DINO-Tracker + optical flow, re-detection only on evidence)",
     "the-default-dino-flow-dino-tracker--optical-flow-re-detection-only-on-evidence"),
    ("`scripts/extract_features.py`", "scriptsextract_featurespy"),
    ("Geometry: pixels ↔ feature cells", "geometry-pixels--feature-cells"),
    ("Co-Settle on `dsift`: measured on real video", "co-settle-on-dsift-measured-on-real-video"),
    ("δseg and **bold** [a link](x.md)", "δseg-and-bold-a-link"),
])
def test_slug_follows_github(heading, expected):
    assert slug(heading) == expected


def test_the_checker_catches_broken_links(tmp_path, monkeypatch):
    """A mutation of each kind -- missing file, missing anchor, missing anchor in another page, a second
    heading with the same text -- is reported; links inside code are not links."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# Bee\n\n## Same\n\n## Same\n\n```\n## not a heading\n```\n")
    a = tmp_path / "README.md"
    a.write_text("# Top\n\n[ok](docs/b.md#same-1) [ok](#top) [ok](docs/) [web](https://x.y/#nope)\n"
                 "`[code](nowhere.md)`\n```\n[block](nowhere.md)\n```\n")
    assert broken_links([a]) == []
    a.write_text("# Top\n\n[f](docs/c.md) [x](#nope) [y](docs/b.md#same-2) [z](docs/b.md#not-a-heading)\n")
    got = broken_links([a])
    assert len(got) == 4 and "no such file" in got[0] and all("no heading" in g for g in got[1:])


def _cells(line: str) -> list[str]:
    return [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]


def _tables(text: str):
    """Every markdown table as (header cells, rows of cells), separator rows dropped."""
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            rows = [_cells(r) for r in block if not r.startswith("|---")]
            yield rows[0], rows[1:]
            block = []


def readme_result_mismatches(readme: str, page: str) -> list[str]:
    """Each cell of the README's results table (rows: clip, metric; columns: trackers) checked against the cell
    of docs/results.md for the same sequence, tracker (its first word) and metric column, dsift or no backend;
    returns the cells that differ or have no counterpart."""
    m = re.search(r"^## Results\n(.*?)(?=^## )", readme, re.S | re.M)
    assert m, "README.md needs a '## Results' section"
    tables = list(_tables(m.group(1)))
    assert tables, "no table in the README's Results section"
    page_cells: dict[tuple[str, str, str], set[str]] = {}
    for head, rows in _tables(page):
        if "sequence" not in head or "tracker" not in head:
            continue
        for row in rows:
            r = dict(zip(head, row))
            if r.get("backend", "-") not in ("-", "dsift"):
                continue
            for col, val in r.items():
                page_cells.setdefault((r["sequence"], r["tracker"], col), set()).add(val)
    head, rows = tables[0]
    trackers = [h.split()[0] if h else h for h in head]
    bad, clip = [], ""
    for row in rows:
        clip = row[0] or clip
        metric = row[1]
        for tracker, val in zip(trackers[2:], row[2:]):
            want = page_cells.get((clip, tracker, metric))
            if want is None or val not in want:
                bad.append(f"{clip} / {metric} / {tracker}: README {val}, docs/results.md {sorted(want or [])}")
    return bad


def test_readme_results_match_the_generated_page():
    """Every cell of the README's results table is the cell docs/results.md shows for the same clip, tracker and
    metric (same runs, same SHA); a swap of two README cells is caught (checked here on a copy)."""
    readme = (REPO / "README.md").read_text()
    page = (REPO / "docs" / "results.md").read_text()
    problems = readme_result_mismatches(readme, page)
    assert not problems, "README results differ from docs/results.md:\n" + "\n".join(problems)
    # the check can fail: swap two different cells of one README row (on a copy) -> both are reported
    line = next(l for l in readme.splitlines() if l.startswith("| ") and len(set(_cells(l)[2:])) > 1
                and re.search(r"\d\.\d", l))
    cells = line.strip().strip("|").split("|")
    i, j = next((a, b) for a in range(2, len(cells)) for b in range(a + 1, len(cells))
                if cells[a].strip() != cells[b].strip())
    cells[i], cells[j] = cells[j], cells[i]
    swapped = readme.replace(line, "|" + "|".join(cells) + "|")
    assert swapped != readme and len(readme_result_mismatches(swapped, page)) == 2
    m = re.search(r"^## Results\n(.*?)(?=^## )", readme, re.S | re.M)
    for sha in re.findall(r"git `([0-9a-f]{7})`", m.group(1)):
        assert f"`{sha}" in page, f"README names git {sha}, docs/results.md does not"
