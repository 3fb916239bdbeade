"""End to end: `dvc repro` of this repo's dvc.yaml on the tiny profile, in a scratch git repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_lab.config import documented_yaml, parse_params
from rlhf_lab.testing import build_tiny_encoder, build_tiny_policy

from .conftest import REPO
from .test_dvc_plots import assert_plots_once

DVC = [sys.executable, "-m", "dvc"]
METRIC_COLUMNS = 40
"""Budget for the metric columns of ``dvc exp show`` with no flags (the headline files only:
``rlhf_lab.headline.HEADLINE``); the full metrics are outputs DVC does not tabulate."""


TABLE_COLUMNS = 200
"""Budget for the columns of the `dvc exp show` table that docs/experiments.md tells a reader to
compare experiments with (``--only-changed``)."""
DEP_COLUMNS = 52
"""Budget for the dependency columns of ``dvc exp show`` with no flags: the src/ paths of
dvc.yaml (packages as directories, tests/test_dvc_deps.py) and the data and model deps."""
FIXED_COLUMNS = ["Experiment", "rev", "typ", "Created", "parent"]


def _leaves(tree: dict) -> int:
    """Columns DVC makes of a params or metrics file: one per leaf (a list is one value)."""
    return sum(_leaves(v) if isinstance(v, dict) and v else 1 for v in tree.values())


def exp_show_columns(repo: Path, *flags: str) -> dict[str, int]:
    """The columns of `dvc exp show [flags]`: its CSV header, split by kind (from --json)."""
    header = _run([*DVC, "exp", "show", "--csv", *flags], repo).stdout.splitlines()[0].split(",")
    rows = json.loads(_run([*DVC, "exp", "show", "--json", *flags], repo).stdout)
    (workspace,) = [r["data"] for r in rows if r["rev"] == "workspace"]
    counts = {
        "fixed": sum(c in FIXED_COLUMNS for c in header),
        "metrics": sum(_leaves(m["data"]) for m in workspace["metrics"].values()),
        "params": sum(_leaves(p["data"]) for p in workspace["params"].values()),
        "deps": len(workspace["deps"]),
    }
    if not flags:  # --json ignores --only-changed: only the no-flag table splits exactly
        assert header[:5] == FIXED_COLUMNS and len(header) == sum(counts.values()), counts
    return {**counts, "total": len(header)}


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture
def tiny_repo(tmp_path) -> Path:
    return make_tiny_repo(tmp_path / "repo")


def make_tiny_repo(repo: Path) -> Path:
    """A git + DVC repo with this project's dvc.yaml, src/ and the tiny profile as params."""
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    # DVC needs every declared param key in params.yaml: write the full documented file with
    # the tiny profile's overrides applied.
    tiny = parse_params(yaml.safe_load((REPO / "tests/profiles/tiny.yaml").read_text()))
    (repo / "params.yaml").write_text(documented_yaml(tiny))
    shutil.copytree(REPO / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "data/human", repo / "data/human")  # a prepare_preference dep
    # the arena's metrics file (written by `arena --report`, not a stage) is committed
    (repo / "metrics").mkdir(exist_ok=True)
    shutil.copy(REPO / "metrics/arena.json", repo / "metrics/arena.json")
    build_tiny_policy(repo / "tiny-models/policy")
    build_tiny_encoder(repo / "tiny-models/encoder")
    _run(["git", "init", "-q"], repo)
    _run(["git", "config", "user.email", "t@example.com"], repo)
    _run(["git", "config", "user.name", "t"], repo)
    _run([*DVC, "init", "-q"], repo)
    _run([*DVC, "config", "core.analytics", "false"], repo)
    shutil.copy(REPO / ".dvcignore", repo / ".dvcignore")  # __pycache__ beside the src deps
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "tiny"], repo)
    return repo


def _remote_round_trip(repo: Path) -> None:
    """A team's path: `dvc push` to a local-directory remote from one clone, `dvc pull` in
    another reproduces the models and reports, and nothing is left to rerun."""
    remote = repo.parent / "dvc-remote"
    _run([*DVC, "remote", "add", "-d", "store", str(remote)], repo)
    _run(["git", "commit", "-qam", "a DVC remote"], repo)
    _run([*DVC, "push"], repo)
    clone = repo.parent / "clone"
    _run(["git", "clone", "-q", str(repo), str(clone)], repo.parent)
    assert not (clone / "models/ppo").exists()
    _run([*DVC, "pull"], clone)
    for path in ("models/ppo/model.safetensors", "models/dpo/model.safetensors", "reports"):
        assert (clone / path).exists(), path
    assert (clone / "reports/samples.jsonl").read_bytes() == (
        repo / "reports/samples.jsonl"
    ).read_bytes()
    status = json.loads(_run([*DVC, "status", "--json"], clone).stdout)
    assert status == {"track_inputs": ["always changed"]}


