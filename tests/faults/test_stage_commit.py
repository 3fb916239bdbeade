"""A stage's outputs change together, on success only: its curves survive a SIGKILL mid-run and
a failure at save time, and a stage that fails a check (too many invalid rows, too many judge
failures) leaves every output of the last good run as it was (rlhf_lab.io.stage_outputs).

Faults come from the ``sitecustomize`` hook of test_durable_outputs.py.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from rlhf_lab.io import read_jsonl

from ..ppo_helpers import one_thread, write_prompts  # noqa: F401
from ..test_stage_prepare_preference import hh_line
from .test_durable_outputs import _cli, _errors, _leftovers, _run, _tree, fault_env  # noqa: F401

SFT = {"sft": {"epochs": 1, "batch_size": 4, "max_length": 64, "lora": {"r": 4, "alpha": 8}}}
"""4 optimiser steps on 16 prompts: a kill at the first training point is mid-run."""
SFT_OUTPUTS = ("plots/train_sft", "metrics/train_sft.json", "models/sft")
CURVES = ("train/loss", "train/lr", "valid/loss")


def _outputs(root: Path, paths: tuple[str, ...]) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for rel in paths:
        path = root / rel
        found |= {rel: path.read_bytes()} if path.is_file() else _tree(path)
    return found


@pytest.fixture
def sft_workspace(tiny_models, tmp_path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(tiny_models["policy"], root / "models/base/policy")
    write_prompts(root, 16)
    (root / "params.yaml").write_text(yaml.safe_dump(SFT))
    return root


@pytest.mark.usefixtures("one_thread")
def test_sigkill_mid_training_leaves_the_previous_curves_whole(sft_workspace, fault_env):  # noqa: F811
    root = sft_workspace
    rc, log = _cli(root, "train_sft")
    assert rc == 0, log
    before = _outputs(root, SFT_OUTPUTS)
    curves = _tree(root / "plots/train_sft")
    assert {"metrics.json", *(f"plots/metrics/{c}.tsv" for c in CURVES)} == set(curves)

    # Killed as it logs its first training point: the valid/loss point of step 0 is written,
    # train/loss.tsv is not yet. dvclive used to empty plots/train_sft at start and write into
    # it, so this left the old curves gone and a one-point valid/loss.tsv.
    rc, log = _run(root, fault_env, "train_sft", fault="kill_on_open:/train/lr.tsv")
    assert rc == -signal.SIGKILL, log
    assert _outputs(root, SFT_OUTPUTS) == before
    assert [p.split("-")[0] for p in _leftovers(root)] == ["plots/.train_sft.tmp"]

    rc, log = _cli(root, "train_sft")
    assert rc == 0, log
    assert _tree(root / "plots/train_sft") == curves and _leftovers(root) == []


def test_a_stage_failing_at_save_changes_none_of_its_outputs(sft_workspace, fault_env):  # noqa: F811
    root = sft_workspace
    assert _cli(root, "train_sft")[0] == 0
    before = _outputs(root, SFT_OUTPUTS)

    # The disk fills while the model is saved, after every curve point was logged: the new
    # curves (complete) and metrics must not replace the old ones without their model.
    rc, log = _run(root, fault_env, "train_sft", fault="enospc:/.sft.tmp-")
    assert rc == 2, log
    assert len(_errors(log)) == 1 and "Traceback" not in log, log
    assert _outputs(root, SFT_OUTPUTS) == before
    assert _leftovers(root) == []


def _write_source(root: Path, good: int, bad: int) -> None:
    lines = [hh_line(f"question {i}", f"a fine answer {i}", f"no {i}") for i in range(good)]
    (root / "pairs.jsonl").write_text("\n".join(lines + ["not json"] * bad) + "\n")


DATA_OUTPUTS = (
    "data/preference",
    "data/prompts",
    "data/invalid",
    "metrics/prepare_preference.json",
)


def test_a_failed_prepare_preference_keeps_the_last_good_record(tmp_path):
    root = tmp_path
    (root / "params.yaml").write_text(yaml.safe_dump({"data": {"source": "pairs.jsonl"}}))
    _write_source(root, good=30, bad=1)
    assert _cli(root, "prepare_preference")[0] == 0
    before = _outputs(root, DATA_OUTPUTS)
    assert len(read_jsonl(root / "data/invalid/pairs.jsonl")) == 1

    # Too many invalid rows: exit 2. data/invalid/ used to be replaced by this run's dropped
    # rows while data/preference/ kept the last good run's pairs.
    _write_source(root, good=3, bad=5)
    rc, log = _cli(root, "prepare_preference")
    assert rc == 2, log
    assert "5 of 8 rows (62.5%) are invalid" in " ".join(log.split())
    assert _outputs(root, DATA_OUTPUTS) == before
    failed = root / ".rlhf-lab/failed/prepare_preference/data/invalid/pairs.jsonl"
    assert [r["line"] for r in read_jsonl(failed)] == [4, 5, 6, 7, 8]
    assert _leftovers(root) == []


def test_a_failed_score_with_llm_keeps_the_last_good_scores(tmp_path, monkeypatch):
    root = tmp_path
    params = {"data": {"source": "pairs.jsonl"}, "judge": {"backend": "none"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    _write_source(root, good=12, bad=0)
    assert _cli(root, "prepare_preference")[0] == 0
    assert _cli(root, "score_with_llm")[0] == 0
    outputs = ("data/scored", "metrics/score_with_llm.json")
    before = _outputs(root, outputs)

    # A judge nobody answers: every item fails, exit 2; the scores of the last good run stay.
    monkeypatch.setenv("RLHF_TEST_JUDGE_KEY", "sk-test")
    params["judge"] = {
        "backend": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "nobody",
        "api_key_env": "RLHF_TEST_JUDGE_KEY",
        "max_retries": 0,
        "timeout_s": 1,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    rc, log = _cli(root, "score_with_llm")
    assert rc == 2, log
    line = " ".join(log.split())
    assert "data/scored/ and metrics/score_with_llm.json are unchanged" in line
    assert _outputs(root, outputs) == before
    failed = root / ".rlhf-lab/failed/score_with_llm"
    n_items = json.loads((failed / "metrics/full/score_with_llm.json").read_text())["judge/items"]
    assert len(read_jsonl(failed / "data/scored/failures.jsonl")) == n_items > 0
    assert _leftovers(root) == []
