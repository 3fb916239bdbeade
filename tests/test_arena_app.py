"""Arena web app through Starlette's test client: every route, bad inputs, concurrent votes."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.testclient import TestClient
from typer.testing import CliRunner

from rlhf_lab.arena.app import MAX_BODY_BYTES, MAX_NOTE_CHARS, MAX_PROMPT_CHARS, Arena, create_app
from rlhf_lab.arena.votes import read_votes
from rlhf_lab.cli import app as cli_app
from rlhf_lab.io import read_jsonl

HELD_OUT = [[{"role": "user", "content": "held-out question?"}]]


def fake_replier(model: str, prompt: list[dict], settings: dict) -> str:
    return f"{model} answers {prompt[-1]['content']} (seed {settings['seed']})"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def arena(tmp_path) -> Arena:
    a = Arena(
        ["sft", "ppo"],
        fake_replier,
        tmp_path / "human" / "votes.jsonl",
        HELD_OUT,
        {"temperature": 0.7, "max_new_tokens": 16},
        clock=Clock(),
    )
    yield a
    a.close()


@pytest.fixture
def client(arena) -> TestClient:
    with TestClient(create_app(arena), base_url="http://127.0.0.1") as c:
        yield c


def page_token(client: TestClient) -> str:
    html = client.get("/").text
    return html.split('name="arena-token" content="')[1].split('"')[0]


def headers(token: str) -> dict[str, str]:
    return {"X-Arena-Token": token}


def wait_ready(client: TestClient, token: str, cid: str) -> dict:
    for _ in range(500):  # bounded: ~5 s
        body = client.get(f"/api/comparisons/{cid}", headers=headers(token)).json()
        if body["status"] != "pending":
            return body
        time.sleep(0.01)
    raise AssertionError("generation never finished")


def ready_comparison(client: TestClient, token: str, prompt: str | None = "hi?") -> dict:
    made = client.post("/api/comparisons", json={"prompt": prompt}, headers=headers(token))
    assert made.status_code == 201, made.text
    return wait_ready(client, token, made.json()["id"])


def test_page_has_token_csp_and_no_inline_handlers(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["x-frame-options"] == "DENY"
    csp = r.headers["content-security-policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'<script nonce="{nonce}">' in r.text and "default-src 'none'" in csp
    assert "onclick" not in r.text and "innerHTML" not in r.text
    assert page_token(client) != page_token(client)  # a fresh token per page


def test_compare_then_vote_reveals_models_and_appends_a_trl_row(client, arena):
    token = page_token(client)
    c = ready_comparison(client, token, "  What is RLHF?  ")
    assert c["status"] == "ready" and c["prompt"] == [{"role": "user", "content": "What is RLHF?"}]
    assert {"models", "model_left", "model_right"}.isdisjoint(c)  # blind until the vote
    left_model = c["left"].split(" answers")[0]
    right_model = c["right"].split(" answers")[0]
    assert {left_model, right_model} == {"sft", "ppo"}
    r = client.post(
        f"/api/comparisons/{c['id']}/vote",
        json={"label": "right", "note": " clearer "},
        headers=headers(token),
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "label": "right",
        "models": {"left": left_model, "right": right_model},
        "votes": 1,
    }
    [row] = read_jsonl(arena.votes_path)
    assert row["id"] == c["id"] and row["label"] == "right" and row["label_source"] == "human"
    assert row["chosen"] == [{"role": "assistant", "content": c["right"]}]
    assert row["rejected"] == [{"role": "assistant", "content": c["left"]}]
    assert (row["chosen_model"], row["position"], row["note"]) == (right_model, "right", "clearer")
    seed = row["generation"]["seed"]
    assert row["generation"] == {"temperature": 0.7, "max_new_tokens": 16, "seed": seed}
    assert f"(seed {seed})" in c["left"] and f"(seed {seed})" in c["right"]  # one shared seed
    assert client.get("/api/stats", headers=headers(token)).json() == {"votes": 1}


def test_empty_prompt_draws_a_held_out_prompt_and_sides_vary(client):
    token = page_token(client)
    lefts = set()
    for _ in range(12):
        c = ready_comparison(client, token, None)
        assert c["prompt"] == HELD_OUT[0]
        lefts.add(c["left"].split(" answers")[0])
    assert lefts == {"sft", "ppo"}  # random sides (1 in 2048 to fail by chance)


def test_no_held_out_prompts_needs_a_typed_one(tmp_path):
    arena = Arena(["a", "b"], fake_replier, tmp_path / "v.jsonl", [])
    with TestClient(create_app(arena), base_url="http://127.0.0.1") as client:
        r = client.post(
            "/api/comparisons", json={"prompt": ""}, headers=headers(page_token(client))
        )
        assert r.status_code == 400 and "type a prompt" in r.json()["error"]
        assert "no held-out prompts" in client.get("/").text
    arena.close()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (
            json.dumps({"prompt": "x" * (MAX_PROMPT_CHARS + 1)}),
            "application/json",
            413,
            "prompt too long",
        ),
        ("{" + " " * MAX_BODY_BYTES + "}", "application/json", 413, "request body over"),
        ('{"prompt": ', "application/json", 400, "malformed JSON"),
        ('["a list"]', "application/json", 400, "expected a JSON object"),
        ('{"prompt": 3}', "application/json", 400, "prompt must be text"),
        ("prompt=hi", "application/x-www-form-urlencoded", 415, "send JSON"),
        ("\xff", "application/json", 400, "malformed JSON"),
    ],
)
def test_bad_comparison_requests(client, body, content_type, status, message):
    r = client.post(
        "/api/comparisons",
        content=body.encode("latin-1"),
        headers={**headers(page_token(client)), "Content-Type": content_type},
    )
    assert r.status_code == status and message in r.json()["error"]


def test_bad_votes(client, arena):
    token = page_token(client)
    c = ready_comparison(client, token)
    url = f"/api/comparisons/{c['id']}/vote"

    def post(payload, tok=token, u=url):
        return client.post(u, json=payload, headers=headers(tok))

    assert post({"label": "middle"}).status_code == 400
    assert post({"label": "left", "note": 5}).status_code == 400
    assert post({"label": "left", "note": "x" * (MAX_NOTE_CHARS + 1)}).status_code == 413
    r = client.post(
        url, content=b"{not json", headers={**headers(token), "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"] == "malformed JSON"
    unknown = post({"label": "left"}, u="/api/comparisons/deadbeef/vote")
    assert unknown.status_code == 404 and "unknown or expired" in unknown.json()["error"]
    # the token of another page (e.g. another tab) cannot vote on this comparison
    assert post({"label": "left"}, tok=page_token(client)).status_code == 404
    assert post({"label": "left"}, tok="forged.0000").status_code == 403
    assert client.post(url, json={"label": "left"}).status_code == 403  # no token at all
    assert post({"label": "tie"}).status_code == 200
    double = post({"label": "left"})
    assert double.status_code == 409 and "already" in double.json()["error"]
    votes, _ = read_votes(arena.votes_path)
    assert [v["label"] for v in votes] == ["tie"]  # nothing but the one good vote was written


def test_stale_comparison_is_rejected(client, arena):
    token = page_token(client)
    c = ready_comparison(client, token)
    arena.clock.now += arena.ttl_s + 1
    r = client.post(
        f"/api/comparisons/{c['id']}/vote", json={"label": "left"}, headers=headers(token)
    )
    assert r.status_code == 404
    assert client.get(f"/api/comparisons/{c['id']}", headers=headers(token)).status_code == 404
    assert not arena.votes_path.exists()


def test_vote_before_replies_are_ready_and_generation_errors(tmp_path):
    release = threading.Event()

    def slow(model, prompt, settings):
        if prompt[-1]["content"] == "boom":
            raise RuntimeError("model exploded")
        release.wait(10)
        return "late"

    arena = Arena(["a", "b"], slow, tmp_path / "v.jsonl", HELD_OUT)
    with TestClient(create_app(arena), base_url="http://127.0.0.1") as client:
        token = page_token(client)
        cid = client.post("/api/comparisons", json={"prompt": "q"}, headers=headers(token)).json()[
            "id"
        ]
        r = client.post(
            f"/api/comparisons/{cid}/vote", json={"label": "left"}, headers=headers(token)
        )
        assert r.status_code == 409 and "not ready" in r.json()["error"]
        assert client.get("/api/stats", headers=headers(token)).status_code == 200  # responsive
        release.set()
        assert wait_ready(client, token, cid)["left"] == "late"
        bad = client.post("/api/comparisons", json={"prompt": "boom"}, headers=headers(token))
        body = wait_ready(client, token, bad.json()["id"])
        assert body["status"] == "error" and "model exploded" in body["error"]
    arena.close()


def test_host_header_must_be_loopback(arena):
    with TestClient(create_app(arena), base_url="http://evil.example") as client:
        assert client.get("/").status_code == 400


def test_reply_with_html_is_returned_as_plain_json_text(tmp_path):
    evil = '<script>alert(1)</script><img src=x onerror="alert(2)">'
    arena = Arena(["a", "b"], lambda m, p, s: evil, tmp_path / "v.jsonl", HELD_OUT)
    with TestClient(create_app(arena), base_url="http://127.0.0.1") as client:
        token = page_token(client)
        c = ready_comparison(client, token)
        assert c["left"] == evil and c["right"] == evil
        assert "<script>alert" not in client.get("/").text
    arena.close()


def test_concurrent_votes_append_every_row_once(arena):
    # one page each: a page may have only arena.max_queued_per_page comparisons queued
    comps = [arena.new_comparison(arena.new_token(), f"q{i}") for i in range(30)]
    for _ in range(500):
        if all(c.status == "ready" for c in comps):
            break
        time.sleep(0.01)
    labels = ["left", "right", "tie", "both_bad"]
    # every comparison voted by two racing requests: exactly one of each pair may win
    jobs = [(c, labels[i % 4]) for i, c in enumerate(comps)] * 2

    def cast(job):
        c, label = job
        try:
            return arena.vote(c.token, c.id, label, "n" * 500)["label"]
        except Exception as exc:  # ArenaError(409) for the loser
            return getattr(exc, "status", exc)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(cast, jobs))
    assert results.count(409) == 30 and sum(r in labels for r in results) == 30
    votes, bad = read_votes(arena.votes_path)
    assert bad == [] and sorted(v["id"] for v in votes) == sorted(c.id for c in comps)
    assert arena.vote_count == 30


def test_real_generation_with_two_tiny_policies(tmp_path, tiny_models):
    from rlhf_lab.arena.command import PolicyReplier
    from rlhf_lab.config import Params

    dirs = {"a": tiny_models["policy"], "b": tiny_models["policy"]}
    replier = PolicyReplier(dirs, Params())
    settings = {"temperature": 0.7, "max_new_tokens": 6, "seed": 5}
    prompt = [{"role": "user", "content": "hello how are you"}]
    a1, b1 = replier("a", prompt, settings), replier("b", prompt, settings)
    assert a1 and b1
    assert replier("a", prompt, settings) == a1  # same seed, same reply
    assert replier("a", prompt, {**settings, "seed": 6}) != a1
    assert set(replier._loaded) == {"a", "b"}  # loaded once each


def test_cli_refuses_remote_bind_and_reports_ratings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"eval": {"n_boot": 200}}))
    runner = CliRunner()
    r = runner.invoke(cli_app, ["arena", "--host", "0.0.0.0", "--params", str(params)])
    assert r.exit_code == 2 and "--allow-remote" in r.output
    r = runner.invoke(cli_app, ["arena", "--params", str(params)])  # no trained models here
    assert r.exit_code == 2 and "needs two models" in r.output
    r = runner.invoke(cli_app, ["arena", "--report", "--params", str(params)])
    assert r.exit_code == 2 and "no votes yet" in r.output
    arena = Arena(["sft", "ppo"], fake_replier, Path("data/human/votes.jsonl"), HELD_OUT)
    token = arena.new_token()
    for label in ["left", "right", "tie"]:
        c = arena.new_comparison(token, "q")
        for _ in range(500):
            if c.status == "ready":
                break
            time.sleep(0.01)
        arena.vote(token, c.id, label, "")
    arena.close()
    # the held-out prompts: "q" (voted on three times) and one nobody has voted on yet
    prompts = tmp_path / "data/grounded/test.jsonl"  # the prompts evaluate samples
    prompts.parent.mkdir(parents=True)
    rows = [{"id": str(i), "prompt": [{"role": "user", "content": q}]} for i, q in enumerate("qr")]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    r = runner.invoke(cli_app, ["arena", "--report", "--params", str(params)])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "metrics/arena.json").read_text())
    assert (m["arena/votes"], m["arena/pairs"], m["arena/ties"]) == (3, 2, 1)
    assert (m["arena/prompts_voted"], m["arena/prompts"]) == (1, 2)
    assert m["arena/sft/win_rate"] + m["arena/ppo/win_rate"] == pytest.approx(1.0)
    assert m["arena/sft/games"] == 3 and m["arena/unreadable_lines"] == 0
    assert "Elo" in r.output


def test_cli_serves_the_page_on_loopback_and_stops_on_ctrl_c(tmp_path):
    for name in ("a", "b"):  # models load on the first comparison: a config.json is enough
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "rlhf_lab.cli",
        "arena",
        "-m",
        "a",
        "-m",
        "b",
        "--port",
        str(port),
        "--params",
        str(tmp_path / "none.yaml"),
    ]
    (tmp_path / "none.yaml").write_text("{}\n")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        page = None
        for _ in range(300):  # bounded: ~30 s to start
            try:
                page = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert page is not None and page.status_code == 200 and "2 models" in page.text
        token = page.text.split('name="arena-token" content="')[1].split('"')[0]
        stats = httpx.get(f"http://127.0.0.1:{port}/api/stats", headers=headers(token))
        assert stats.json() == {"votes": 0}
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()
    assert b"open http://127.0.0.1:" in out