def test_full_dvc_repro_then_experiment(tiny_repo):
    """The whole DAG on the tiny profile; a no-op repro; an experiment with a changed param."""
    _run([*DVC, "repro"], tiny_repo)
    metrics = json.loads((tiny_repo / "metrics/full/evaluate.json").read_text())
    for policy in ("ppo", "dpo"):  # eval.policies' default: every arm against SFT
        assert metrics[f"verdict/{policy}/decision"] in {"proceed", "adjust", "reconsider"}
        assert 0.0 <= metrics[f"delta/{policy}/win_rate_rm"] <= 1.0
        assert 0.0 <= metrics[f"delta/{policy}/win_rate_rm_lc"] <= 1.0
    for stage in (
        "prepare_preference",
        "score_with_llm",
        "train_reward",
        "train_sft",
        "train_dpo",
        "train_critic",
        "train_ppo",
        "train_recommender",  # chat: the skip marker
    ):
        assert (tiny_repo / f"metrics/{stage}.json").is_file(), stage
    assert (tiny_repo / "models/ppo/model.safetensors").is_file()
    assert (tiny_repo / "models/dpo/model.safetensors").is_file()
    assert (tiny_repo / "reports/report.md").is_file()
    # Nothing stale. track_inputs is always_changed (it re-fingerprints data.source and the
    # local models on every repro), so DVC always lists it; every other stage is up to date.
    status = json.loads(_run([*DVC, "status", "--json"], tiny_repo).stdout)
    assert status == {"track_inputs": ["always changed"]}
    rows = json.loads(_run([*DVC, "exp", "show", "--json"], tiny_repo).stdout)
    (workspace,) = [r for r in rows if r["rev"] == "workspace"]
    shown = workspace["data"]["metrics"]
    columns = sum(len(m["data"]) for m in shown.values())
    assert 20 <= columns <= METRIC_COLUMNS, {k: sorted(m["data"]) for k, m in shown.items()}
    assert not any(path.startswith("metrics/full/") for path in shown)
    # The whole table. DVC (3.67) shows every key of params.yaml whatever the stages declare,
    # so the params alone are over 170 columns: the reading table is --only-changed (below).
    table = exp_show_columns(tiny_repo)
    assert table["params"] == _leaves(yaml.safe_load((tiny_repo / "params.yaml").read_text()))
    assert table["metrics"] <= METRIC_COLUMNS and table["deps"] <= DEP_COLUMNS, table
    print(f"dvc exp show columns: {table}")
    assert (
        shown["metrics/evaluate.json"]["data"]["verdict/ppo/decision"]
        == (metrics["verdict/ppo/decision"])
    )
    # every declared curve renders from the tiny run's files, each once, dvclive's
    # metrics.json none of them
    rendered = str(tiny_repo.parent / "dvc_plots")  # outside the repo: not committed below
    plots = json.loads(_run([*DVC, "plots", "show", "--json", "-o", rendered], tiny_repo).stdout)
    assert not plots.get("errors"), plots["errors"]
    assert_plots_once(plots, yaml.safe_load((tiny_repo / "dvc.yaml").read_text()))
    _run(["git", "add", "-A"], tiny_repo)
    _run(["git", "commit", "-qm", "baseline"], tiny_repo)
    _remote_round_trip(tiny_repo)
    _run([*DVC, "exp", "run", "-S", "ppo.clip=0.1", "-n", "clip01"], tiny_repo)
    shown = _run([*DVC, "exp", "show", "--json"], tiny_repo).stdout
    assert "clip01" in shown and "0.1" in shown
    header = _run([*DVC, "exp", "show", "--csv", "--only-changed"], tiny_repo).stdout
    header = header.splitlines()[0].split(",")
    assert "ppo.clip" in header and len(header) <= TABLE_COLUMNS, header
    print(f"dvc exp show --only-changed columns: {len(header)}")
    # --all: a clip the tiny run never reaches may leave every headline number unchanged
    diff = json.loads(_run([*DVC, "metrics", "diff", "--all", "--json"], tiny_repo).stdout)
    assert {"metrics/evaluate.json", "metrics/train_ppo.json"} <= set(diff)
    # compare on a real repo: dvc exp show + each experiment's samples read from the DVC cache
    rlhf = str(Path(sys.executable).parent / "rlhf-lab")
    _run([rlhf, "compare", "--all", "--out", "compare.json"], tiny_repo)
    result = json.loads((tiny_repo / "compare.json").read_text())
    (ppo,) = [a for a in result["arms"] if a["model"] == "ppo"]
    # the baseline commit, then clip01 unless its results are identical (a clip the tiny run
    # never reaches leaves the same model: one run, not two seeds)
    first, *rest = ppo["experiments"]
    assert first != "clip01" and rest in ([], ["clip01"])
    assert 0.0 <= ppo["metrics"]["win_rate_rm"]["mean"] <= 1.0
    n_prompts = metrics["eval/num_prompts"]  # every test prompt, paired
    (dpo,) = [a for a in result["arms"] if a["model"] == "dpo"]
    pairs = {frozenset((t["a"], t["b"])): t["n_prompts"] for t in result["tests"]}
    assert pairs == {
        frozenset(pair): n_prompts
        for pair in (("sft", ppo["arm"]), ("sft", dpo["arm"]), (ppo["arm"], dpo["arm"]))
    }


