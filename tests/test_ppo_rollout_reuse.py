"""The rollout without redundant passes: log-probs kept from the sampling pass, one prefill per
GRPO/RLOO group, chunks of similar length — each equal to the plain path it replaces."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from rlhf_lab import precision
from rlhf_lab.config import CriticLayout, PpoConfig
from rlhf_lab.ppo.composite_score import CompositeScorer
from rlhf_lab.ppo.model import SampledLogprobs, chat_prompt_ids, load_policy_critic
from rlhf_lab.ppo.rollout import _reuses_sampling, length_order
from rlhf_lab.ppo.trainer import PpoTrainer
from rlhf_lab.tokens import pad

from .ppo_helpers import TINY_LORA, copy_policy, make_critic, one_thread, prompt_rows  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # see ppo_helpers.one_thread

T = 0.7
ATOL = 1e-5  # float32: a cached decode step against one full-sequence pass


@pytest.fixture(scope="module")
def dirs(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo-reuse")
    # Sharpened embeddings: a random model's near-uniform next-token distribution would make
    # greedy decoding a sequence of near-ties (much sharper and it repeats one token).
    sft = copy_policy(tiny_models["policy"], root / "sft", embed_scale=2.0)
    return {"sft": sft, "critic": make_critic(sft, root / "critic")}


def _model(dirs, seed=0, critic=True):
    torch.manual_seed(seed)
    model = load_policy_critic(dirs["sft"], dirs["critic"] if critic else None, TINY_LORA, T)
    # Move the policy off the base (a fresh LoRA has B = 0), so its log-probs are its own.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.adapter_parameters("policy"):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _query(model, n, repeat=1):
    ids = [chat_prompt_ids(model.tok, r["prompt"], None, 64) for r in prompt_rows(8)[:n]]
    assert len({len(i) for i in ids}) > 2  # prompts of different lengths: left padding
    return pad([i for i in ids for _ in range(repeat)], model.tok.pad_token_id)


def _early_eos(model):
    """Every fifth token id counts as EOS: replies end at different, early steps."""
    model.eos_ids = list(range(0, model.lm.config.vocab_size, 5))


def test_sampling_logprobs_equal_a_recomputation(dirs):
    model = _model(dirs)
    _early_eos(model)
    query, query_mask = _query(model, 8)
    record = SampledLogprobs()
    torch.manual_seed(3)
    response, mask, eos = model.generate(query, query_mask, 10, record=record)
    lengths = mask.sum(1)
    assert eos.any() and lengths.min() < lengths.max()  # early EOS, replies of several lengths
    logp, entropy = model.policy_logprobs(query, query_mask, response, mask, entropy=True)
    width = response.shape[1]
    kept = record.logprobs[:, :width] * mask
    torch.testing.assert_close(kept, logp, atol=ATOL, rtol=0)
    torch.testing.assert_close(record.entropy[:, :width] * mask, entropy, atol=ATOL, rtol=0)
    assert (kept[mask.bool()] < 0).all()


def test_the_record_is_at_the_sampling_temperature(dirs):
    model = _model(dirs)
    query, query_mask = _query(model, 4)
    hot, cold = SampledLogprobs(), SampledLogprobs()
    torch.manual_seed(3)
    model.generate(query, query_mask, 5, record=hot)
    torch.manual_seed(3)
    model.generate(query, query_mask, 5, temperature=2 * T, record=cold)
    assert hot.temperature == T and cold.temperature == 2 * T
    # the same pass at another temperature: a flatter distribution
    assert float(cold.entropy.mean()) > float(hot.entropy.mean())


def test_shared_prompt_cache_gives_the_plain_greedy_sequences(dirs):
    model = _model(dirs)
    query, query_mask = _query(model, 4, repeat=3)
    plain = model.generate(query, query_mask, 8, temperature=0)  # greedy
    shared = model.generate(query, query_mask, 8, temperature=0, group_size=3)
    for a, b in zip(plain, shared, strict=True):
        assert torch.equal(a, b)


def test_shared_prompt_cache_samples_the_same_tokens_and_logprobs(dirs):
    model = _model(dirs)
    _early_eos(model)
    query, query_mask = _query(model, 4, repeat=3)
    out, records = [], []
    for group_size in (1, 3):
        record = SampledLogprobs()
        torch.manual_seed(5)
        out.append(model.generate(query, query_mask, 10, group_size=group_size, record=record))
        records.append(record)
    (r1, m1, e1), (r2, m2, e2) = out
    assert torch.equal(r1, r2) and torch.equal(m1, m2) and torch.equal(e1, e2)
    assert not torch.equal(r1[0], r1[1])  # a group's replies differ (it is sampling)
    torch.testing.assert_close(records[0].logprobs, records[1].logprobs, atol=ATOL, rtol=0)


def test_shared_prompt_cache_refuses_rows_that_are_not_groups(dirs):
    model = _model(dirs)
    query, query_mask = _query(model, 6)
    with pytest.raises(ValueError, match="runs of 3 copies"):
        model.generate(query, query_mask, 2, group_size=3)


def test_sampling_logprobs_only_where_they_are_the_recomputation():
    on, off = PpoConfig(logprobs_from_sampling=True), PpoConfig()
    separate, none, shared = (
        SimpleNamespace(layout=x)
        for x in (CriticLayout.SEPARATE, CriticLayout.NONE, CriticLayout.SHARED_TRUNK)
    )
    assert _reuses_sampling(separate, on) and _reuses_sampling(none, on)
    assert not _reuses_sampling(separate, off)
    # a shared trunk's policy pass gives the values: nothing to skip
    assert not _reuses_sampling(shared, on)
    # bf16 sampling: bf16 logits, not the recomputation's float32 head
    precision.configure("bf16")
    assert not _reuses_sampling(separate, on)


def test_length_order_sorts_by_prompt_then_reply_length():
    query_mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 0, 1], [0, 1, 1]])
    response_mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]])
    assert length_order(query_mask, response_mask).tolist() == [2, 3, 0, 1]


CFG = dict(steps=2, batch_size=4, minibatches=2, epochs=1, max_new_tokens=6, max_prompt_length=48)


def _trainer(dirs, seed=0, **over):
    cfg = PpoConfig(**{**CFG, **over}, lora=TINY_LORA.model_dump())
    model = _model(dirs, seed, critic=cfg.estimator.critic)
    scorer = CompositeScorer(
        {"len": lambda replies, rows: [len(r) / 10 for r in replies]},
        {"len": 1.0},
        total_steps=cfg.steps,
    )
    return PpoTrainer(model, prompt_rows(8), scorer, cfg, progress=False)


FIELDS = ("logprobs", "ref_logprobs", "values", "entropy", "clipped_score")


@pytest.mark.parametrize(
    ("lever", "over"),
    [
        ("logprobs_from_sampling", {}),
        ("share_prompt_cache", {"advantage": "rloo", "num_generations": 2}),
        ("sort_by_length", {"batch_size": 8, "minibatches": 4}),
    ],
)
def test_each_lever_gives_the_plain_rollout(dirs, lever, over):
    """The same rollout with and without the lever, in the original row order: the same
    tokens and rows, per-token numbers equal to float tolerance."""
    rollouts = []
    for on in (False, True):
        trainer = _trainer(dirs, **over, **{lever: on})
        torch.manual_seed(0)
        rollouts.append(trainer.rollout(0)[0])
    plain, fast = rollouts
    assert [r["id"] for r in plain.rows] == [r["id"] for r in fast.rows]
    assert plain.replies == fast.replies
    assert torch.equal(plain.response, fast.response)
    assert torch.equal(plain.response_mask, fast.response_mask)
    for name in FIELDS:
        torch.testing.assert_close(
            getattr(fast, name), getattr(plain, name), atol=ATOL, rtol=0, msg=name
        )
    # and the update takes it (tensors recorded under inference mode, the sampled log-probs as
    # the old policy's)
    stats = trainer.update(fast, 0)
    assert stats["train/updates"] == CFG["epochs"] * trainer.cfg.minibatches
    assert torch.isfinite(torch.tensor(stats["loss/policy"]))
