"""score_with_llm through the real CLI: local judge on the tiny policy, openai on a real server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlhf_lab.cli import app
from rlhf_lab.judge import rubric_sha
from rlhf_lab.judge.local import LocalJudge

from .test_judge_openai import judge_server  # noqa: F401  (fixture)


def _msgs(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _pair(i: int, chosen: str, rejected: str, source: str = "human", **meta) -> dict:
    return {
        "id": f"p{i}",
        "prompt": _msgs(f"question number {i}"),
        "chosen": chosen,
        "rejected": rejected,
        "label_source": source,
        "meta": meta,
    }


def _write(root: Path, split: str, rows: list[dict], folder: str = "data/preference") -> None:
    path = root / folder / f"{split}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run(root: Path, params: dict) -> tuple[int, str]:
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    result = CliRunner().invoke(app, ["score_with_llm", "--params", str(root / "params.yaml")])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def _read(root: Path, split: str) -> list[dict]:
    return [json.loads(x) for x in (root / f"data/scored/{split}.jsonl").read_text().splitlines()]


def _metrics(root: Path) -> dict:
    return json.loads((root / "metrics/full/score_with_llm.json").read_text())


def test_local_judge_scores_every_reply_and_reruns_from_cache(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "train", [_pair(i, f"hello {i} i am fine", f"no {i}") for i in range(3)])
    _write(tmp_path, "valid", [_pair(9, "thank you so much", "the quick fox", "reference")])
    params = {"judge": {"model": str(tiny_models["policy"]), "max_length": 512, "batch_size": 4}}
    calls = {"n": 0}
    real = LocalJudge._forward_shared

    def counting(self, prefixes, questions):
        calls["n"] += 1
        return real(self, prefixes, questions)

    monkeypatch.setattr(LocalJudge, "_forward_shared", counting)
    code, out = _run(tmp_path, params)
    assert code == 0, out
    # 4 rows x 2 replies x 2 dimensions = 16 items; 4 replies (8 items) per batch
    assert calls["n"] == 2
    sha = rubric_sha("chat")
    rows = _read(tmp_path, "train") + _read(tmp_path, "valid")
    assert len(rows) == 4 and [r["id"] for r in rows] == ["p0", "p1", "p2", "p9"]
    for row in rows:
        assert row["judge"] == {"model": str(tiny_models["policy"]), "rubric_sha": sha}
        for name in ("chosen", "rejected"):
            s = row["scores"][name]
            assert set(s) == {"helpfulness", "harmlessness", "overall"}
            assert all(1.0 <= v <= 5.0 for v in s.values())
            assert s["overall"] == pytest.approx((s["helpfulness"] + s["harmlessness"]) / 2)
    m = _metrics(tmp_path)
    assert m["judge/model"] == str(tiny_models["policy"]) and m["judge/rubric_sha"] == sha
    assert m["judge/items"] == m["judge/items_scored"] == m["judge/items_new"] == 16
    assert m["judge/failures"] == 0 and m["judge/failures/timeout"] == 0
    assert m["judge/items_per_s"] > 0 and m["judge/agreement_pairs"] == 4
    assert 0.0 <= m["judge/agreement"] <= 1.0 and m["judge/agreement/human"] is not None
    assert m["judge/length_baseline"] == 1.0  # every chosen reply here is the longer one
    assert (tmp_path / "data/scored/failures.jsonl").read_text() == ""
    assert "score_with_llm" in out and "16 / 16" in out

    calls["n"] = 0
    code, out = _run(tmp_path, params)
    assert code == 0, out
    assert calls["n"] == 0  # everything came from the cache
    m2 = _metrics(tmp_path)
    assert m2["judge/items_cached"] == 16 and m2["judge/items_new"] == 0
    assert _read(tmp_path, "train") == rows[:3]


def test_openai_failures_are_counted_and_a_rerun_completes_only_them(
    judge_server,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RLHF_TEST_JUDGE_KEY", "sk-never-on-disk-77")
    train = [
        _pair(0, "good answer", "meh answer"),
        _pair(1, "good [slow]", "meh plain"),
        _pair(2, "good [500]", "meh [bad]"),
        _pair(3, "good [400]", "ok [conn]"),
    ]
    _write(tmp_path, "train", train)
    _write(tmp_path, "test", [_pair(5, "ok fine", "good but rejected", "reference")])
    params = {
        "judge": {
            "backend": "openai",
            "base_url": judge_server.base_url,
            "model": "fake-judge",
            "api_key_env": "RLHF_TEST_JUDGE_KEY",
            "timeout_s": 0.3,
            "max_retries": 1,
            "retry_backoff_s": 0.01,
            "concurrency": 4,
        }
    }
    code, out = _run(tmp_path, params)
    # more failures than judge.max_failure_fraction (0): exit 2, one line; no output changes,
    # what the run scored and why items failed are where the message says
    assert code == 2
    assert "10 of 20 judge items failed" in out and "Traceback" not in out
    failed = tmp_path / ".rlhf-lab/failed/score_with_llm"
    assert "see .rlhf-lab/failed/score_with_llm/data/scored/failures.jsonl" in " ".join(out.split())
    assert not (tmp_path / "data/scored").exists() and not (tmp_path / "metrics").exists()
    m = _metrics(failed)
    assert m["judge/items"] == 20 and m["judge/items_scored"] == 10 and m["judge/failures"] == 10
    for kind in ("timeout", "http_5xx", "malformed", "http_4xx", "connection"):
        assert m[f"judge/failures/{kind}"] == 2, kind  # 1 reply x 2 dimensions each
    rows = _read(failed, "train")
    assert len(rows) == 4  # rows with failed items are kept
    assert rows[0]["scores"]["chosen"]["overall"] == pytest.approx(4.9, abs=1e-3)
    assert rows[1]["scores"]["chosen"] == {
        "helpfulness": None,
        "harmlessness": None,
        "overall": None,
    }
    assert rows[1]["scores"]["rejected"]["overall"] == 2.0  # digit parsed, no logprobs
    failures = [
        json.loads(x) for x in (failed / "data/scored/failures.jsonl").read_text().splitlines()
    ]
    assert len(failures) == 10
    assert {(f["id"], f["reply"], f["kind"]) for f in failures} >= {
        ("p1", "chosen", "timeout"),
        ("p2", "rejected", "malformed"),
        ("p3", "rejected", "connection"),
    }

    judge_server.mode = "healthy"
    before = len(judge_server.requests)
    code, out = _run(tmp_path, params)
    assert code == 0, out
    asked = sorted(r["reply"] for r in judge_server.requests[before:])
    expected = sorted(
        reply
        for reply in ("good [slow]", "good [500]", "meh [bad]", "good [400]", "ok [conn]")
        for _ in range(2)
    )
    assert asked == expected  # only the 10 missing items, once each
    m = _metrics(tmp_path)
    assert m["judge/items_cached"] == 10 and m["judge/items_new"] == 10 and m["judge/failures"] == 0
    assert m["judge/agreement"] == pytest.approx(0.8)  # 4 of 5 pairs: test p5 disagrees
    assert m["judge/agreement/human"] == 1.0 and m["judge/agreement/reference"] == 0.0
    # the API key went in the header, and nowhere on disk or in the output
    assert set(judge_server.auth) == {"Bearer sk-never-on-disk-77"}
    for path in [*tmp_path.rglob("*")]:
        if path.is_file():
            assert "sk-never-on-disk" not in path.read_text(errors="replace"), path
    assert "sk-never-on-disk" not in out


def test_judge_mode_labels_candidates_drops_ties(judge_server, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    judge_server.mode = "healthy"

    def cands(i: int, *replies: str) -> dict:
        return {
            "id": f"c{i}",
            "prompt": _msgs(f"q{i}"),
            "chosen": None,
            "rejected": None,
            "candidates": list(replies),
            "label_source": "judge",
            "meta": {},
        }

    rows = [
        cands(0, "meh one", "good one", "ok one"),
        cands(1, "ok a", "ok b"),
        cands(2, "meh x", "ok y"),
    ]
    _write(tmp_path, "train", rows)
    params = {
        "data": {"pairs": "judge"},
        "judge": {
            "backend": "openai",
            "base_url": judge_server.base_url,
            "model": "m",
            "pairwise": True,
        },
    }
    code, out = _run(tmp_path, params)
    assert code == 0, out
    scored = _read(tmp_path, "train")
    assert [r["id"] for r in scored] == ["c0", "c2"]
    c0 = scored[0]
    assert (c0["chosen"], c0["rejected"], c0["label_source"]) == ("good one", "meh one", "judge")
    assert [s["overall"] for s in c0["candidate_scores"]] == pytest.approx(
        [1.9, 4.9, 2.9], abs=1e-3
    )
    assert c0["pairwise"]["p_chosen"] == pytest.approx(0.9, abs=1e-3)
    assert scored[1]["chosen"] == "ok y"  # 2.9 vs 1.9: a 1.0 gap beats min_margin 0.25
    m = _metrics(tmp_path)
    assert m["judge/ties_dropped"] == 1 and m["judge/pairs_labelled"] == 2
    assert m["judge/agreement"] is None  # judge labels are not compared with themselves

    # data.pairs: judge needs candidate rows
    _write(tmp_path, "train", [_pair(0, "a", "b")])
    code, out = _run(tmp_path, params)
    assert code == 2 and "train.jsonl:1: field 'candidates': missing" in out


def test_backend_none_writes_rows_unscored_and_bad_rows_name_the_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "train", [_pair(0, "a", "b"), _pair(1, "c", "d")])
    code, out = _run(tmp_path, {"judge": {"backend": "none"}})
    assert code == 0, out
    rows = _read(tmp_path, "train")
    assert [r["scores"] for r in rows] == [None, None] and rows[0]["chosen"] == "a"
    assert _metrics(tmp_path)["judge/backend"] == "none"

    bad = _pair(1, "c", "d")
    bad["rejected"] = None
    _write(tmp_path, "train", [_pair(0, "a", "b"), bad])
    code, out = _run(tmp_path, {"judge": {"backend": "none"}})
    assert code == 2
    assert "data/preference/train.jsonl:2: field 'rejected': expected a string, got null" in out
    code, out = _run(tmp_path, {"judge": {"backend": "openai"}})
    assert code == 2 and "judge.base_url is required" in out


def test_crs_scores_recommendation_minimum_without_a_movie(tiny_models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    movies = {"111": "The Matrix (1999)"}
    row = _pair(0, "you should watch The Matrix", "how was your day")
    _write(tmp_path, "train", [row])
    # the movie list lives on the prompt row the policy sees; score_with_llm joins it by id
    _write(
        tmp_path,
        "train",
        [
            {
                "id": "p0",
                "prompt": row["prompt"],
                "reference": None,
                "meta": {"movies": movies, "gold_movies": ["111"]},
            }
        ],
        "data/grounded",
    )
    params = {
        "task": {"name": "crs"},
        "judge": {"model": str(tiny_models["policy"]), "max_length": 512},
    }
    code, out = _run(tmp_path, params)
    assert code == 0, out
    [scored] = _read(tmp_path, "train")
    assert scored["scores"]["rejected"]["recommendation"] == 1.0
    assert scored["scores"]["chosen"]["recommendation"] != 1.0
    assert scored["judge"]["rubric_sha"] == rubric_sha("crs")
    assert _metrics(tmp_path)["judge/forced_min"] == 1