def test_dvc_repro_prepare_models_then_up_to_date(tiny_repo):
    _run([*DVC, "repro", "prepare_models"], tiny_repo)
    assert (tiny_repo / "models/base/policy/model.safetensors").is_file()
    assert (tiny_repo / "models/base/encoder/model.safetensors").is_file()
    status = _run([*DVC, "status", "prepare_models"], tiny_repo)
    assert "up to date" in status.stdout.lower()
    dag = _run([*DVC, "dag", "--md"], tiny_repo).stdout
    for stage in ("train_ppo", "evaluate", "train_critic", "score_with_llm"):
        assert stage in dag


def _docstring_rows(n: int) -> list[dict]:
    """Small functions with docstrings, three in four with a doctest example (a local source
    file in the Barone & Sennrich format, so the test needs no shared data)."""
    rows = []
    for i in range(n):
        code = f"def scale_{i}(value, factor={i}):\n    if factor < 0:\n        raise ValueError\n"
        code += "    return value * factor\n"
        doc = f"Return value times factor ({i} unless given); negative factors raise."
        if i % 4 != 3:
            doc += f"\n\n>>> scale_{i}(2)\n{2 * i}"
        rows.append({"id": f"s{i}", "metadata": "test", "code": code, "docstring": doc})
    return rows


def test_docstring_preset_dvc_repro(tiny_repo):
    """The docstring preset on the tiny profile through dvc repro: every stage, then evaluate
    decides by the Phase-1 protocol and reports the docstring metrics."""
    from rlhf_lab import presets

    source = tiny_repo / "functions.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in _docstring_rows(40)))
    tiny = yaml.safe_load((REPO / "tests/profiles/tiny.yaml").read_text())
    del tiny["task"]
    raw = presets.merge(presets.preset_params("docstring").model_dump(mode="json"), tiny)
    raw["data"]["source"] = "functions.jsonl"
    (tiny_repo / "params.yaml").write_text(documented_yaml(parse_params(raw)))
    _run(["git", "add", "-A"], tiny_repo)
    _run(["git", "commit", "-qm", "docstring"], tiny_repo)
    _run([*DVC, "repro"], tiny_repo)
    m = json.loads((tiny_repo / "metrics/full/evaluate.json").read_text())
    for who in ("sft", "ppo", "dpo"):
        assert 0.0 <= m[f"{who}/reward/total_with_reference"] <= 1.0
        assert 0.0 <= m[f"{who}/meteor"] <= 1.0
        assert m[f"{who}/doctest/replies"] >= 1  # test functions whose reference has an example
    assert m["ref/doctest/pass_rate"] == 1.0  # the references' examples pass in the sandbox
    for policy in ("ppo", "dpo"):
        assert m[f"verdict/{policy}/rule"] == "protocol"
        assert m[f"verdict/{policy}/decision"] in {"proceed", "adjust", "reconsider"}
        assert m[f"verdict/{policy}/decided_by"]
    assert "## Phase 1" in (tiny_repo / "reports/report.md").read_text()


