"""Evaluation: BADJA (δseg/δ3px), TAP-Vid (AJ, δavg, OA) and an offline synthetic TAP benchmark.

Modules: ``metrics`` (formulas), ``badja`` (BADJA + DAVIS reading), ``tapvid`` (pickles, queries,
coordinate conventions), ``synthetic`` (procedural benchmark generator), ``runner`` (cached, resumable,
shardable tracker runs), ``report`` (tables, gains, CSV/JSON/PNG) and the CLI ``badja_eval/run.py``.
"""
from .metrics import badja_metrics, compute_tapvid_metrics, mean_over_videos

__all__ = ["badja_metrics", "compute_tapvid_metrics", "mean_over_videos"]
