"""`rlhf-lab generate` through the CLI on tiny policies: prompts in, replies out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhf_lab.cli import app
from rlhf_lab.errors import DataError
from rlhf_lab.tools.generate import read_prompts


@pytest.fixture
def repo(tiny_models, tmp_path, monkeypatch):
    shutil.copytree(tiny_models["policy"], tmp_path / "models/sft")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("eval:\n  max_new_tokens: 5\n  batch_size: 2\n")
    return tmp_path


def test_prompt_and_file_to_stdout_and_jsonl(repo, tiny_models):
    rows = [
        {"id": "a", "prompt": [{"role": "user", "content": "what is your favorite movie"}]},
        {"prompt": "thank you so much"},
    ]
    (repo / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--prompt",
            "hello how are you",
            "--file",
            "prompts.jsonl",
            "-m",
            "sft",
            "-m",
            str(tiny_models["policy"]),
            "--max-new-tokens",
            "4",
            "--out",
            "replies.jsonl",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "[1] user: hello how are you" in result.output
    assert "[3] user: thank you so much" in result.output
    out = [json.loads(line) for line in (repo / "replies.jsonl").read_text().splitlines()]
    assert [o["prompt"][-1]["content"] for o in out] == [
        "hello how are you",
        "what is your favorite movie",
        "thank you so much",
    ]
    for o in out:
        assert set(o["replies"]) == {"sft", str(tiny_models["policy"])}
        for reply in o["replies"].values():
            assert 1 <= reply["n_tokens"] <= 4 and isinstance(reply["eos"], bool)
    # the same weights under the same seed answer alike, whatever the model is called
    first = out[0]["replies"]
    assert first["sft"] == first[str(tiny_models["policy"])]


def test_text_file_one_prompt_per_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("first question\n\n  second question  \n")
    assert read_prompts(path) == [
        [{"role": "user", "content": "first question"}],
        [{"role": "user", "content": "second question"}],
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": [{"role": "user"}]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: 'prompt' must be text or a list"):
        read_prompts(bad)


def test_missing_model_is_one_line(repo):
    result = CliRunner().invoke(app, ["generate", "--prompt", "hi", "-m", "ppo"])
    assert result.exit_code == 2
    assert "model 'ppo': models/ppo holds no trained model" in result.output


def test_no_prompt_is_an_error(repo):
    result = CliRunner().invoke(app, ["generate", "-m", "sft"])
    assert result.exit_code == 2
    assert "give --prompt TEXT, --file PATH or --code CODE" in result.output


UTILS = '''import math


def area(width, height):
    """Old docstring: must not reach the prompt."""
    return width * height


class Shape:
    def scale(self, factor):
        if factor <= 0:
            raise ValueError("factor")
        return factor
'''


def test_docstring_code_side_by_side(repo):
    shutil.copytree(repo / "models/sft", repo / "models/ppo")
    (repo / "utils.py").write_text(UTILS)
    result = CliRunner().invoke(
        app,
        [
            "generate",
            "--task",
            "docstring",
            "--code",
            "utils.py",
            "--code",
            "def clamp(x, lo, hi): return max(lo, min(x, hi))",
            "-m",
            "sft",
            "-m",
            "ppo",
            "--out",
            "docs.jsonl",
        ],
    )
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in (repo / "docs.jsonl").read_text().splitlines()]
    # one row per function: two in the file (a method included), one snippet
    assert [o["code"].splitlines()[0] for o in out] == [
        "def area(width, height):",
        "def scale(self, factor):",
        "def clamp(x, lo, hi): return max(lo, min(x, hi))",
    ]
    assert "Old docstring" not in out[0]["code"] and "Old docstring" not in str(out[0]["prompt"])
    assert out[0]["prompt"][0]["content"].startswith("Write a docstring for this Python function")
    for o in out:
        assert set(o["replies"]) == {"sft", "ppo"}
        # the same weights under one seed: the two columns agree
        assert o["replies"]["sft"]["text"] == o["replies"]["ppo"]["text"]
    # side by side: one table row per function holds both models' docstrings
    header = next(line for line in result.output.splitlines() if "function" in line)
    assert "sft" in header and "ppo" in header
    assert result.output.count("reward ") == 2 * 3
    assert "def area(width, height):" in result.output


def test_code_needs_the_docstring_task(repo):
    result = CliRunner().invoke(app, ["generate", "--code", "def f(): pass", "-m", "sft"])
    assert result.exit_code == 2
    assert "--code needs --task docstring (task is 'chat')" in result.output
    missing = CliRunner().invoke(
        app, ["generate", "--task", "docstring", "--code", "nope.py", "-m", "sft"]
    )
    assert missing.exit_code == 2 and "--code nope.py: file not found" in missing.output


def test_aliases_and_held_out_prompts_are_pipeline_outputs():
    """generate's and the arena's short names, and the prompts the arena and analyze_rewards
    read by default, are what dvc.yaml's stages make (so `dvc repro -s` can make them)."""
    from rlhf_lab import outputs
    from rlhf_lab.arena.command import DEFAULT_MODELS
    from rlhf_lab.tools.generate import HELD_OUT_PROMPTS, MODEL_ALIASES

    root = Path(__file__).resolve().parents[1]
    made_by = {n: outputs.stage_of(p, root / "dvc.yaml") for n, p in MODEL_ALIASES.items()}
    assert made_by == {
        "base": "prepare_models",
        "sft": "train_sft",
        "ppo": "train_ppo",
        "dpo": "train_dpo",
    }
    assert DEFAULT_MODELS == ("models/sft", "models/ppo", "models/dpo")
    assert outputs.stage_of(HELD_OUT_PROMPTS, root / "dvc.yaml") == "train_recommender"
