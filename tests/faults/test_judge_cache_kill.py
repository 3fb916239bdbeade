"""SIGKILL mid cache append: a real process killed while writing judge-cache records.

The judge cache is appended (one write, fsync) after every scored batch, so a kill loses at
most the batch being written; a torn last line is skipped and counted when the cache is read
back, and the next append starts on a fresh line instead of gluing a record onto it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from rlhf_lab.judge.cache import ScoreCache

# Writes 3 whole records, then half of a 4th, and SIGKILLs itself before the newline.
KILLED_WRITER = textwrap.dedent(
    """
    import json, os, signal, sys
    from rlhf_lab.judge.cache import ScoreCache
    cache = ScoreCache(sys.argv[1], "judge", "sha")
    cache.add([(f"k{i}", 1.0 + i, 0.9) for i in range(3)])
    torn = json.dumps({"key": "k3", "value": 4.0, "mass": 0.9})
    fd = os.open(cache.path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, torn[: len(torn) // 2].encode())
    os.fsync(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_record_torn_by_sigkill_is_skipped_and_the_next_append_is_whole(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    cache = ScoreCache(tmp_path, "judge", "sha")
    assert len(cache) == 3 and cache.skipped_lines == 1
    assert cache.get("k2") == (3.0, 0.9) and cache.get("k3") is None  # re-scored next run
    assert cache.add([("k3", 4.0, 0.9)]) == 1
    lines = cache.path.read_text().splitlines()
    assert json.loads(lines[-1]) == {"key": "k3", "value": 4.0, "mass": 0.9}
    again = ScoreCache(tmp_path, "judge", "sha")
    assert len(again) == 4 and again.skipped_lines == 1  # only the torn half stays unreadable
