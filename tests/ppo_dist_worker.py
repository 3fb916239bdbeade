"""One PPO run on fixed replies, as 1 process (``python``) or N (``accelerate launch``).

Used by ``tests/test_accelerate_launch.py`` to compare 1 and 2 processes. Sampling is replaced
by a fixed reply per prompt (a pure function of the prompt's tokens), because each process
samples from its own RNG stream: with the replies fixed, everything else — whitening
statistics, token-weighted losses, averaged gradients, Adam steps, the KL controller — must
match the 1-process run up to float rounding.

    python -m tests.ppo_dist_worker SFT_DIR CRITIC_DIR OUT_JSON [drop]   # from the repo root

``drop``: the first prompt of step 0 gets a nan score (its reply is dropped, so rank 0 holds
one reply fewer than rank 1) and ``ppo.minibatches`` is 2, so one process runs out of replies
a minibatch before the other: the uneven path, which must neither hang nor skip updates.
"""

from __future__ import annotations

import json
import sys

import torch

from rlhf_lab.cli import finish_process_group
from rlhf_lab.config import PpoConfig
from rlhf_lab.ppo.composite_score import CompositeScorer
from rlhf_lab.ppo.distributed import DataParallel
from rlhf_lab.ppo.model import load_policy_critic, truncate_after_eos
from rlhf_lab.ppo.trainer import PpoTrainer, batch_indices
from rlhf_lab.training.common import make_accelerator

from .ppo_helpers import TINY_LORA, prompt_rows

CFG = PpoConfig(
    steps=2,
    batch_size=4,
    # One minibatch per epoch: with several, 1 process draws a minibatch from the whole batch
    # and N processes one from each shard, so the (equally valid) updates differ in order.
    minibatches=1,
    epochs=2,
    max_new_tokens=6,
    lora=TINY_LORA,
    lr=1e-3,
    whiten_rewards=True,
    kl_target=0.5,
    adaptive_kl=True,
    kl_horizon=100,  # β moves by a factor that depends on the global batch size
)


def fixed_generate(model):
    """``model.generate`` replaced by a reply that depends only on each prompt's tokens: 2 to 6
    tokens ending in EOS, or ``max_new_tokens`` without one (lengths and EOS flags vary by
    rank, so the token-weighted means are exercised)."""
    eos = model.eos_ids[0]
    vocab = model.tok.vocab_size

    def generate(query, query_mask, max_new_tokens, temperature=None, group_size=1, record=None):
        replies = []
        for ids, m in zip(query.tolist(), query_mask.tolist(), strict=True):
            ids = [t for t, k in zip(ids, m, strict=True) if k]
            h = sum(ids)
            # As real sampling: a reply without EOS runs to max_new_tokens.
            n = 2 + h % (max_new_tokens - 1) if h % 2 else max_new_tokens
            toks = [5 + (ids[-1 - j % len(ids)] * 31 + j) % (vocab - 10) for j in range(n)]
            toks = [t if t not in model.eos_ids else 5 for t in toks]
            if h % 2:
                toks[-1] = eos
            replies.append(toks)
        width = max(len(r) for r in replies)
        pad_id = model.tok.pad_token_id
        response = torch.tensor([r + [pad_id] * (width - len(r)) for r in replies])
        return truncate_after_eos(response, model.eos_ids, pad_id)

    return generate


def main(sft: str, critic: str, out: str, mode: str = "fixed") -> None:
    # "shared": the fixed run with critic.shared_trunk (one pass, one backward per minibatch)
    cfg = CFG if mode in ("fixed", "shared") else CFG.model_copy(update={"minibatches": 2})
    rows = prompt_rows(8)
    bad = rows[batch_indices(0, len(rows), cfg.batch_size, cfg.seed)[0]]["id"]

    def length(replies, rows):
        return [
            float("nan") if mode == "drop" and r["id"] == bad else len(reply) / 20
            for reply, r in zip(replies, rows, strict=True)
        ]

    accelerator = make_accelerator(cfg.seed, cfg.batch_size, "ppo.batch_size")
    dp = DataParallel(accelerator)
    torch.manual_seed(cfg.seed)
    model = load_policy_critic(
        sft,
        critic,
        cfg.lora,
        cfg.temperature,
        device=accelerator.device,
        shared_trunk=mode == "shared",
    )
    model.generate = fixed_generate(model)
    scorer = CompositeScorer({"len": length}, {"len": 1.0}, total_steps=cfg.steps)
    trainer = PpoTrainer(model, rows, scorer, cfg, progress=False, dp=dp)
    trainer.train(resume=False)
    params = torch.cat([p.detach().reshape(-1).double().cpu() for p in trainer.params])
    # Every replica must hold the same weights (rank 0's are compared with the 1-process run).
    sums = dp.gather_objects([float(params.sum()), float(params.abs().sum())])
    if dp.is_main:
        result = {
            "num_processes": dp.world,
            "history": trainer.history,
            "params": params.tolist(),
            "replica_checksums": sums,
            "kl_coef": trainer.kl_ctl.value,
        }
        with open(out, "w") as f:
            json.dump(result, f)
    dp.barrier()
    finish_process_group()  # as a stage does: a gloo thread alive at exit can abort the process


if __name__ == "__main__":
    main(*sys.argv[1:])
