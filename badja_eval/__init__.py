"""Evaluation: BADJA (δseg/δ3px), TAP-Vid (AJ, δavg, OA) and an offline synthetic TAP benchmark.

Modules: ``metrics`` (formulas), ``badja`` (BADJA + DAVIS reading), ``tapvid`` (pickles, queries,
coordinate conventions), ``synthetic`` (procedural benchmark generator), ``runner`` (cached, resumable,
shardable tracker runs), ``report`` (tables, gains, CSV/JSON/PNG) and the CLI ``badja_eval/run.py``.
"""
# importing cosettle first (this line) sets OMP_WAIT_POLICY before torch loads (cosettle/__init__.py): without it
# ``from badja_eval.davis_vos import ...`` loaded torch first and its idle OpenMP threads spun
import cosettle  # noqa: F401

from .metrics import badja_metrics, compute_tapvid_metrics, mean_over_videos  # noqa: E402

__all__ = ["badja_metrics", "compute_tapvid_metrics", "mean_over_videos"]