def _redial_dialogues(n: int, pairs: int = 8) -> list[dict]:
    """ReDial-format dialogues (a local source, so the test needs no shared data): a seeker
    who loved movie 1<i> is suggested its partner 2<i>, each pairing in several dialogues, so
    the recommender has something to learn and the grounded prompts a gold candidate."""
    out = []
    for d in range(n):
        i = d % pairs
        liked, gold = f"1{i:02d}", f"2{i:02d}"
        out.append(
            {
                "conversationId": str(1000 + d),
                "initiatorWorkerId": 1,
                "respondentWorkerId": 2,
                "movieMentions": {liked: f"Liked Film {i}  (1990)", gold: f"Partner {i} (2001)"},
                "initiatorQuestions": {
                    liked: {"suggested": 0, "seen": 1, "liked": 1},
                    gold: {"suggested": 1, "seen": 0, "liked": 2},
                },
                "respondentQuestions": {},
                "messages": [
                    {"text": f"hi there, seeker {d} here", "senderWorkerId": 1, "messageId": 1},
                    {"text": f"hello {d}! what do you like?", "senderWorkerId": 2, "messageId": 2},
                    {"text": f"I really loved @{liked} ({d})", "senderWorkerId": 1, "messageId": 3},
                    {
                        "text": f"Then try @{gold}, you will like it",
                        "senderWorkerId": 2,
                        "messageId": 4,
                    },
                    {"text": f"thanks, sounds great ({d})!", "senderWorkerId": 1, "messageId": 5},
                    {"text": "enjoy the movie!", "senderWorkerId": 2, "messageId": 6},
                ],
            }
        )
    return out


def test_crs_preset_dvc_repro(tiny_repo):
    """The crs preset on the tiny profile through dvc repro: the recommender grounds every
    split, SFT/PPO/DPO train on the grounded prompts, evaluate reports the crs reply metrics."""
    from rlhf_lab import presets

    source = tiny_repo / "redial.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in _redial_dialogues(60)))
    ids = [f"{k}{i:02d}" for k in (1, 2) for i in range(8)]
    names = [f"Liked Film {i} (1990)" for i in range(8)] + [f"Partner {i} (2001)" for i in range(8)]
    csv = "movieId,movieName\n" + "".join(f"{i},{n}\n" for i, n in zip(ids, names, strict=True))
    (tiny_repo / "movies.csv").write_text(csv)
    tiny = yaml.safe_load((REPO / "tests/profiles/tiny.yaml").read_text())
    del tiny["task"]
    raw = presets.merge(presets.preset_params("crs").model_dump(mode="json"), tiny)
    raw["data"] |= {"source": "redial.jsonl", "catalogue": "movies.csv", "max_examples": 0}
    raw["recommender"] = {"folds": 3, "candidates": 3}
    (tiny_repo / "params.yaml").write_text(documented_yaml(parse_params(raw)))
    _run(["git", "add", "-A"], tiny_repo)
    _run(["git", "commit", "-qm", "crs"], tiny_repo)
    _run([*DVC, "repro"], tiny_repo)
    rec = json.loads((tiny_repo / "metrics/full/train_recommender.json").read_text())
    assert rec["recommender/recall@1"] == 1.0  # every pairing is in several train dialogues
    assert rec["grounding/test/candidate_hit"] == 1.0
    assert 0.5 <= rec["grounding/train/candidate_hit"] <= 1.0
    for split in ("train", "test"):
        rows = [json.loads(x) for x in (tiny_repo / f"data/grounded/{split}.jsonl").open()]
        assert rows and all(len(r["meta"]["candidates"]) == 3 for r in rows)
        assert all("[Recommender candidates]" in r["prompt"][-1]["content"] for r in rows)
    # the reward model, the critic and DPO learn on the same grounded prompts
    scored = [json.loads(x) for x in (tiny_repo / "data/scored/train.jsonl").open()]
    assert scored and all(len(r["meta"]["candidates"]) == 3 for r in scored)
    assert all("[Recommender candidates]" in r["prompt"][-1]["content"] for r in scored)
    m = json.loads((tiny_repo / "metrics/full/evaluate.json").read_text())
    for who in ("sft", "ppo", "dpo"):
        for key in ("rec_hit_rate", "rec_rate", "hallucinated_rate", "reward/crs/empathy"):
            assert 0.0 <= m[f"{who}/{key}"] <= 1.0, key
        assert 0.0 <= m[f"{who}/bleu1"] <= 100.0
        assert 0.0 <= m[f"{who}/distinct1"] <= 1.0 and 0.0 <= m[f"{who}/distinct2"] <= 1.0
    assert m["ref/rec_hit_rate"] > 0.0  # the human suggestions name the gold
    for policy in ("ppo", "dpo"):  # paired CIs and tests of the crs rates against SFT
        lo, hi = m[f"delta/{policy}/rec_hit_rate_ci_lo"], m[f"delta/{policy}/rec_hit_rate_ci_hi"]
        assert -1.0 <= lo <= m[f"delta/{policy}/rec_hit_rate"] <= hi <= 1.0
        assert 0.0 <= m[f"delta/{policy}/hallucinated_rate_pvalue_wilcoxon"] <= 1.0
    assert m["ref/hallucinated_rate"] == 0.0
