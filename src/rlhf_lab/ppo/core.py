"""Pure PPO math for language models: masked statistics, log-probs, KL, reward shaping, GAE, losses.

Everything here is a torch-only function of tensors (no models, no I/O), so each piece is
unit-tested alone against a naive loop (``tests/test_ppo_core.py``). Shapes and conventions:

- per-token tensors are ``[batch, response_len]``; ``mask`` is a float or bool tensor of the same
  shape, 1 on real response tokens (the EOS token included) and 0 on padding. Responses are
  right-padded, so each row's mask is a run of ones followed by zeros.
- log-probs are natural-log probabilities of the sampled tokens; the policy is ``p``, the frozen
  reference is ``q``; the KL penalty is an estimate of ``KL(p || q)`` on samples from ``p``.
- every function returns exact zeros on padding, so a caller never has to re-mask.

References:

- [lm-human-preferences] Ziegler et al. 2019, github.com/openai/lm-human-preferences
  (``lm_human_preferences/train_policy.py``: ``compute_rewards``, ``PPOTrainer.loss``, the KL
  controllers; ``lm_human_preferences/utils/core.py``: ``whiten``).
- [N-details] Huang et al. 2024, "The N Implementation Details of RLHF with PPO",
  iclr-blogposts.github.io/2024/blog/the-n-implementation-details-of-rlhf-with-ppo
- [TRL] huggingface/trl ``trainer/utils.py`` and the (removed in 1.13) ``PPOTrainer``.
- [Schulman] J. Schulman 2020, "Approximating KL divergence", joschu.net/blog/kl-approx.html
- [GRPO] Shao et al. 2024, "DeepSeekMath" (group-relative advantages, k3 KL in the loss).
- [Dr. GRPO] Liu et al. 2025, "Understanding R1-Zero-Like Training" (no std scaling, length bias).
- [DAPO] Yu et al. 2025, "DAPO" (token-level loss aggregation).
- [RLOO] Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization..."
- [REINFORCE++] J. Hu 2025, "REINFORCE++"; OpenRLHF ``ppo_utils/experience_maker.py``
  (``advantage_estimator``: ``gae``, ``group_norm``, ``rloo``, ``reinforce``).

This module stays whole: each function is a small pure tensor helper, unit-tested alone and
cited against the references above; a split by size would separate the helpers from the
references they share.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F

KLKind = Literal["k1", "k3"]
LossAgg = Literal["token_mean", "seq_mean", "token_sum"]
ScaleRewards = Literal["group", "batch", "none"]

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "KLController",
    "KLKind",
    "LossAgg",
    "ScaleRewards",
    "aggregate_loss",
    "discounted_returns",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "grpo_advantages",
    "kl_estimate",
    "kl_loss",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "nonfinite_rows",
    "per_reply_agg",
    "policy_loss",
    "reinforce_pp_returns",
    "rloo_advantages",
    "shape_rewards",
    "value_loss",
]


# --------------------------------------------------------------------------------------------
# Masked statistics
# --------------------------------------------------------------------------------------------


def _float_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Return ``mask`` as a float tensor in ``like``'s dtype and device."""
    return mask.to(device=like.device, dtype=like.dtype)


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x * mask`` with padding forced to exactly 0, even where ``x`` holds inf/nan there.

    Plain ``x * mask`` (as TRL does) turns a nan/inf in padding into nan; ``where`` keeps the
    padding out of both the value and the gradient.
    """
    m = _float_mask(mask, x)
    return torch.where(m != 0, x * m, torch.zeros_like(x))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is non-zero (``mask`` values act as weights).

    ``dim=None`` reduces everything to a scalar; an int reduces that dimension only.
    Unlike TRL (which divides by zero and returns nan), a selection with no valid entries
    gives 0 with a zero gradient, so a minibatch of empty replies cannot put nan in the weights.
    """
    m = _float_mask(mask, x)
    num = _masked(x, m).sum() if dim is None else _masked(x, m).sum(dim=dim)
    den = m.sum() if dim is None else m.sum(dim=dim)
    # Divide by 1 where the denominator is 0: the numerator is exactly 0 there, and a where()
    # after the division would still back-propagate 0 * inf = nan.
    safe_den = torch.where(den > 0, den, torch.ones_like(den))
    return num / safe_den


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all masked entries (a scalar), as TRL's ``masked_var``.

    With ``unbiased`` the Bessel factor ``n / (n - 1)`` uses ``n = mask.sum()``.
    Raises ``ValueError`` when there are too few valid entries (``n < 2`` unbiased, ``n == 0``
    biased) instead of returning inf/nan; lm-human-preferences guards the same case in its
    hyperparameter ``validate()`` (``minibatch_size >= 8`` when whitening).
    """
    m = _float_mask(mask, x)
    n = float(m.sum())
    min_n = 2 if unbiased else 1
    if n < min_n:
        raise ValueError(
            f"masked_var needs at least {min_n} valid entries, got mask sum {n}; "
            "use a larger (mini)batch or disable whitening"
        )
    mean = masked_mean(x, m)
    var = masked_mean((x - mean) ** 2, m)
    if unbiased:
        var = var * (n / (n - 1.0))
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``x`` to mean 0 / variance 1 using statistics of the masked entries only.

    As lm-human-preferences ``whiten`` and TRL ``masked_whiten``: ``(x - mean) / sqrt(var + 1e-8)``
    with the unbiased variance; ``shift_mean=False`` adds the mean back (used for rewards, where
    the sign of the mean carries information). Padding is set to exactly 0 afterwards, which TRL
    does in its trainer with a separate ``masked_fill`` [TRL PPOTrainer, advantages].
    """
    m = _float_mask(mask, x)
    mean = masked_mean(x, m)
    var = masked_var(x, m, unbiased=True)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return _masked(whitened, m)


