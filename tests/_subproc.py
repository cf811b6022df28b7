"""Kill a child process at a point it announces itself (no sleeps: the child prints a line and blocks)."""
from __future__ import annotations

import signal
import subprocess


def kill_when_announced(proc: subprocess.Popen, announcement: str) -> None:
    """Read one stdout line of ``proc`` (blocks until the child prints it, '' if it died), check it is
    ``announcement``, then SIGKILL the child and reap it; the child is never left running."""
    try:
        line = proc.stdout.readline()
        assert line.strip() == announcement, proc.stderr.read()[-2000:] if proc.poll() is not None else line
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
