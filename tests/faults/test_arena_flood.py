"""A flood of comparison requests against the in-process arena app: the generation queue is
bounded per page and overall (429 beyond), served round-robin so a fresh page's comparison is
next but one in line, and comparisons evicted by the ``max_open`` cap lose their queued work;
hostile bodies (deep JSON, lone surrogates) are 400s, not 500s."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from starlette.testclient import TestClient

from rlhf_lab.arena.app import Arena, create_app
from tests.test_arena_app import HELD_OUT, headers, page_token, wait_ready


class Gate:
    """A replier that blocks until released, recording the prompts it was asked."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.prompts: list[str] = []

    def __call__(self, model: str, prompt: list[dict], settings: dict) -> str:
        self.prompts.append(prompt[-1]["content"])
        self.started.set()
        assert self.release.wait(20), "the test never released the replier"
        return f"{model}: ok"


def served(gate: Gate) -> list[str]:
    """Prompts in the order they were generated (the replier is called once per model)."""
    return list(dict.fromkeys(gate.prompts))


@pytest.fixture
def gate() -> Gate:
    return Gate()


def _serve(arena: Arena):
    return TestClient(create_app(arena), base_url="http://127.0.0.1")


def _post(client: TestClient, token: str, prompt: str):
    return client.post("/api/comparisons", json={"prompt": prompt}, headers=headers(token))


def test_one_page_flood_gets_429_and_a_fresh_page_is_served_next(tmp_path, gate):
    arena = Arena(["a", "b"], gate, tmp_path / "v.jsonl", HELD_OUT)
    with _serve(arena) as client:
        flood = page_token(client)
        codes = Counter(_post(client, flood, f"spam {i}").status_code for i in range(1000))
        assert codes == {201: arena.max_queued_per_page, 429: 1000 - arena.max_queued_per_page}
        assert gate.started.wait(10)  # spam 0 is generating, 3 wait
        fresh = page_token(client)
        made = _post(client, fresh, "a real question")
        assert made.status_code == 201
        # served after the running one and one spam comparison (round robin), not after 999
        assert made.json()["ahead"] == 2
        gate.release.set()
        assert wait_ready(client, fresh, made.json()["id"])["status"] == "ready"
    arena.close()
    assert served(gate).index("a real question") == 2


def test_many_page_flood_is_bounded_overall_and_a_fresh_page_still_gets_in(tmp_path, gate):
    arena = Arena(["a", "b"], gate, tmp_path / "v.jsonl", HELD_OUT, max_open=10_000)
    with _serve(arena) as client:
        pages = [page_token(client) for _ in range(20)]  # fewer than max_queued pages
        codes = Counter(_post(client, t, f"spam {i}").status_code for t in pages for i in range(10))
        assert codes[201] >= arena.max_queued and codes[429] > 0
        assert gate.started.wait(10)
        ids = [c.id for c in arena._open.values() if c.status == "pending"]
        assert len(ids) == arena.max_queued  # queued or generating, never more
        fresh = page_token(client)
        made = _post(client, fresh, "a real question")
        assert made.status_code == 201
        busy_pages = len({c.token for c in arena._open.values() if c.status == "pending"})
        assert made.json()["ahead"] <= busy_pages  # one per page ahead of it, at most
        gate.release.set()
        assert wait_ready(client, fresh, made.json()["id"])["status"] == "ready"
    arena.close()


def test_comparisons_evicted_by_the_cap_are_never_generated(tmp_path, gate):
    arena = Arena(["a", "b"], gate, tmp_path / "v.jsonl", HELD_OUT, max_open=3)
    with _serve(arena) as client:
        made = []
        for i in range(6):
            token = page_token(client)
            made.append((token, _post(client, token, f"q{i}").json()["id"]))
            if i == 0:
                assert gate.started.wait(10)  # q0 is generating: it can only finish
        gate.release.set()
        token, cid = made[-1]
        assert wait_ready(client, token, cid)["status"] == "ready"
    arena.close()
    assert served(gate) == ["q0", "q3", "q4", "q5"]  # q1, q2 evicted while waiting


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/comparisons", b'{"prompt": "hi \\ud800"}', "prompt holds a lone surrogate"),
        ("/api/comparisons", b'{"prompt": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested"),
        ("vote", b'{"label": "left", "note": "\\udfff"}', "note holds a lone surrogate"),
        ("vote", b'{"label": "left", "note": ' + b'{"a":' * 4_000 + b"1" + b"}" * 4_001, "nested"),
    ],
)
def test_hostile_bodies_are_400_not_500(tmp_path, path, body, message):
    arena = Arena(["a", "b"], lambda m, p, s: "ok", tmp_path / "v.jsonl", HELD_OUT)
    with _serve(arena) as client:
        token = page_token(client)
        if path == "vote":
            cid = _post(client, token, "q").json()["id"]
            wait_ready(client, token, cid)
            path = f"/api/comparisons/{cid}/vote"
        r = client.post(
            path, content=body, headers={**headers(token), "Content-Type": "application/json"}
        )
        assert r.status_code == 400 and message in r.json()["error"], r.text
    arena.close()
    assert not arena.votes_path.exists()