# --------------------------------------------------------------------------------------------
# Log-probabilities and entropy
# --------------------------------------------------------------------------------------------


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of ``tokens`` ([B, T]) under ``logits`` ([B, T, V]) → [B, T].

    Equivalent to ``log_softmax(logits).gather(tokens)`` but never materialises the [B, T, V]
    log-softmax: gather the chosen logit and subtract a row-by-row ``logsumexp`` (TRL
    ``selective_log_softmax``). In bf16/fp16 the logsumexp route loses precision, so we fall
    back to a per-row ``log_softmax`` as TRL does.

    The caller must already have divided ``logits`` by the sampling temperature; otherwise the
    recomputed log-probs are not those of the policy that sampled [N-details, "scale the logits
    by sampling temperature"].
    """
    tokens = tokens.long()
    if logits.dtype in (torch.float32, torch.float64):
        chosen = torch.gather(logits, dim=-1, index=tokens.unsqueeze(-1)).squeeze(-1)
        # One row at a time: logsumexp over the whole batch would allocate a [B, T, V] buffer.
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])
        return chosen - lse
    out = []
    for row_logits, row_tokens in zip(logits, tokens, strict=True):
        row_logp = F.log_softmax(row_logits.float(), dim=-1)
        out.append(row_logp.gather(dim=-1, index=row_tokens.unsqueeze(-1)).squeeze(-1))
    return torch.stack(out).to(logits.dtype)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution given by ``logits`` over the last dim → [B, T].

    ``H = logsumexp(z) - sum(softmax(z) * z)``, as TRL; computed one batch row at a time to
    bound peak memory for large vocabularies.
    """
    rows = []
    for row in logits:
        p = torch.softmax(row, dim=-1)
        rows.append(torch.logsumexp(row, dim=-1) - (p * row).sum(dim=-1))
    return torch.stack(rows)


# --------------------------------------------------------------------------------------------
# KL penalty and reward shaping
# --------------------------------------------------------------------------------------------


def kl_estimate(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: KLKind = "k1"
) -> torch.Tensor:
    """Per-token estimate of ``KL(policy || reference)`` from log-probs of sampled tokens.

    - ``k1 = log p - log q``: unbiased, can be negative per token (lm-human-preferences uses it
      for the reward penalty; [N-details] "KL penalty");
    - ``k3 = (r - 1) - log r`` with ``r = q / p = exp(ref - logp)``: unbiased, always >= 0,
      lower variance [Schulman, "Approximating KL divergence"]; TRL's ``kl_estimator="k3"``.
    """
    log_ratio = ref_logprobs - logprobs  # log r = log q - log p
    if kind == "k1":
        return -log_ratio
    if kind == "k3":
        # expm1 keeps precision when p ≈ q (r - 1 ≈ log r ≈ 0), the common case early in PPO.
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {kind!r}; expected 'k1' or 'k3'")


def _last_valid_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the last non-zero mask entry per row, and whether the row has one at all."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    # Largest (1-based) position with mask != 0; 0 for an all-zero row.
    last_1based = torch.where(mask != 0, positions, torch.zeros_like(positions)).amax(dim=1)
    has_any = last_1based > 0
    return (last_1based - 1).clamp_min(0), has_any


@torch.no_grad()
def shape_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kind: KLKind = "k1",
    eos_found: torch.Tensor | None = None,
    missing_eos_penalty: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO rewards → ``(rewards, kl)``, both [B, T] and 0 on padding.

    ``rewards[b, t] = -kl_coef * KL_t`` on every valid token, plus the sequence score
    ``scores[b]`` added at the row's LAST valid token (lm-human-preferences ``compute_rewards``:
    ``rewards[:, -1] += scores``; TRL adds it at the last non-pad index) — the reward model judges
    the whole reply, so it is credited to the final action and GAE carries it backwards.

    Missing EOS: where ``eos_found[b]`` is False and ``missing_eos_penalty`` is set, the score
    becomes ``scores[b] - missing_eos_penalty`` (TRL ``missing_eos_penalty``: a positive number
    subtracted). lm-human-preferences / [N-details] instead *replace* the score by a fixed
    penalty (-1); subtracting keeps the reward model's ordering among truncated replies.

    A row whose mask is all zeros (empty reply) has no action to credit: its rewards and KL are
    all 0 and its score is dropped. Callers should normally not produce such rows.
    """
    m = _float_mask(mask, logprobs)
    kl = _masked(kl_estimate(logprobs, ref_logprobs, kind), m)
    rewards = -kl_coef * kl

    scores = scores.to(device=rewards.device, dtype=rewards.dtype).clone()
    if eos_found is not None and missing_eos_penalty is not None:
        missing = ~eos_found.to(device=scores.device, dtype=torch.bool)
        scores = scores - missing_eos_penalty * missing.to(scores.dtype)

    last, has_any = _last_valid_index(m)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last] += torch.where(has_any, scores, torch.zeros_like(scores))
    return rewards, kl


def nonfinite_rows(
    scores: torch.Tensor, mask: torch.Tensor, *per_token: torch.Tensor
) -> torch.Tensor:
    """Bool [B]: rows whose score, or any ``per_token`` [B, T] value on a valid token, is nan/inf.

    The trainer drops these replies before shaping: a single nan would otherwise reach every
    reply through the batch statistics (reward and advantage whitening, the KL mean) and turn
    the whole step's loss into nan. Padding is ignored, as everywhere here.
    """
    bad = ~torch.isfinite(scores)
    valid = mask != 0
    for x in per_token:
        bad = bad | (~torch.isfinite(x) & valid.to(x.device)).any(dim=1).to(bad.device)
    return bad


# --------------------------------------------------------------------------------------------
# Advantages
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation → ``(advantages, returns)``, both [B, T], 0 on padding.

    The reverse loop of lm-human-preferences ``PPOTrainer.loss`` / TRL PPOTrainer::

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t

    The episode ends at the last valid token, so ``V`` beyond it is 0 (TRL masks the values
    after the response end; [N-details] "padding"). Values and rewards on padding are zeroed
    first, so whatever the critic emits there never leaks into a valid position. Assumes
    right-padded masks (ones then zeros). Advantages are NOT whitened here: call
    ``masked_whiten(advantages, mask)`` in the trainer, as TRL does right after GAE.
    """
    m = _float_mask(mask, values)
    values = _masked(values, m)
    rewards = _masked(rewards.to(values.dtype), m)
    steps = rewards.shape[1]
    last_gae = torch.zeros_like(values[:, 0])
    reversed_advantages = []
    for t in reversed(range(steps)):
        next_values = values[:, t + 1] if t < steps - 1 else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        # Multiplying by the mask restarts the recursion at each row's end of reply.
        last_gae = (delta + gamma * lam * last_gae) * m[:, t]
        reversed_advantages.append(last_gae)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    returns = _masked(advantages + values, m)
    return advantages, returns


