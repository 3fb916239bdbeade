"""Fixture builders shared by the critic / PPO tests: data rows and tiny model directories."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from rlhf_lab import models
from rlhf_lab.config import LoraConfig
from rlhf_lab.io import write_jsonl
from rlhf_lab.ppo.model import new_critic, save_critic
from rlhf_lab.reward_scorer import save_reward_stats

TINY_LORA = LoraConfig(r=4, alpha=8)
TINY_PPO = {
    "steps": 3,
    "batch_size": 4,
    "minibatches": 2,
    "epochs": 1,
    "max_new_tokens": 6,
    "max_prompt_length": 48,
    "lora": {"r": 4, "alpha": 8},
}
"""The ``ppo`` params of the train_ppo stage tests: 3 steps of 4 tiny rollouts (seconds)."""
USER_TURNS = [
    "hello how are you doing today",
    "what is your favorite movie",
    "i really like science fiction films",
    "def add(a, b): return a + b",
    "the quick brown fox jumps over the lazy dog",
    "sorry to hear that, i hope you feel better soon",
    "i am fine thanks and you",
    "you should watch the matrix it is great",
]
GOOD = ["thank you so much, that sounds lovely", "you should watch the matrix it is great"]
BAD = ["no", "dog dog dog"]


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run a test on one torch thread (restored after): these tiny models gain nothing from
    more, and on a shared 2-core machine OpenMP threads spinning against other jobs make
    them many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def prompt_rows(n: int = 8) -> list[dict[str, Any]]:
    """Prompt rows (``rlhf_lab.data.rows.PromptRow``; the last one has two turns, to exercise
    multi-turn prompts)."""
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": USER_TURNS[i % len(USER_TURNS)]}]
        if i == n - 1:
            prompt = [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi there"},
                *prompt,
            ]
        rows.append({"id": f"p{i}", "prompt": prompt, "reference": GOOD[i % 2], "meta": {}})
    return rows


def scored_rows(n: int, null_every: int = 0) -> list[dict[str, Any]]:
    """Scored preference rows whose judge score depends on the reply text (so a critic can
    learn it); every ``null_every``-th row has ``scores: null``."""
    rows = []
    for i in range(n):
        good, bad = GOOD[i % 2], BAD[i % 2]
        scores = {
            "chosen": {"helpfulness": 4.0 + (i % 3) / 3, "overall": 4.0 + (i % 3) / 3},
            "rejected": {"helpfulness": 1.5, "overall": 1.0 + (i % 2) / 2},
        }
        rows.append(
            {
                "id": f"r{i}",
                "prompt": [{"role": "user", "content": USER_TURNS[i % len(USER_TURNS)]}],
                "chosen": good,
                "rejected": bad,
                "label_source": "human",
                "meta": {},
                "scores": None if null_every and i % null_every == 0 else scores,
                "judge": {"model": "test", "rubric_sha": "0"},
            }
        )
    return rows


def copy_policy(src: Path, dst: Path, embed_scale: float = 1.0) -> Path:
    """A copy of a policy dir; ``embed_scale`` sharpens a random model's (tied) embeddings.

    The random 2-layer Llama has embeddings of std 0.02, so its next-token distribution is
    nearly uniform whatever the hidden state: LoRA cannot move it far. Scaling the embeddings
    gives the policy real leverage over its outputs, as a trained model has.
    """
    if embed_scale == 1.0:
        shutil.copytree(src, dst)
        return dst
    tok = models.load_tokenizer(src)
    lm = models.load_causal_lm(src)
    with torch.no_grad():
        lm.get_input_embeddings().weight.mul_(embed_scale)
    models.save_model(lm, tok, dst)
    return dst


def make_critic(sft_dir: Path, out_dir: Path, zero_head: bool = False, seed: int = 0) -> Path:
    """An untrained critic saved in the train_critic format (``zero_head``: V = 0 everywhere)."""
    torch.manual_seed(seed)
    critic = new_critic(sft_dir, TINY_LORA)
    if zero_head:
        torch.nn.init.zeros_(critic.value_head.linear.weight)
    save_critic(critic, out_dir, score_mean=0.0, score_std=1.0)
    return out_dir


def make_reward_model(encoder_dir: Path, out_dir: Path) -> Path:
    """A random reward model (encoder + 1-logit head) with normalisation stats."""
    torch.manual_seed(0)
    tok = models.load_tokenizer(encoder_dir, padding_side="right")
    model = models.load_sequence_classifier(encoder_dir, num_labels=1)
    models.save_model(model, tok, out_dir)
    save_reward_stats(out_dir, mean=0.1, std=0.5, max_length=64)
    return out_dir


def write_prompts(root: Path, n: int = 8) -> None:
    for split in ("train", "valid", "test"):
        write_jsonl(root / "data/grounded" / f"{split}.jsonl", prompt_rows(n))
