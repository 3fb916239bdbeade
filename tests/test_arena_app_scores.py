"""Arena app, through Starlette's test client: rubric scores, the leaderboard, identical replies,
prompts without replacement, the rater id, and ``arena --report`` with scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient
from typer.testing import CliRunner

from rlhf_lab.arena import scores
from rlhf_lab.arena.app import MAX_RATER_CHARS, Arena, create_app
from rlhf_lab.arena.votes import append_vote, vote_row
from rlhf_lab.cli import app as cli_app
from rlhf_lab.io import read_jsonl
from tests.test_arena_app import (
    HELD_OUT,
    fake_replier,
    headers,
    page_token,
    ready_comparison,
)


def make(tmp_path: Path, replier=fake_replier, prompts=HELD_OUT, **kw) -> Arena:
    return Arena(
        ["sft", "ppo"],
        replier,
        tmp_path / "human" / "votes.jsonl",
        prompts,
        {"temperature": 0.7, "max_new_tokens": 16},
        **kw,
    )


@pytest.fixture
def crs(tmp_path):
    a = make(tmp_path, scores_path=tmp_path / "human" / "ratings.jsonl", rubrics=scores.RUBRICS)
    with TestClient(create_app(a), base_url="http://127.0.0.1") as c:
        yield c, a
    a.close()


def all_(value: int) -> dict[str, int]:
    return dict.fromkeys(scores.RUBRICS, value)


def test_crs_page_has_a_score_form_and_scores_land_beside_the_votes(crs):
    client, arena = crs
    html = client.get("/").text
    assert html.count('data-rubric="emotional_intensity"') == 2  # one select per reply
    assert html.count("<select data-rubric=") == 2 * len(scores.RUBRICS)
    assert 'id="leaderboard"' in html and "Reply A" in html and "Reply B" in html
    token = page_token(client)
    c = ready_comparison(client, token)
    url = f"/api/comparisons/{c['id']}/scores"
    body = {"scores": {"left": all_(2), "right": all_(5)}, "rater": " ann "}
    r = client.post(url, json=body, headers=headers(token))
    assert r.status_code == 200 and r.json() == {"scored": True}
    [row] = read_jsonl(arena.scores_path)
    assert arena.scores_path.parent == arena.votes_path.parent
    assert row["scores"] == {"left": all_(2), "right": all_(5)} and row["rater"] == "ann"
    assert (row["reply_left"], row["reply_right"]) == (c["left"], c["right"])
    assert client.post(url, json=body, headers=headers(token)).status_code == 409  # once only
    # The vote is separate and still open.
    v = client.post(
        f"/api/comparisons/{c['id']}/vote", json={"label": "tie"}, headers=headers(token)
    )
    assert v.status_code == 200
    board = client.get("/api/leaderboard", headers=headers(token)).json()
    right = row["model_right"]
    [entry] = [m for m in board["models"] if m["model"] == right]
    assert entry["human"]["lifelikeness"] == "5.00 (too few ratings: 1 < 10)"


def test_bad_scores_are_refused_with_the_field(crs):
    client, arena = crs
    token = page_token(client)
    c = ready_comparison(client, token)
    url = f"/api/comparisons/{c['id']}/scores"
    bad = {"scores": {"left": all_(2), "right": {**all_(5), "lifelikeness": 0}}}
    r = client.post(url, json=bad, headers=headers(token))
    assert r.status_code == 400 and "scores.right.lifelikeness" in r.json()["error"]
    r = client.post(url, json={"scores": {"left": all_(2), "right": all_(5)}, "rater": 7})
    assert r.status_code == 403  # no token
    assert not arena.scores_path.exists()


def test_chat_arena_scores_no_rubrics(tmp_path):
    a = make(tmp_path)
    with TestClient(create_app(a), base_url="http://127.0.0.1") as client:
        assert "<select data-rubric=" not in client.get("/").text
        token = page_token(client)
        c = ready_comparison(client, token)
        body = {"scores": {"left": all_(2), "right": all_(5)}}
        r = client.post(f"/api/comparisons/{c['id']}/scores", json=body, headers=headers(token))
        assert r.status_code == 404
    a.close()


def test_identical_replies_are_flagged_and_never_a_pair(tmp_path):
    a = make(tmp_path, replier=lambda model, prompt, settings: "The same reply.")
    with TestClient(create_app(a), base_url="http://127.0.0.1") as client:
        token = page_token(client)
        c = ready_comparison(client, token)
        assert c["identical"] is True
        url = f"/api/comparisons/{c['id']}/vote"
        r = client.post(url, json={"label": "left"}, headers=headers(token))
        assert r.status_code == 409 and "identical" in r.json()["error"]
        assert (
            client.post(url, json={"label": "both_bad"}, headers=headers(token)).status_code == 200
        )
        [row] = read_jsonl(a.votes_path)
        assert row["identical"] is True and row["chosen"] is None and row["position"] is None
        board = client.get("/api/leaderboard", headers=headers(token)).json()
        assert board["identical"] == 1 and board["models"] == [] and board["pairs"] == {}
    a.close()


def test_prompts_are_drawn_without_replacement_with_coverage(tmp_path):
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
    a = make(tmp_path, prompts=prompts)
    with TestClient(create_app(a), base_url="http://127.0.0.1") as client:
        token = page_token(client)
        seen = []
        for n in range(5):
            seen.append(ready_comparison(client, token, None)["prompt"][0]["content"])
            cov = client.get("/api/leaderboard", headers=headers(token)).json()["coverage"]
            assert cov == {"shown": n + 1, "voted": 0, "prompts": 5}
        assert sorted(seen) == [f"q{i}" for i in range(5)]  # every prompt once
        c = ready_comparison(client, token, None)  # the deck refills; coverage stays complete
        for label in ("left", "tie"):  # two votes on one prompt: one prompt voted on
            client.post(
                f"/api/comparisons/{c['id']}/vote", json={"label": label}, headers=headers(token)
            )
            c = ready_comparison(client, token, c["prompt"][0]["content"])
        cov = client.get("/api/leaderboard", headers=headers(token)).json()["coverage"]
        assert cov == {"shown": 5, "voted": 1, "prompts": 5}
    a.close()
    # a restarted arena forgets what it showed; the votes on disk keep what was voted on
    b = make(tmp_path, prompts=prompts)
    with TestClient(create_app(b), base_url="http://127.0.0.1") as client:
        cov = client.get("/api/leaderboard", headers=headers(page_token(client))).json()
        assert cov["coverage"] == {"shown": 0, "voted": 1, "prompts": 5}
    b.close()


def test_optional_rater_id_is_saved_with_the_vote(tmp_path):
    a = make(tmp_path)
    with TestClient(create_app(a), base_url="http://127.0.0.1") as client:
        token = page_token(client)
        ids = []
        for rater in ["x" * (MAX_RATER_CHARS + 1), 5, "  bo ", None]:
            c = ready_comparison(client, token)
            url = f"/api/comparisons/{c['id']}/vote"
            r = client.post(url, json={"label": "tie", "rater": rater}, headers=headers(token))
            ids.append(r.status_code)
        assert ids == [413, 400, 200, 200]
        assert [row["rater"] for row in read_jsonl(a.votes_path)] == ["bo", None]

    a.close()


def test_report_aggregates_scores_and_warns_on_small_samples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"eval": {"n_boot": 200}}))
    votes_path, scores_path = Path("data/human/votes.jsonl"), scores.SCORES_PATH
    prompt = [{"role": "user", "content": "q"}]
    for i in range(12):  # ppo (left) wins 9 of 12; scores ppo 4, sft 2
        label = "left" if i < 9 else "right"
        append_vote(
            votes_path,
            vote_row(
                comparison_id=f"c{i}",
                prompt=prompt,
                models=("ppo", "sft"),
                replies=("p", "s"),
                label=label,
            ),
        )
        scores.append_scores(
            scores_path,
            scores.score_row(
                comparison_id=f"c{i}",
                prompt=prompt,
                models=("ppo", "sft"),
                replies=("p", "s"),
                scores={"left": all_(4), "right": all_(2)},
            ),
        )
    r = CliRunner().invoke(cli_app, ["arena", "--report", "--params", str(params)])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "metrics/arena.json").read_text())
    assert m["arena/ppo/win_rate"] == pytest.approx(0.75) and "arena/ppo/elo_lo" in m
    assert m["arena/ppo/human/informativeness"] == 4.0
    assert m["arena/sft/human/lifelikeness_lo"] == m["arena/sft/human/lifelikeness_hi"] == 2.0
    assert m["arena/pair/ppo vs sft"] == 12 and m["arena/rated_comparisons"] == 12
    assert "informativeness" in r.output and "too few votes" not in r.output