def _group_indices(scores: torch.Tensor, groups: torch.Tensor) -> list[torch.Tensor]:
    """Indices of each prompt's replies, in the order the groups first appear."""
    groups = groups.to(scores.device)
    return [(groups == g).nonzero().flatten() for g in torch.unique(groups)]


@torch.no_grad()
def grpo_advantages(
    scores: torch.Tensor,
    groups: torch.Tensor,
    scale: ScaleRewards = "group",
    eps: float = 1e-4,
) -> torch.Tensor:
    """Group-relative advantages [N]: ``(score - group mean) / (std + eps)`` per reply [GRPO].

    ``groups[i]`` is the prompt id of reply ``i`` (the replies sampled for one prompt share it;
    they need not be adjacent). ``scale`` names the std as TRL's ``GRPOConfig.scale_rewards``
    (``trainer/grpo_trainer.py``, ``_compute_advantages``): ``group`` the unbiased std of the
    reply's group (DeepSeekMath), ``batch`` the unbiased std of all N scores, ``none`` no
    division [Dr. GRPO: dividing by a group's std up-weights prompts whose replies are all
    nearly equally good or bad]; ``eps = 1e-4`` as TRL. A group of one reply (its siblings
    dropped as non-finite) gets 0: it has no baseline.
    """
    adv = torch.zeros_like(scores)
    for idx in _group_indices(scores, groups):
        if idx.numel() < 2:
            continue
        group = scores[idx]
        centred = group - group.mean()
        if scale == "group":
            centred = centred / (group.std() + eps)
        adv[idx] = centred
    if scale == "batch" and scores.numel() > 1:
        adv = adv / (scores.std() + eps)
    return adv


