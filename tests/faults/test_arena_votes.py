"""Faults in the arena's vote file: a writer killed mid-append, a full disk during a vote."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

from starlette.testclient import TestClient

from rlhf_lab.arena.app import Arena, create_app
from rlhf_lab.arena.votes import read_votes, vote_row

WRITER = """
import sys
from rlhf_lab.arena.votes import append_vote, vote_row
for i in range(1_000_000):
    append_vote(sys.argv[1], vote_row(comparison_id=f"c{i}", prompt=[{"role": "user",
        "content": "q"}], models=("a", "b"), replies=("x" * 50_000, "y"), label="left"))
"""


def test_sigkill_during_appends_loses_no_acknowledged_vote(tmp_path):
    path = tmp_path / "votes.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
    try:
        for _ in range(600):  # bounded: ~60 s for 20 votes
            if path.exists() and path.read_bytes().count(b"\n") >= 20:
                break
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    votes, bad = read_votes(path)
    # every complete line is a vote, in order; at most the line being written is torn
    assert [v["id"] for v in votes] == [f"c{i}" for i in range(len(votes))]
    assert len(votes) >= 20 and bad in ([], [len(votes) + 1])
    # the next vote after the crash lands on a line of its own and reads back
    from rlhf_lab.arena.votes import append_vote

    append_vote(
        path,
        vote_row(
            comparison_id="after",
            prompt=[{"role": "user", "content": "q"}],
            models=("a", "b"),
            replies=("x", "y"),
            label="tie",
        ),
    )
    votes2, bad2 = read_votes(path)
    assert [v["id"] for v in votes2] == [v["id"] for v in votes] + ["after"]
    assert bad2 == bad


def test_disk_full_during_a_vote_is_a_clear_error_and_the_vote_can_be_retried(
    tmp_path, monkeypatch
):
    arena = Arena(["a", "b"], lambda m, p, s: f"reply of {m}", tmp_path / "votes.jsonl", [])
    real_write = os.write
    calls = {"n": 0}

    def full_disk(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:  # half the line reaches the disk, then ENOSPC
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    with TestClient(create_app(arena), base_url="http://127.0.0.1") as client:
        token = client.get("/").text.split('name="arena-token" content="')[1].split('"')[0]
        h = {"X-Arena-Token": token}
        cid = client.post("/api/comparisons", json={"prompt": "q"}, headers=h).json()["id"]
        for _ in range(500):
            if client.get(f"/api/comparisons/{cid}", headers=h).json()["status"] == "ready":
                break
            time.sleep(0.01)
        monkeypatch.setattr("rlhf_lab.io.os.write", full_disk)
        r = client.post(f"/api/comparisons/{cid}/vote", json={"label": "left"}, headers=h)
        assert r.status_code == 507 and "No space left" in r.json()["error"]
        r = client.post(f"/api/comparisons/{cid}/vote", json={"label": "left"}, headers=h)
        assert r.status_code == 200 and r.json()["votes"] == 1
    arena.close()
    votes, bad = read_votes(tmp_path / "votes.jsonl")
    assert [v["id"] for v in votes] == [cid] and bad == [1]  # the torn half-line, reported
    assert json.loads((tmp_path / "votes.jsonl").read_text().splitlines()[1])["id"] == cid
