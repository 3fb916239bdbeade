"""Typed configuration: one frozen class per ``params.yaml`` section.

Every field carries a one-line doc (the attribute docstring under it; ``rlhf-lab params`` prints
them). Loading is strict: an unknown key or a value of the wrong type fails with one line
that names the file, the section and the key, e.g.::

    params.yaml: ppo.clip: expected a number, got 'wide'

Derived sizes (PPO minibatch size, ...) are computed once here and checked, in the spirit of
lm-human-preferences' ``validate()``: bad combinations fail before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlhf_lab.errors import ConfigError
from rlhf_lab.io import decode_utf8


class Section(BaseModel):
    """Base for every params section: frozen, strict, unknown keys rejected, numbers finite.

    ``allow_inf_nan=False`` covers every float at any depth (``reward.weights`` values, list
    items): YAML reads ``.inf`` / ``.nan`` as floats, and a NaN weight makes every reward NaN
    while an infinite timeout overflows deep inside the HTTP client.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
        use_attribute_docstrings=True,
    )


class TaskConfig(Section):
    name: Literal["chat", "crs", "docstring"] = "chat"
    """Which task: preference-tuned chat, movie recommendation (ReDial) or docstrings."""
    system_prompt: str | None = None
    """System message put before every prompt; null keeps the chat template's default."""


class ModelsConfig(Section):
    policy: str = "embedded:smollm2-135m-instruct"
    """Policy source: an embedded name (embedded:...), a local directory or a hub id."""
    encoder: str = "embedded:all-minilm-l6-v2"
    """Encoder for the reward model and BERTScore: embedded name, local dir or hub id."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for hub ids; ignored for local sources."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the policy is materialised in (float32 on CPU; bfloat16 on recent GPUs)."""
    mixed_precision: Literal["fp32", "bf16", "auto"] = "auto"
    """bf16 autocast for sampling, judging and training forward passes; auto: where native."""


class DataConfig(Section):
    source: str = "chitchat"
    """Where rows come from: 'chitchat' (embedded), a local file or a hub dataset id."""
    format: Literal[
        "auto",
        "chitchat",
        "hh",
        "preference",
        "prompt_only",
        "prompt_completion",
        "messages",
        "redial",
        "crs_turns",
        "docstring",
        "humaneval",
    ] = "auto"
    """Row format of the source; 'auto' infers it from the task and the source."""
    data_dir: str | None = None
    """Hub subset (data_dir), e.g. 'helpful-base' for Anthropic/hh-rlhf."""
    split: str = "train"
    """Hub split to read when the source is a hub id."""
    pairs: Literal["auto", "human", "reference_vs_sample", "judge"] = "auto"
    """Pair construction: human labels, reference vs base-policy sample (SPIN), or judge."""
    num_candidates: int = Field(2, ge=2)
    """Replies sampled per prompt when data.pairs is 'judge'."""
    max_examples: int = Field(300, ge=0)
    """Rows kept from the source after validation (0 = all); sampled deterministically."""
    max_turns: int = Field(3, ge=1)
    """Dialogue turns of context kept in a prompt (the most recent ones)."""
    max_chars: int = Field(2000, ge=16)
    """Longest text (any single turn or reply) accepted, in characters."""
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Fraction of rows in the valid split (by a hash of id and seed)."""
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Fraction of rows in the test split (by a hash of id and seed)."""
    max_invalid_fraction: float = Field(0.2, ge=0.0, le=1.0)
    """The stage fails when more than this fraction of source rows is invalid."""
    catalogue: str | None = None
    """crs only: a movie catalogue, ReDial movies_with_mentions.csv or an id -> name .json."""
    sample_max_new_tokens: int = Field(32, ge=1)
    """Longest reply sampled from the base policy when building pairs (tokens)."""
    unfinished_samples: Literal["keep", "trim", "drop"] = "trim"
    """Sampled reply cut at the token limit: trim to its last sentence end (drop if none)."""
    sample_temperature: float = Field(0.7, gt=0.0)
    """Sampling temperature for base-policy replies."""
    sample_batch_size: int = Field(16, ge=1)
    """Prompts per generation batch."""
    seed: int = 0
    """Seed for splitting, subsampling and sampling."""

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError("data.valid_fraction + data.test_fraction must be below 1")
        return self