@torch.no_grad()
def rloo_advantages(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages [N]: ``A_i = r_i - mean_{j != i} r_j`` over i's group [RLOO].

    The baseline of each reply is the mean score of the OTHER replies to the same prompt, so it
    is independent of the reply's own sample and the estimator stays unbiased (Ahmadian et al.
    2024, eq. 6; OpenRLHF ``rloo``: ``(sum - r) / (n - 1)``). Equivalently
    ``n / (n - 1) * (r_i - group mean)``. A group of one reply gets 0 (no other sample).
    """
    adv = torch.zeros_like(scores)
    for idx in _group_indices(scores, groups):
        n = idx.numel()
        if n < 2:
            continue
        group = scores[idx]
        adv[idx] = group - (group.sum() - group) / (n - 1)
    return adv


@torch.no_grad()
def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = r_t + gamma * G_{t+1}`` per row [B, T], restarting at each row's end; 0 on padding.

    OpenRLHF ``get_cumulative_returns``: the Monte-Carlo return that the critic-free estimators
    use instead of GAE (GAE with V = 0 and λ = 1 gives the same numbers).
    """
    m = _float_mask(mask, rewards)
    rewards = _masked(rewards, m)
    running = torch.zeros_like(rewards[:, 0])
    out = []
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * m[:, t]
        out.append(running)
    return torch.stack(out[::-1], dim=1)


