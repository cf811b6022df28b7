"""Result tables: one row per sequence x (tracker, backend), a mean row per method, gain columns.

A *gain* compares a projected backend ``NAME+cosettle[:PATH]`` with its base ``NAME`` under the same
tracker: gain = projected − base, per sequence and on the mean. Written as CSV + JSON + a PNG bar chart
(matplotlib, Agg backend) plus the resolved config and ``run_info.json`` (git SHA, versions, command).
"""
from __future__ import annotations

import csv
import io
import math
import textwrap
from pathlib import Path
from typing import Any, Sequence

from cosettle.config import dump_yaml
from cosettle.io.atomic import atomic_path, write_json, write_text
from cosettle.provenance import write_run_info

from .runner import Method

MEAN = "mean"


def build_rows(scores: dict[tuple[str, str], dict], sequences: Sequence[str], methods: Sequence[Method],
               metrics: Sequence[str]) -> list[dict[str, Any]]:
    """``scores[(sequence, method.label)]`` -> metric dict. Returns rows (sequence order, then the mean
    over sequences per method -- a simple mean of per-sequence values), with ``gain_<metric>`` filled
    for projected backends whose base backend ran too."""
    rows: list[dict[str, Any]] = []
    labels = {m.label for m in methods}
    for seq in list(sequences) + [MEAN]:
        for m in methods:
            if seq == MEAN:
                per = [scores[(s, m.label)] for s in sequences if (s, m.label) in scores]
                if not per:
                    continue
                vals = {k: _nanmean([p.get(k, math.nan) for p in per]) for k in metrics}
                vals["count"] = sum(int(p.get("count", 0)) for p in per)
                vals["n_sequences"] = len(per)
            else:
                if (seq, m.label) not in scores:
                    continue
                vals = dict(scores[(seq, m.label)])
            row = {"sequence": seq, "tracker": m.tracker, "backend": m.backend or "-",
                   **{k: vals.get(k, math.nan) for k in metrics}, "count": vals.get("count", 0)}
            rows.append(row)
    index = {(r["sequence"], r["tracker"], r["backend"]): r for r in rows}
    for r in rows:
        m = Method(r["tracker"], None if r["backend"] == "-" else r["backend"])
        base = m.base_backend
        if base is None or Method(m.tracker, base).label not in labels:
            continue
        b = index.get((r["sequence"], r["tracker"], base))
        if b is not None:
            for k in metrics:
                r[f"gain_{k}"] = r[k] - b[k]
    return rows


def _nanmean(vals) -> float:
    v = [float(x) for x in vals if x is not None and not math.isnan(float(x))]
    return sum(v) / len(v) if v else math.nan


def _columns(rows: list[dict], metrics: Sequence[str]) -> list[str]:
    cols = ["sequence", "tracker", "backend", *metrics]
    gains = [f"gain_{k}" for k in metrics if any(f"gain_{k}" in r for r in rows)]
    return cols + gains + ["count"]


def format_table(rows: list[dict], metrics: Sequence[str], headers: dict[str, str] | None = None) -> str:
    """Plain-text table (numbers with 2 decimals; gains signed)."""
    headers = headers or {}
    cols = _columns(rows, metrics)
    names = [headers.get(c, c) for c in cols]

    def fmt(c, v):
        if isinstance(v, float):
            if math.isnan(v):
                return "-"
            return f"{v:+.2f}" if c.startswith("gain_") else f"{v:.2f}"
        return "" if v is None else str(v)

    body = [[fmt(c, r.get(c)) for c in cols] for r in rows]
    widths = [max(len(n), *(len(b[i]) for b in body)) if body else len(n) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) if i < 3 else n.rjust(w) for i, (n, w) in enumerate(zip(names, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    prev = None
    for r, b in zip(rows, body):
        if prev is not None and r["sequence"] == MEAN and prev != MEAN:
            lines.append("  ".join("-" * w for w in widths))
        prev = r["sequence"]
        lines.append("  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(b, widths))))
    return "\n".join(lines)


def to_csv(rows: list[dict], metrics: Sequence[str]) -> str:
    cols = _columns(rows, metrics)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    for r in rows:
        w.writerow([(f"{r[c]:.4f}" if isinstance(r.get(c), float) else r.get(c, "")) for c in cols])
    return buf.getvalue()


def plot_bars(path: Path, rows: list[dict], metrics: Sequence[str], title: str,
              headers: dict[str, str] | None = None) -> Path:
    """Grouped bars: one group per sequence (and the mean), one bar per method, one panel per metric."""
    import matplotlib  # deferred: slow import, only for plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: slow import, only for plots

    headers = headers or {}
    seqs = list(dict.fromkeys(r["sequence"] for r in rows))
    meths = list(dict.fromkeys((r["tracker"], r["backend"]) for r in rows))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6, 1.2 * len(seqs) * max(1, len(meths)) ** 0.5 + 3) + 2,
                                                    2.8 * len(metrics)), squeeze=False)
    width = 0.8 / max(1, len(meths))
    for ax, k in zip(axes[:, 0], metrics):
        for j, (tr, be) in enumerate(meths):
            vals = []
            for s in seqs:
                r = next((r for r in rows if r["sequence"] == s and r["tracker"] == tr and r["backend"] == be), None)
                v = r.get(k, math.nan) if r else math.nan
                vals.append(0.0 if v is None or math.isnan(v) else v)
            xs = [i + (j - (len(meths) - 1) / 2) * width for i in range(len(seqs))]
            ax.bar(xs, vals, width, label=tr if be == "-" else f"{tr}/{be}")
        ax.set_xticks(range(len(seqs)))
        ax.set_xticklabels(seqs, rotation=20, fontsize=8)
        ax.set_ylabel(headers.get(k, k))
        ax.grid(axis="y", alpha=0.3)

    axes[0, 0].set_title("\n".join(textwrap.wrap(title, 100)), fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def write_report(out_dir: str | Path, rows: list[dict], metrics: Sequence[str], *, benchmark: str,
                 config: dict, per_video: dict | None = None, headers: dict[str, str] | None = None,
                 extra_info: dict | None = None, protocol: str = "") -> dict[str, Path]:
    """results.csv, results.json, results.png, config.yaml, run_info.json in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / "results.csv", "json": out / "results.json", "png": out / "results.png",
             "config": out / "config.yaml"}
    write_text(paths["csv"], to_csv(rows, metrics))
    write_json(paths["json"], {"benchmark": benchmark, "protocol": protocol, "metrics": list(metrics),
                               "note": "percentages (x100); mean = simple mean over sequences/videos; "
                                       "gain_<metric> = projected backend minus its base backend",
                               "rows": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                         for k, v in r.items()} for r in rows],
                               "per_video": per_video or {}})
    plot_bars(paths["png"], rows, metrics, protocol or benchmark, headers)
    dump_yaml(config, paths["config"])
    paths["run_info"] = write_run_info(out, {"benchmark": benchmark, **(extra_info or {})})
    return paths