class JudgeConfig(Section):
    backend: Literal["local", "openai", "none"] = "local"
    """'local' scores with a causal LM in-process, 'openai' calls a chat-completions server."""
    model: str = "models/base/policy"
    """Judge model: a local dir or hub id (local), or the served model name (openai)."""
    base_url: str | None = None
    """openai backend: server URL, e.g. http://127.0.0.1:8000/v1 (vLLM, Ollama, llama.cpp)."""
    api_key_env: str = "OPENAI_API_KEY"
    """openai backend: name of the env var holding the API key (the key is never stored)."""
    batch_size: int = Field(8, ge=1)
    """local backend: replies scored per forward pass."""
    max_length: int = Field(256, ge=32)
    """local backend: longest judge prompt in tokens (truncated from the left)."""
    pairwise: bool = False
    """Also compare chosen vs rejected head to head, in both orders to cancel position bias."""
    min_margin: float = Field(0.25, ge=0.0)
    """data.pairs=judge: candidate pairs whose score gap is below this are dropped as ties."""
    timeout_s: float = Field(60.0, gt=0.0, le=86400.0)
    """openai backend: per-request timeout in seconds."""
    max_retries: int = Field(3, ge=0)
    """openai backend: retries per item (exponential backoff) before it counts as failed."""
    concurrency: int = Field(4, ge=1)
    """openai backend: requests in flight at once."""
    cache_dir: str = ".cache/judge"
    """Resumable score cache keyed by (judge model, rubric sha, text sha)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """local backend: dtype the judge runs in (float32 on CPU; bfloat16 on recent GPUs)."""
    logprobs: bool = True
    """openai backend: ask for top logprobs (expected rating); false parses the digit only."""
    retry_backoff_s: float = Field(1.0, gt=0.0, le=3600.0)
    """openai backend: first retry waits this long (seconds), doubling each retry."""
    max_failure_fraction: float = Field(0.0, ge=0.0, le=1.0)
    """Fail the stage (outputs still written) when more items fail; a re-run scores only those."""
    max_fallback_fraction: float = Field(0.05, ge=0.0, le=1.0)
    """Fail the stage when more items get the neutral score (no rating even when re-asked)."""

    @model_validator(mode="after")
    def _backend(self) -> JudgeConfig:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("judge.base_url is required when judge.backend is 'openai'")
        if self.base_url:
            # base_url is a param: it lands in dvc.lock, so it must never hold a secret.
            parts = urlsplit(self.base_url)
            if "@" in parts.netloc:
                raise ValueError(
                    "judge.base_url must not hold credentials (user:password@): put the key "
                    "in the environment variable that judge.api_key_env names"
                )
            try:
                parts.port  # noqa: B018  (parsing it raises on a bad port)
            except ValueError:
                raise ValueError("judge.base_url has an invalid port") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("judge.base_url must be an http:// or https:// URL")
            if parts.query or parts.fragment:
                raise ValueError("judge.base_url must not have a query string or fragment")
        return self


class RewardTrainConfig(Section):
    lr: float = Field(1.0e-4, gt=0.0)
    """AdamW learning rate for the reward model."""
    epochs: int = Field(3, ge=1)
    """Passes over the training pairs."""
    batch_size: int = Field(16, ge=1)
    """Pairs per optimiser step."""
    max_length: int = Field(192, ge=16)
    """Longest (prompt + reply) in encoder tokens; truncated from the left."""
    weight_decay: float = Field(0.01, ge=0.0)
    """AdamW weight decay."""
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    """Fraction of steps with linear learning-rate warm-up."""
    max_grad_norm: float = Field(1.0, gt=0.0)
    """Global gradient-norm clip."""
    max_bad_steps: int = Field(3, ge=1)
    """Abort after this many optimiser steps skipped for a non-finite loss or gradient."""
    seed: int = 0
    """Seed for head init and shuffling."""


class RewardConfig(Section):
    train: RewardTrainConfig = RewardTrainConfig()
    """Reward-model training (the train_reward stage reads only this part)."""
    weights: dict[str, float] = {"reward_model": 1.0, "text/length": 1.0}
    """Composite PPO score: weight per component (reward_model, judge, text/..., task/...)."""
    weights_end: dict[str, float] | None = None
    """If set, weights move linearly from `weights` to these over PPO training (curriculum)."""
    length_band: list[int] = [12, 40]
    """Reply length band [lo, hi] (whitespace tokens) that the text/length reward scores 1."""

    @model_validator(mode="after")
    def _band(self) -> RewardConfig:
        band = self.length_band
        if len(band) != 2 or not 0 <= band[0] <= band[1]:
            raise ValueError(f"reward.length_band must be [lo, hi] with 0 <= lo <= hi, got {band}")
        return self


class LoraConfig(Section):
    r: int = Field(16, ge=1)
    """LoRA rank."""
    alpha: int = Field(32, ge=1)
    """LoRA alpha (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """LoRA dropout."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Modules that get adapters (peft names), or 'all-linear'."""


class SftConfig(Section):
    lr: float = Field(2.0e-4, gt=0.0)
    """AdamW learning rate for the LoRA parameters."""
    epochs: int = Field(1, ge=1)
    """Passes over the training replies."""
    batch_size: int = Field(8, ge=1)
    """Sequences per optimiser step."""
    max_length: int = Field(192, ge=16)
    """Longest prompt + reply in tokens (prompt truncated from the left)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay on the LoRA matrices."""
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    """Fraction of steps with linear learning-rate warm-up."""
    max_grad_norm: float = Field(1.0, gt=0.0)
    """Global gradient-norm clip."""
    max_bad_steps: int = Field(3, ge=1)
    """Abort after this many optimiser steps skipped for a non-finite loss or gradient."""
    lora: LoraConfig = LoraConfig()
    """LoRA adapter settings; the adapter is merged into models/sft at the end."""
    seed: int = 0
    """Seed for adapter init and shuffling."""


class DpoConfig(Section):
    beta: float = Field(0.1, gt=0.0)
    """β: strength of the implicit KL tie to the reference (the SFT model); smaller drifts more."""
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """sigmoid: DPO (Rafailov et al. 2023); ipo: IPO (Azar et al. 2023); hinge: SLiC."""
    lr: float = Field(1.0e-4, gt=0.0)
    """AdamW learning rate for the LoRA parameters."""
    epochs: int = Field(1, ge=1)
    """Passes over the training pairs."""
    batch_size: int = Field(8, ge=1)
    """Preference pairs per optimiser step."""
    max_length: int = Field(192, ge=16)
    """Longest prompt + reply in tokens, per side (prompt truncated from the left)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay on the LoRA matrices."""
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    """Fraction of steps with linear learning-rate warm-up."""
    max_grad_norm: float = Field(1.0, gt=0.0)
    """Global gradient-norm clip."""
    max_bad_steps: int = Field(3, ge=1)
    """Abort after this many optimiser steps skipped for a non-finite loss or gradient."""
    lora: LoraConfig = LoraConfig()
    """LoRA adapter on the SFT model; merged into models/dpo at the end."""
    seed: int = 0
    """Seed for adapter init and shuffling."""


class CriticConfig(Section):
    target: Literal["ppo_score", "reward_model", "judge"] = "ppo_score"
    """Warm-start target: PPO's clipped composite score, the reward model's, or the judge's."""
    head_init: Literal["least_squares", "random"] = "least_squares"
    """Value head before training: ridge fit on the frozen features, or random (N(0, 1/√(H+1)))."""
    lr: float = Field(1.0e-4, gt=0.0)
    """AdamW learning rate for the critic adapter and value head."""
    epochs: int = Field(0, ge=0)
    """Passes of LoRA + head training after the head init (0: the least-squares head alone)."""
    batch_size: int = Field(8, ge=1)
    """Replies per optimiser step."""
    max_length: int = Field(128, ge=16)
    """Longest prompt + reply in tokens."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay on the LoRA matrices and the value head."""
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    """Fraction of steps with linear learning-rate warm-up."""
    max_grad_norm: float = Field(1.0, gt=0.0)
    """Global gradient-norm clip."""
    max_bad_steps: int = Field(3, ge=1)
    """Abort after this many optimiser steps skipped for a non-finite loss or gradient."""
    lora: LoraConfig = LoraConfig()
    """LoRA adapter settings of the critic."""
    seed: int = 0
    """Seed for init and shuffling."""
    shared_trunk: bool = False
    """PPO (gae): the value head reads the policy's hidden states, no critic adapter (1 pass)."""

    @model_validator(mode="after")
    def _something_learnt(self) -> CriticConfig:
        if self.epochs == 0 and self.head_init == "random":
            raise ValueError(
                "critic.epochs 0 with critic.head_init random would hand PPO an untrained "
                "critic: use head_init least_squares or epochs >= 1"
            )
        # A shared trunk keeps only the value head of models/critic: trained with its own
        # adapter, the head would read features the policy does not have (and the adapter's
        # training would be thrown away). Fitted on the frozen base (epochs 0), it reads exactly
        # the fresh policy's features, whose LoRA B starts at 0.
        if self.shared_trunk and self.epochs:
            raise ValueError(
                f"critic.shared_trunk needs critic.epochs 0 (got {self.epochs}): PPO keeps only "
                "the value head, fitted on the frozen base's features (head_init least_squares)"
            )
        return self


@dataclass(frozen=True)
class EstimatorSpec:
    """What one ``ppo.advantage`` estimator needs from a run (its maths:
    :mod:`rlhf_lab.ppo.advantages`, one registered class per name below).

    Kept here, torch-free, because loading params.yaml must know it (choices, validators, the
    critic layout) without importing the PPO maths: every stage loads params, and what a stage
    imports is what DVC reruns it for (``tests/test_dvc_deps.py``).
    """

    doc: str
    """One line for ``docs/estimators.md`` and error messages."""
    critic: bool = False
    """Needs a value model (critic adapter or value head), trained alongside the policy."""
    group: bool = False
    """Compares the ``ppo.num_generations`` replies to one prompt (so needs at least 2)."""
    loss_agg: str | None = None
    """A policy-loss aggregation the estimator fixes (``ppo.loss_agg`` must stay token_mean);
    None: ``ppo.loss_agg`` chooses."""


ESTIMATORS: dict[str, EstimatorSpec] = {
    "gae": EstimatorSpec("PPO: GAE(γ, λ) on the critic's values, whitened", critic=True),
    "grpo": EstimatorSpec("group-relative: (score - group mean) / std", group=True),
    "dr_grpo": EstimatorSpec(
        "Dr. GRPO: score - group mean, no std; loss over a constant length",
        group=True,
        loss_agg="token_sum",
    ),
    "rloo": EstimatorSpec("leave-one-out: score - mean of the prompt's other replies", group=True),
    "reinforce_pp": EstimatorSpec("REINFORCE++: discounted return, whitened over the batch"),
}
"""Every ``ppo.advantage``, in the order docs and benchmarks list them (OpenRLHF's
``--advantage_estimator``, verl's ``@register_adv_est``)."""


class CriticLayout(StrEnum):
    """Where PPO's value estimate comes from: one choice, made by :meth:`choose` from whether
    the estimator needs a critic (``ppo.advantage``) and ``critic.shared_trunk``."""

    NONE = "none"
    """Critic-free estimator: the policy adapter alone; ``models/critic`` is not read."""
    SEPARATE = "separate"
    """A critic LoRA adapter + value head on the shared frozen base (two backbone passes)."""
    SHARED_TRUNK = "shared_trunk"
    """The value head on the policy adapter's hidden states (lm-human-preferences, TRL's
    original ``AutoModelForCausalLMWithValueHead``): one backbone pass, one backward."""

    @classmethod
    def choose(cls, critic: bool, shared_trunk: bool) -> CriticLayout:
        """The layout of a run whose estimator needs a ``critic`` (``critic.shared_trunk``
        means nothing without one)."""
        if not critic:
            return cls.NONE
        return cls.SHARED_TRUNK if shared_trunk else cls.SEPARATE

    @property
    def has_critic(self) -> bool:
        return self is not CriticLayout.NONE


class PpoConfig(Section):
    steps: int = Field(12, ge=1)
    """PPO iterations (each: one rollout batch, then `epochs` passes of updates)."""
    advantage: Literal[tuple(ESTIMATORS)] = "gae"  # type: ignore[valid-type]
    """Advantage estimator: gae (with a critic); grpo, dr_grpo, rloo, reinforce_pp (critic-free)."""
    num_generations: int = Field(1, ge=1)
    """Replies sampled per prompt (grpo/dr_grpo/rloo compare them: at least 2)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """grpo: divide by the group's std, the batch's std, or nothing (Dr. GRPO)."""
    batch_size: int = Field(16, ge=1)
    """Prompts per rollout batch (each sampled num_generations times)."""
    minibatches: int = Field(2, ge=1)
    """Minibatches per PPO epoch (minibatch size = batch_size * num_generations / minibatches)."""
    epochs: int = Field(2, ge=1)
    """PPO epochs over each rollout batch."""
    lr: float = Field(2.0e-4, gt=0.0)
    """AdamW learning rate (policy adapter, critic adapter and value head)."""
    max_grad_norm: float = Field(1.0, gt=0.0)
    """Global gradient-norm clip."""
    clip: float = Field(0.2, gt=0.0)
    """Policy ratio clip range ε."""
    clip_value: float = Field(0.2, gt=0.0)
    """Value clip range around the rollout values."""
    vf_coef: float = Field(0.1, ge=0.0)
    """Weight of the value loss in the total loss (gae only)."""
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    """Discount of gae and reinforce_pp returns (grpo/rloo credit the whole reply: 1)."""
    lam: float = Field(0.95, ge=0.0, le=1.0)
    """GAE λ (gae only)."""
    kl_coef: float = Field(0.1, ge=0.0)
    """β: initial (adaptive) or fixed KL penalty coefficient."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimator in the reward (k1 = log-ratio; k3 = unbiased, non-negative)."""
    kl_in_loss: bool = False
    """Put β·KL (k3, per token) in the policy loss as GRPO does, instead of in the reward."""
    loss_agg: Literal["token_mean", "seq_mean"] = "token_mean"
    """Policy loss over a minibatch: mean over all tokens (DAPO) or per reply, then over replies."""
    critic_warmup_steps: int = Field(0, ge=0)
    """gae: the first this many steps update only the critic (shared trunk: the value head)."""
    adaptive_kl: bool = False
    """Use the adaptive KL controller (Ziegler et al. 2019) instead of a fixed β."""
    kl_target: float = Field(6.0, gt=0.0)
    """Adaptive controller: target KL per reply (nats)."""
    kl_horizon: int = Field(10000, ge=1)
    """Adaptive controller: horizon (in samples)."""
    whiten_rewards: bool = False
    """Whiten per-token rewards across the batch before GAE (gae only)."""
    target_approx_kl: float | None = Field(None, gt=0.0)
    """Stop the epochs of a step early when approx-KL passes this (null: never)."""
    temperature: float = Field(0.7, gt=0.0)
    """Sampling temperature (the same temperature is used to recompute logprobs)."""
    max_new_tokens: int = Field(32, ge=1)
    """Longest reply in tokens."""
    max_prompt_length: int = Field(192, ge=8)
    """Longest prompt in tokens (oldest turns dropped first, then cut from the left)."""
    missing_eos_penalty: float | None = Field(1.0, ge=0.0)
    """Subtracted from the score of a reply that never emits EOS (null: no penalty)."""
    score_clip: float | None = Field(5.0, gt=0.0)
    """Clip the normalised score to ±this before shaping (null: no clip)."""
    lora: LoraConfig = LoraConfig()
    """Policy adapter settings."""
    save_every: int = Field(10, ge=1)
    """Checkpoint every this many steps (for --resume)."""
    max_bad_steps: int = Field(3, ge=1)
    """Abort after this many updates skipped for a non-finite loss."""
    seed: int = 0
    """Seed for sampling and minibatch order."""
    logprobs_from_sampling: bool = False
    """Keep the policy's rollout log-probs from the sampling pass (float32, no shared trunk)."""
    share_prompt_cache: bool = False
    """Prefill each prompt once and sample its num_generations replies from copies of its cache."""
    sort_by_length: bool = False
    """Evaluate the rollout in chunks of similar prompt length (less padding; same order out)."""

    @model_validator(mode="after")
    def _sizes(self) -> PpoConfig:
        if self.rollout_size % self.minibatches:
            raise ValueError(
                f"ppo.batch_size * ppo.num_generations ({self.rollout_size}) must be divisible "
                f"by ppo.minibatches ({self.minibatches})"
            )
        # lm-human-preferences asserts minibatch_size >= 8 when whitening: whitening a
        # handful of advantages amplifies noise into the update.
        if self.minibatch_size < 2:
            raise ValueError(
                "ppo.batch_size * ppo.num_generations / ppo.minibatches must be at least 2"
            )
        spec = self.estimator
        if spec.group and self.num_generations < 2:
            raise ValueError(
                f"ppo.num_generations must be at least 2 for ppo.advantage: {self.advantage} "
                f"(the baseline is the other replies to the same prompt), got "
                f"{self.num_generations}"
            )
        if self.critic_warmup_steps and not spec.critic:
            with_critic = " | ".join(k for k, v in ESTIMATORS.items() if v.critic)
            raise ValueError(
                f"ppo.critic_warmup_steps applies only to ppo.advantage: {with_critic} "
                f"(ppo.advantage: {self.advantage} has no critic); set it to 0"
            )
        if spec.loss_agg is not None and self.loss_agg != "token_mean":
            raise ValueError(
                f"ppo.advantage: {self.advantage} fixes the policy loss's aggregation "
                f"({spec.loss_agg}); leave ppo.loss_agg at token_mean (got {self.loss_agg})"
            )
        return self

    @property
    def estimator(self) -> EstimatorSpec:
        """What ``ppo.advantage`` needs (:data:`ESTIMATORS`)."""
        return ESTIMATORS[self.advantage]

    @property
    def critic_free(self) -> bool:
        """True for the estimators that need no critic (no value head, no models/critic)."""
        return not self.estimator.critic

    @property
    def rollout_size(self) -> int:
        """Replies per rollout batch: batch_size prompts × num_generations samples each."""
        return self.batch_size * self.num_generations

    @property
    def minibatch_size(self) -> int:
        """Rollouts (replies) per gradient step."""
        return self.rollout_size // self.minibatches


class EvalGates(Section):
    """Thresholds of the evaluate verdict, checked on each policy vs the baseline (``eval``).

    Below, PPO stands for any of ``eval.policies`` and SFT for ``eval.baseline``.

    Hard gates: ``reward_gain`` (mean reward-model gain > ``min_reward_gain``),
    ``significance`` (its paired Wilcoxon p-value < ``max_rm_pvalue``), ``kl`` (KL(PPO || SFT)
    < ``max_kl``) and ``bertscore`` (PPO's BERTScore F1 to the references not below the lower
    end of SFT's 95% CI: a reward gain that a signal the reward model never trained on does not
    see is reward hacking). Soft gates: ``bleu_drop``, ``distinct2_drop`` and ``eos_rate_drop``
    (collapse). Verdict: ``proceed`` when every gate passes; ``adjust`` when only one soft gate
    fails (retune, e.g. a larger KL coefficient or more diversity reward); ``reconsider`` when a
    hard gate fails or several soft gates fail (the run did not buy reward, or bought it by
    drifting too far).
    """

    min_reward_gain: float = 0.0
    """Proceed only if PPO's mean reward-model score beats SFT's by more than this."""
    max_kl: float = Field(10.0, ge=0.0)
    """Proceed only if KL(PPO || SFT) per reply is below this (nats)."""
    max_bleu_drop: float = Field(2.0, ge=0.0)
    """Proceed only if BLEU falls by at most this (BLEU points)."""
    max_distinct2_drop: float = Field(0.1, ge=0.0)
    """Proceed only if distinct-2 falls by at most this fraction of SFT's."""
    max_eos_rate_drop: float = Field(0.1, ge=0.0)
    """Proceed only if the EOS rate falls by at most this fraction of SFT's."""
    max_rm_pvalue: float = Field(0.05, gt=0.0, le=1.0)
    """Proceed only if the reward gain's paired Wilcoxon p-value is below this."""
    bertscore_within_ci: bool = True
    """Proceed only if PPO's BERTScore F1 is not below SFT's 95% CI (off: not checked)."""


EVAL_RESERVED = ("ref", "delta", "verdict", "eval")
"""Metric-key prefixes evaluate uses itself, so no model may be named after them."""


class EvalConfig(Section):
    policies: list[str] = ["ppo", "dpo"]
    """Policies compared with the baseline, each the model dir models/<name> (e.g. ppo, dpo)."""
    baseline: str = "sft"
    """The model every policy is compared with: the model dir models/<name> (e.g. sft)."""
    num_prompts: int = Field(60, ge=1)
    """Held-out prompts evaluated (from data/prompts/test.jsonl)."""
    batch_size: int = Field(16, ge=1)
    """Prompts per generation batch."""
    max_new_tokens: int = Field(32, ge=1)
    """Longest reply in tokens."""
    temperature: float = Field(0.7, ge=0.0)
    """Sampling temperature (0 = greedy); the same for every model."""
    bertscore_layers: int = Field(6, ge=1)
    """Encoder layer BERTScore reads (MiniLM-L6 has 6)."""
    n_boot: int = Field(2000, ge=100)
    """Bootstrap resamples for confidence intervals."""
    gates: EvalGates = EvalGates()
    """Thresholds for the proceed / adjust / reconsider verdict."""
    judge: bool = False
    """Score replies with the configured judge too (slow on CPU)."""
    seed: int = 0
    """Seed for sampling (shared by every model) and the bootstrap."""

    @model_validator(mode="after")
    def _models(self) -> EvalConfig:
        names = [*self.policies, self.baseline]
        if not self.policies:
            raise ValueError("eval.policies must name at least one policy")
        if len(set(names)) != len(names):
            raise ValueError(
                f"eval.policies {self.policies} must be distinct and not include "
                f"eval.baseline ({self.baseline!r})"
            )
        for name in names:
            # a name is a metric-key prefix and a folder under models/
            if name in EVAL_RESERVED or not name or "/" in name or name.startswith("."):
                raise ValueError(
                    f"eval: {name!r} cannot name a model (a folder under models/, not one of "
                    f"{', '.join(EVAL_RESERVED)})"
                )
        return self

    @property
    def models(self) -> list[str]:
        """The baseline, then the policies: the order of every table and plot."""
        return [self.baseline, *self.policies]


class Params(Section):
    """All of params.yaml."""

    task: TaskConfig = TaskConfig()
    models: ModelsConfig = ModelsConfig()
    data: DataConfig = DataConfig()
    judge: JudgeConfig = JudgeConfig()
    reward: RewardConfig = RewardConfig()
    critic: CriticConfig = CriticConfig()
    sft: SftConfig = SftConfig()
    ppo: PpoConfig = PpoConfig()
    dpo: DpoConfig = DpoConfig()
    eval: EvalConfig = EvalConfig()

    @property
    def critic_layout(self) -> CriticLayout:
        """train_ppo's model layout: from ``ppo.advantage`` and ``critic.shared_trunk``."""
        return CriticLayout.choose(self.ppo.estimator.critic, self.critic.shared_trunk)


def _describe(err: dict[str, Any]) -> str:
    kind = err["type"]
    got = err.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing key"
    if kind == "finite_number":
        return f"expected a finite number, got {got!r}"
    if kind in {"float_type", "int_type", "bool_type", "string_type", "dict_type", "list_type"}:
        want = {
            "float_type": "a number",
            "int_type": "an integer",
            "bool_type": "true or false",
            "string_type": "a string",
            "dict_type": "a mapping",
            "list_type": "a list",
        }[kind]
        return f"expected {want}, got {got!r}"
    return f"{err['msg']} (got {got!r})"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a parsed YAML mapping; raise ConfigError with one line naming the key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        if err["type"] == "value_error":
            # model validators: the message already names the keys
            msg = str(err["msg"]).removeprefix("Value error, ")
            raise ConfigError(f"{source}: {msg}{more}") from None
        raise ConfigError(f"{source}: {key}: {_describe(err)}{more}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml`` (a missing file gives the defaults is NOT allowed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    text = decode_utf8(path.read_bytes(), str(path), ConfigError)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_params(raw, str(path))


def section_dict(params: Params, *names: str) -> dict[str, Any]:
    """The named sections as plain data, for provenance files next to saved models."""
    return {n: getattr(params, n).model_dump(mode="json") for n in names}


PARAMS_HEADER = (
    "# rlhf-lab parameters: one section per concept; each DVC stage reads only the sections it"
    " needs.\n"
    "# Every key is documented; 'dvc exp run -S ppo.clip=0.1' edits one. These are the code's"
    " defaults:\n"
    "# 'rlhf-lab params > params.yaml' regenerates this file byte for byte (a test checks it).\n"
    "\n"
)
"""Head of the committed params.yaml; ``rlhf-lab params`` prints it before the sections."""


def default_params_yaml() -> str:
    """The committed ``params.yaml``: the header, then every default with its doc line.

    The defaults in the classes above *are* the default run's profile (cleanrl's ``Args``,
    TRL's ``*Config``): there is no second copy in the YAML to drift from them.
    """
    return PARAMS_HEADER + documented_yaml()


def documented_yaml(params: Params | None = None) -> str:
    """``params`` as YAML with each field's doc line as a comment (used to write params.yaml)."""
    params = params or Params()
    lines: list[str] = []

    def emit(model: BaseModel, indent: int) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            pad = "  " * indent
            if field.description:
                lines.append(f"{pad}# {field.description}")
            if isinstance(value, BaseModel):
                lines.append(f"{pad}{name}:")
                emit(value, indent + 1)
            else:
                dumped = yaml.safe_dump(
                    {name: value}, default_flow_style=True, sort_keys=False, width=200
                ).strip()
                lines.append(f"{pad}{dumped.removeprefix('{').removesuffix('}')}")

    for name in Params.model_fields:
        lines.append(f"{name}:")
        emit(getattr(params, name), 1)
    return "\n".join(lines) + "\n"