@torch.no_grad()
def reinforce_pp_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """REINFORCE++ advantages [B, T]: discounted returns whitened over the whole batch.

    ``rewards`` are the shaped per-token rewards of :func:`shape_rewards` (−β·KL_t on every
    token, the score at the last one), so the KL enters as a token-level reward [REINFORCE++,
    §3.1]; the return of every valid token is normalised with the mean/std of ALL valid tokens
    of the batch — the global batch normalisation that replaces the critic as a baseline
    (OpenRLHF ``reinforce_plus_plus``: cumulative returns, then ``advantages`` whitened).
    """
    return masked_whiten(discounted_returns(rewards, mask, gamma), mask)


# --------------------------------------------------------------------------------------------
# Losses and diagnostics
# --------------------------------------------------------------------------------------------


def aggregate_loss(
    losses: torch.Tensor, mask: torch.Tensor, agg: LossAgg, max_length: int | None = None
) -> torch.Tensor:
    """Reduce per-token ``losses`` [B, T] to a scalar over the valid tokens of a (mini)batch.

    - ``token_mean``: the mean over every valid token [DAPO, "token-level policy gradient
      loss"]; each token weighs the same, so a long reply counts in proportion to its length.
    - ``seq_mean``: the mean over each reply's tokens, then over replies (original GRPO,
      DeepSeekMath eq. 3); each reply weighs the same, so a SHORT reply's tokens weigh more —
      the length bias [Dr. GRPO, §3.1] that lets a wrong answer grow long at low cost per token.

    - ``token_sum``: the sum over every valid token divided by a constant, the number of
      replies times ``max_length`` (the longest reply allowed) [Dr. GRPO; TRL
      ``loss_type="dr_grpo"``]: neither a reply's own length nor the batch's token count
      rescales its tokens, so there is no length bias and each token weighs the same in every
      minibatch.

    Replies with no valid token are left out of the ``seq_mean`` average and the ``token_sum``
    reply count.
    """
    if agg == "token_mean":
        return masked_mean(losses, mask)
    m = _float_mask(mask, losses)
    replies = m.sum(dim=1) > 0
    if agg == "seq_mean":
        per_seq = masked_mean(losses, m, dim=1)
        return masked_mean(per_seq, replies.to(losses.dtype))
    if agg == "token_sum":
        if max_length is None or max_length < 1:
            raise ValueError(f"loss aggregation token_sum needs max_length >= 1, got {max_length}")
        return _masked(losses, m).sum() / (max(int(replies.sum()), 1) * max_length)
    raise ValueError(
        f"unknown loss aggregation {agg!r}; expected 'token_mean', 'seq_mean' or 'token_sum'"
    )


def per_reply_agg(agg: LossAgg) -> bool:
    """Whether ``agg`` weighs replies (``seq_mean``, ``token_sum``) rather than tokens: the unit
    a data-parallel step scales each process's share of the loss by."""
    return agg != "token_mean"


def kl_loss(
    new_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    agg: LossAgg = "token_mean",
    max_length: int | None = None,
) -> torch.Tensor:
    """k3 estimate of ``KL(policy || reference)`` per token, aggregated as the policy loss.

    The KL-in-the-loss form of GRPO (DeepSeekMath eq. 4; TRL ``GRPOConfig.beta``):
    ``exp(ref - logp) - (ref - logp) - 1`` on the current policy's log-probs of the rollout's
    tokens, differentiated through ``new_logprobs`` only; the caller multiplies by β.
    """
    per_token = kl_estimate(new_logprobs, ref_logprobs.detach(), "k3")
    return aggregate_loss(per_token, mask, agg, max_length)


