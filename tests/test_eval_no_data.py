"""The evaluator without data (issue 28): its one-line error names where BADJA, DAVIS and TAP-Vid come from and
offers the offline synthetic benchmark, which needs no data; docs/evaluation.md says the same."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from badja_eval import run as eval_run

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("github.com/benjiebob/BADJA", "davischallenge.org", "storage.googleapis.com/dm-tapnet/tapvid_davis.zip")


def _main(argv, capsys):
    with pytest.raises(SystemExit) as ei:
        eval_run.main([str(a) for a in argv])
    return ei.value.code, capsys.readouterr().err


def _offered_command(err: str) -> list[str]:
    return shlex.split(re.search(r"python badja_eval/run\.py (--benchmark synthetic[^\n]*)", err).group(1))


@pytest.mark.parametrize("case", ["default root missing", "root not found", "tapvid without pickle"])
def test_no_data_error_names_the_sources_and_the_offline_benchmark(case, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(eval_run, "DEFAULT_DATA_ROOT", tmp_path / "no-shared-data")
    argv = {"default root missing": [],
            "root not found": ["--data-root", tmp_path / "nowhere"],
            "tapvid without pickle": ["--benchmark", "tapvid"]}[case]
    code, err = _main([*argv, "--out", tmp_path / "out"], capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for source in SOURCES:
        assert source in err, (source, err)
    # the offered command is a valid evaluator command that needs no data root
    cfg = eval_run.resolve(eval_run.build_parser().parse_args(_offered_command(err) + ["--out", str(tmp_path / "s")]))
    assert cfg.benchmark == "synthetic" and cfg.data_root is None


def test_the_evaluation_page_says_where_the_data_comes_from():
    text = (REPO / "docs" / "evaluation.md").read_text()
    section = text[text.index("## Where the data comes from"):]
    section = section[:section.index("\n## ", 5)]
    for source in SOURCES:
        assert source in section
    assert "--benchmark synthetic" in section and "../shared/data" in section
