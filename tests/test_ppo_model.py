"""The PPO model on a tiny random Llama: one base, two LoRA adapters, a value head."""

from __future__ import annotations

import pytest
import torch

from rlhf_lab.ppo.core import logprobs_from_logits
from rlhf_lab.ppo.model import (
    CRITIC,
    POLICY,
    chat_prompt_ids,
    load_policy_critic,
    read_critic_info,
    trim_batch,
    truncate_after_eos,
)
from rlhf_lab.tokens import pad, position_ids

from .ppo_helpers import TINY_LORA, copy_policy, make_critic, one_thread, prompt_rows  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")  # see ppo_helpers.one_thread

T = 0.7


@pytest.fixture(scope="module")
def dirs(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo-model")
    sft = copy_policy(tiny_models["policy"], root / "sft")
    return {"sft": sft, "critic": make_critic(sft, root / "critic")}


def _model(dirs, seed=0):
    torch.manual_seed(seed)
    return load_policy_critic(dirs["sft"], dirs["critic"], TINY_LORA, temperature=T)


def _batch(model, n=4, max_new_tokens=8):
    tok = model.tok
    ids = [chat_prompt_ids(tok, r["prompt"], None, 64) for r in prompt_rows(8)[:n]]
    query, query_mask = pad(ids, tok.pad_token_id)
    torch.manual_seed(1)
    response, response_mask, eos = model.generate(query, query_mask, max_new_tokens)
    return query, query_mask, response, response_mask, eos


def test_truncate_after_eos_keeps_eos_and_pads_the_rest():
    eos, pad = 2, 0
    sampled = torch.tensor([[5, 6, 2, 7, 2], [5, 2, 9, 9, 9], [5, 6, 7, 8, 9]])
    resp, mask, found = truncate_after_eos(sampled, eos, pad)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert resp.tolist() == [[5, 6, 2, 0, 0], [5, 2, 0, 0, 0], [5, 6, 7, 8, 9]]
    assert found.tolist() == [True, True, False]
    # all rows stop early: the all-pad tail is dropped
    resp, mask, _ = truncate_after_eos(torch.tensor([[2, 4, 4], [5, 2, 4]]), eos, pad)
    assert resp.tolist() == [[2, 0], [5, 2]] and mask.tolist() == [[1, 0], [1, 1]]
    # several EOS ids (Llama 3 style): the first of any ends the reply
    resp, mask, found = truncate_after_eos(torch.tensor([[5, 3, 2], [5, 6, 7]]), [2, 3], pad)
    assert resp.tolist() == [[5, 3, 0], [5, 6, 7]] and found.tolist() == [True, False]


def test_chat_prompt_drops_oldest_turns_then_cuts_left(dirs):
    model = _model(dirs)
    tok = model.tok
    msgs = [
        {"role": "user", "content": "hello " * 30},
        {"role": "assistant", "content": "fine"},
        {"role": "user", "content": "what is your favorite movie"},
    ]
    full = chat_prompt_ids(tok, msgs, None, 10_000)
    short = chat_prompt_ids(tok, msgs, None, 40)
    assert len(short) <= 40 < len(full)
    text = tok.decode(short)
    assert "favorite movie" in text and "hello" not in text
    assert text.endswith("<|im_start|>assistant\n")  # generation header always kept
    sys_ids = chat_prompt_ids(tok, msgs[-1:], "Be brief.", 10_000)
    assert "Be brief." in tok.decode(sys_ids)
    assert len(chat_prompt_ids(tok, msgs[-1:], None, 5)) == 5


def test_step0_policy_equals_reference_and_matches_sampling(dirs):
    model = _model(dirs)
    query, query_mask, response, response_mask, _ = _batch(model)
    logp, entropy = model.policy_logprobs(query, query_mask, response, response_mask, entropy=True)
    ref = model.ref_logprobs(query, query_mask, response, response_mask)
    # A fresh LoRA adapter has B = 0: the policy IS the reference at step 0 (KL = 0).
    assert torch.equal(logp, ref)
    assert (entropy[response_mask.bool()] > 0).all()
    assert (logp[~response_mask.bool()] == 0).all()

    # The recomputed log-probs are those of the temperature-scaled sampling distribution.
    tok = model.tok
    torch.manual_seed(1)
    with model.adapter(POLICY):
        out = model.lm.generate(
            input_ids=query,
            attention_mask=query_mask,
            do_sample=True,
            temperature=T,
            top_k=0,
            top_p=1.0,
            max_new_tokens=8,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
    gen_resp = out.sequences[:, query.shape[1] :][:, : response.shape[1]]
    gen_logits = torch.stack(out.logits, dim=1)[:, : response.shape[1]] / T
    assert torch.equal(gen_resp[response_mask.bool()], response[response_mask.bool()])
    gen_logp = logprobs_from_logits(gen_logits, response) * response_mask
    torch.testing.assert_close(logp.detach(), gen_logp, atol=1e-4, rtol=0)


def test_trimmed_minibatch_gives_the_same_values(dirs):
    model = _model(dirs)
    query, query_mask, response, response_mask, _ = _batch(model)
    full = model.values(query, query_mask, response, response_mask).detach()
    rows = [1, 3]
    q, qm, r, rm = trim_batch(query[rows], query_mask[rows], response[rows], response_mask[rows])
    assert q.shape[1] <= query.shape[1]
    part = model.values(q, qm, r, rm).detach()
    torch.testing.assert_close(part, full[rows, : r.shape[1]], atol=1e-5, rtol=0)


def test_one_update_trains_both_adapters_and_the_head_only(dirs):
    model = _model(dirs)
    query, query_mask, response, response_mask, _ = _batch(model)
    params = model.trainable_parameters()
    assert (
        len(params)
        == len(model.adapter_parameters(POLICY)) + len(model.adapter_parameters(CRITIC)) + 2
    )
    before = {id(p): p.detach().clone() for p in model.parameters()}
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(2):  # LoRA A only gets a gradient once B has left 0
        # switches between adapters and the reference must not freeze an adapter
        with model.reference():
            pass
        logp, _ = model.policy_logprobs(query, query_mask, response, response_mask)
        values = model.values(query, query_mask, response, response_mask)
        loss = -(logp * response_mask).sum() / response_mask.sum() + (values**2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.requires_grad for p in params)
    changed = {id(p) for p in model.parameters() if not torch.equal(before[id(p)], p)}
    for name in (POLICY, CRITIC):
        assert all(id(p) in changed for p in model.adapter_parameters(name)), name
    assert all(id(p) in changed for p in model.value_head.parameters())
    trainable = {id(p) for p in params}
    assert changed <= trainable  # the base stayed frozen
    # the reference is still the untouched base
    ref = model.ref_logprobs(query, query_mask, response, response_mask)
    fresh = _model(dirs, seed=5)
    torch.testing.assert_close(ref, fresh.ref_logprobs(query, query_mask, response, response_mask))


def test_critic_loads_as_saved_and_policy_merges_exactly(dirs, tmp_path):
    from transformers import PreTrainedModel

    from rlhf_lab.ppo.model import new_critic, save_critic

    torch.manual_seed(3)
    critic = new_critic(dirs["sft"], TINY_LORA)
    with torch.no_grad():
        for p in critic.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_critic(critic, tmp_path / "critic", score_mean=3.0, score_std=0.5)
    assert read_critic_info(tmp_path / "critic")["score_mean"] == 3.0
    assert (tmp_path / "critic/adapter/adapter_config.json").is_file()

    model = load_policy_critic(dirs["sft"], tmp_path / "critic", TINY_LORA, temperature=T)
    query, query_mask, response, response_mask, _ = _batch(model)
    torch.testing.assert_close(
        model.values(query, query_mask, response, response_mask),
        critic.values(query, query_mask, response, response_mask),
    )

    with torch.no_grad():
        for p in model.adapter_parameters(POLICY):
            p.add_(0.05 * torch.randn_like(p))
    logp, _ = model.policy_logprobs(query, query_mask, response, response_mask)
    merged = model.merged_policy()
    assert isinstance(merged, PreTrainedModel) and not hasattr(merged, "peft_config")
    ids = torch.cat([query, response], 1)
    mask = torch.cat([query_mask, response_mask], 1)
    logits = merged(input_ids=ids, attention_mask=mask).logits[:, query.shape[1] - 1 : -1] / T
    merged_logp = logprobs_from_logits(logits, response) * response_mask
    torch.testing.assert_close(merged_logp, logp.detach(), atol=1e-4, rtol=0)


def test_missing_critic_is_a_clear_error(dirs, tmp_path):
    from rlhf_lab.errors import ModelSourceError

    with pytest.raises(ModelSourceError, match="train_critic"):
        load_policy_critic(dirs["sft"], tmp_path, TINY_LORA, temperature=T)


# ---------------------------------------------------------------------------------------------
# bf16 autocast: the update learns as in float32, and the ratio starts at 1
# ---------------------------------------------------------------------------------------------


def _bf16_update(dirs, monkeypatch, setting: str) -> dict:
    """One PPO step (rollout + 4 epochs x 2 minibatches) under ``mixed_precision=setting``.

    The replies are sampled in float32 in both settings (``precision.inference`` patched), so
    the two runs update on the same tokens and differ only in the precision of the passes
    that compute log-probs and values."""
    import contextlib

    from rlhf_lab import precision
    from rlhf_lab.config import PpoConfig
    from rlhf_lab.ppo import trainer as trainer_mod
    from rlhf_lab.ppo.composite_score import CompositeScorer
    from rlhf_lab.ppo.core import policy_loss

    @contextlib.contextmanager
    def fp32_sampling():
        yield False

    monkeypatch.setattr(precision, "inference", fp32_sampling)
    calls = []

    def recording_policy_loss(new_logp, old_logp, advantages, mask, clip, *args):
        out = policy_loss(new_logp, old_logp, advantages, mask, clip, *args)
        calls.append((new_logp.detach(), old_logp, mask, *(float(v) for v in out)))
        return out

    monkeypatch.setattr(trainer_mod, "policy_loss", recording_policy_loss)
    cfg = PpoConfig(
        steps=1,
        batch_size=8,
        minibatches=2,
        epochs=4,
        lr=1e-2,
        max_new_tokens=8,
        temperature=T,
        adaptive_kl=False,
        kl_coef=0.01,
        lora=TINY_LORA.model_dump(),
    )
    scorer = CompositeScorer(
        {"len": lambda replies, rows: [len(r) / 20 for r in replies]}, {"len": 1.0}, total_steps=1
    )
    precision.configure(setting)
    try:
        model = _model(dirs)
        before = [p.detach().clone() for p in model.trainable_parameters()]
        trainer = trainer_mod.PpoTrainer(model, prompt_rows(8), scorer, cfg, progress=False)
        torch.manual_seed(0)
        ro, _ = trainer.rollout(0)
        stats = trainer.update(ro, 0)
        metrics = {**stats, "perf/bf16": int(precision.bf16_enabled())}
    finally:
        precision.configure("fp32")
    after = model.trainable_parameters()
    delta = sum(float((a.detach() - b).norm() ** 2) for a, b in zip(after, before, strict=True))
    norm = sum(float(b.norm() ** 2) for b in before)
    # policy loss per epoch: the mean over its 2 minibatches (together the whole batch)
    epoch_loss = [(calls[i][3] + calls[i + 1][3]) / 2 for i in range(0, len(calls), 2)]
    return {"calls": calls, "moved": (delta / norm) ** 0.5, "epoch_loss": epoch_loss, **metrics}


def test_bf16_update_ratio_starts_at_one_and_learns_like_float32(dirs, monkeypatch):
    fp32 = _bf16_update(dirs, monkeypatch, "fp32")
    bf16 = _bf16_update(dirs, monkeypatch, "bf16")
    assert (fp32["perf/bf16"], bf16["perf/bf16"]) == (0, 1)
    for run in (fp32, bf16):
        assert len(run["calls"]) == 8 and run["train/updates"] == 8
        # First minibatch of epoch 0: the rollout's log-probs and the update's come from the
        # same pass in the same precision, on other rows' padding: ratio 1, nothing clipped.
        new, old, mask, _loss, clipfrac, _kl = run["calls"][0]
        ratio = torch.exp(new - old.to(new.device))[mask.bool()]
        assert (ratio - 1).abs().max() < 1e-3
        assert clipfrac == 0.0
    # the surrogate falls over the epochs, in bf16 at least half as much as in float32
    drop_fp32 = fp32["epoch_loss"][0] - fp32["epoch_loss"][-1]
    drop_bf16 = bf16["epoch_loss"][0] - bf16["epoch_loss"][-1]
    assert drop_fp32 > 0 and drop_bf16 >= 0.5 * drop_fp32
    assert 0.5 < bf16["moved"] / fp32["moved"] < 2.0


# ---------------------------------------------------------------------------------------------
# critic.shared_trunk: the value head on the policy's own hidden states
# ---------------------------------------------------------------------------------------------


def _shared(dirs, seed=0):
    torch.manual_seed(seed)
    return load_policy_critic(dirs["sft"], dirs["critic"], TINY_LORA, T, shared_trunk=True)


def _nudge(params, seed=7, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_shared_trunk_has_no_critic_adapter_and_starts_as_the_separate_critic(dirs):
    shared, separate = _shared(dirs), _model(dirs)
    assert shared.shared_trunk and shared.has_critic and not separate.shared_trunk
    assert shared.adapter_names == [POLICY]
    assert len(shared.trainable_parameters()) == len(shared.adapter_parameters(POLICY)) + 2
    batch = _batch(shared)[:4]
    # Step 0: the fresh policy adapter and train_critic's untrained critic adapter both have
    # LoRA B = 0, so the policy's features are the ones the head was fitted on.
    torch.testing.assert_close(shared.values(*batch), separate.values(*batch), atol=0, rtol=0)


def test_shared_trunk_one_pass_equals_the_separate_passes(dirs):
    model = _shared(dirs)
    _nudge(model.trainable_parameters())  # a policy that has moved, a head that has learnt
    query, query_mask, response, response_mask, _ = _batch(model)
    logp, ent, values = model.logprobs_and_values(
        query, query_mask, response, response_mask, entropy=True
    )
    logp2, ent2 = model.policy_logprobs(query, query_mask, response, response_mask, entropy=True)
    # values() of a shared trunk reads the policy adapter; both are checked against the head
    # applied by hand to the policy adapter's hidden states of the full sequence.
    p = query.shape[1]
    mask = torch.cat([query_mask, response_mask], 1)
    with model.adapter(POLICY):
        hidden = model.lm.get_decoder()(
            input_ids=torch.cat([query, response], 1),
            attention_mask=mask,
            position_ids=position_ids(mask),
        ).last_hidden_state
    by_hand = model.value_head(hidden[:, p - 1 : -1]) * response_mask
    separate_values = model.values(query, query_mask, response, response_mask)
    diffs = [
        float((one.detach() - two.detach()).abs().max())
        for one, two in ((logp, logp2), (ent, ent2), (values, separate_values), (values, by_hand))
    ]
    assert max(diffs) <= 1e-6, diffs
    assert (values[~response_mask.bool()] == 0).all() and values.abs().sum() > 0


def test_shared_trunk_value_gradient_reaches_the_policy_except_in_warmup(dirs):
    model = _shared(dirs)
    query, query_mask, response, response_mask, _ = _batch(model)
    policy = model.adapter_parameters(POLICY)
    head = list(model.value_head.parameters())

    def grads_of_value_loss(policy_grad):
        model.zero_grad(set_to_none=True)
        _, _, values = model.logprobs_and_values(
            query, query_mask, response, response_mask, policy_grad=policy_grad
        )
        (values**2).sum().backward()
        return [p.grad for p in policy], [p.grad for p in head]

    pol, hd = grads_of_value_loss(policy_grad=True)
    # LoRA B = 0 at init: A's gradient is 0, B's is not: the value loss moves the policy.
    assert any(g is not None and bool(g.abs().sum() > 0) for g in pol)
    assert all(g is not None and bool(g.abs().sum() > 0) for g in hd)
    pol, hd = grads_of_value_loss(policy_grad=False)  # warm-up: detached hidden states
    assert all(g is None for g in pol)
    assert all(g is not None and bool(g.abs().sum() > 0) for g in hd)
    # a separate critic's value loss never reaches the policy adapter
    separate = _model(dirs)
    separate.values(query, query_mask, response, response_mask).pow(2).sum().backward()
    assert all(p.grad is None for p in separate.adapter_parameters(POLICY))


def test_shared_trunk_refuses_a_critic_whose_adapter_was_trained(dirs, tmp_path):
    from rlhf_lab.errors import ModelSourceError
    from rlhf_lab.ppo.model import new_critic, save_critic

    torch.manual_seed(3)
    critic = new_critic(dirs["sft"], TINY_LORA)
    _nudge(critic.adapter_parameters(CRITIC))
    save_critic(critic, tmp_path / "critic", score_mean=0.0, score_std=1.0)
    with pytest.raises(ModelSourceError, match=r"critic adapter was trained.*critic\.epochs 0"):
        load_policy_critic(dirs["sft"], tmp_path / "critic", TINY_LORA, T, shared_trunk=True)
    # the separate critic loads it as before
    assert load_policy_critic(dirs["sft"], tmp_path / "critic", TINY_LORA, T).has_critic


def test_logprobs_and_values_needs_a_shared_trunk(dirs):
    model = _model(dirs)
    with pytest.raises(RuntimeError, match="shared-trunk"):
        model.logprobs_and_values(*_batch(model)[:4])
