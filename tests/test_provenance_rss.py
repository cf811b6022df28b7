"""peak_rss_mb reports the process's own peak, not its parent's (ru_maxrss is inherited over fork)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHILD = f"""
import sys
sys.path.insert(0, {str(REPO)!r})
from cosettle.provenance import peak_rss_mb
print(peak_rss_mb())
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc only")
def test_child_of_a_large_process_reports_its_own_peak():
    big = bytearray(2000 * 1024 * 1024)
    for i in range(0, len(big), 4096):  # touch every page: 2 GB resident in this process
        big[i] = 1
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    child_mb = float(out.stdout.strip().splitlines()[-1])
    del big
    # the child imports torch (~0.5 GB) but allocates nothing like the parent's 2 GB
    assert 1.0 < child_mb < 1200.0, child_mb