def policy_loss(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
    agg: LossAgg = "token_mean",
    max_length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped PPO surrogate → ``(loss, clipfrac, approxkl)``; the loss is to be MINIMISED.

    ``loss = mean_masked(max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip)))`` with
    ``ratio = exp(new - old)`` (TRL PPOTrainer ``pg_loss``; lm-human-preferences ``pg_losses``).
    ``clipfrac`` is the masked fraction of tokens where the clipped term is the larger one and
    ``approxkl = 0.5 * mean_masked((new - old) ** 2)`` (TRL); both are detached diagnostics.
    Gradients flow only through ``new_logprobs``: old log-probs and advantages are rollout
    constants, detached here defensively. ``agg`` reduces the per-token losses
    (:func:`aggregate_loss`; ``token_mean`` is lm-human-preferences' and TRL's masked mean);
    the diagnostics are always token means.
    """
    old_logprobs = old_logprobs.detach()
    advantages = advantages.detach()
    log_ratio = new_logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    losses_unclipped = -advantages * ratio
    losses_clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = aggregate_loss(torch.maximum(losses_unclipped, losses_clipped), mask, agg, max_length)
    with torch.no_grad():
        clipfrac = masked_mean((losses_clipped > losses_unclipped).to(ratio.dtype), mask)
        approxkl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac, approxkl


def value_loss(
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss → ``(loss, clipfrac)``.

    ``loss = 0.5 * mean_masked(max((v - R)^2, (clip(v, v_old - c, v_old + c) - R)^2))``
    (lm-human-preferences ``vf_losses``; TRL ``vf_loss``; [N-details] "value function loss
    clipping"). ``clipfrac`` is the masked fraction where the clipped term is the larger one.
    """
    old_values = old_values.detach()
    returns = returns.detach()
    clipped = torch.clamp(new_values, old_values - clip_value, old_values + clip_value)
    losses_unclipped = (new_values - returns) ** 2
    losses_clipped = (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(losses_unclipped, losses_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((losses_clipped > losses_unclipped).to(new_values.dtype), mask)
    return loss, clipfrac


@torch.no_grad()
def explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``1 - Var[R - V] / Var[R]`` over masked entries (cleanrl ``explained_var``).

    1 is a perfect critic, 0 no better than a constant, negative worse. nan when the returns
    have zero variance (or no valid entries), as cleanrl does.
    """
    m = _float_mask(mask, returns)
    values = values.to(returns.dtype)
    mean_r = masked_mean(returns, m)
    var_r = masked_mean((returns - mean_r) ** 2, m)
    diff = returns - values
    var_d = masked_mean((diff - masked_mean(diff, m)) ** 2, m)
    safe = torch.where(var_r > 0, var_r, torch.ones_like(var_r))
    return torch.where(var_r > 0, 1.0 - var_d / safe, torch.full_like(var_r, float("nan")))


# --------------------------------------------------------------------------------------------
# KL coefficient controllers (lm-human-preferences train_policy.py)
# --------------------------------------------------------------------------------------------


class FixedKLController:
    """Constant KL coefficient β (lm-human-preferences ``FixedKLController``)."""

    def __init__(self, value: float) -> None:
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: β stays fixed."""

    def state_dict(self) -> dict[str, Any]:
        """Serialisable state for checkpoints."""
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``value`` from :meth:`state_dict`."""
        self.value = float(state["value"])


class AdaptiveKLController:
    """β adapted towards a target KL (Ziegler et al. 2019, lm-human-preferences).

    After each batch: ``err = clip(current_kl / target - 1, -0.2, 0.2)``, then
    ``value *= 1 + err * n_steps / horizon`` where ``n_steps`` is the number of samples
    (episodes) the KL was measured on — lm-human-preferences passes the rollout batch size.
    """

    def __init__(self, init: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target=}, {horizon=}")
        self.value = float(init)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move β up when KL is above target and down when below, by at most 20% per horizon.

        A nan/inf KL leaves β unchanged: ``min``/``max`` pass nan through, and a nan β would
        poison every later step (the trainer counts such batches).
        """
        if not math.isfinite(current_kl):
            return
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        mult = 1.0 + proportional_error * n_steps / self.horizon
        self.value *= mult

    def state_dict(self) -> dict[str, Any]:
        """Serialisable state for checkpoints (target/horizon recorded for inspection)."""
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the adapted ``value``; target and horizon stay those of the current config."""
        self.value = float(state["value"])


KLController = FixedKLController | AdaptiveKLController
