"""Typed configuration: one frozen class per ``params.yaml`` section.

Every field carries a one-line doc (the attribute docstring under it; ``rlhf-lab params`` prints
them). Loading is strict: an unknown key or a value of the wrong type fails with one line
that names the file, the section and the key, e.g.::

    params.yaml: ppo.clip: expected a number, got 'wide'

Derived sizes (PPO minibatch size, ...) are computed once here and checked, in the spirit of
lm-human-preferences' ``validate()``: bad combinations fail before any model is loaded.

This module stays whole: the project keeps one frozen class per section in this one file, so
``params.yaml``, ``rlhf-lab params`` and the cross-section checks read a single place.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from rlhf_lab.errors import ConfigError, clip
from rlhf_lab.io import decode_utf8

SEED_MAX = 2**32 - 1
"""Largest seed: numpy's and torch's seeding take 0 … 2**32 − 1 and fail deep in a stage beyond."""
MAX_YAML_NODES = 100_000
"""Largest params document, counted in YAML nodes *after* aliases expand (the default params
have ~300). Aliases share a node, so a ~300-byte "billion laughs" document is tiny on disk but
expands to 10**9 nodes in anything that walks it (validation, error messages)."""


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


TASK_FORMATS: dict[str, tuple[str, ...]] = {
    "chat": (),
    "crs": ("redial", "crs_turns"),
    "docstring": ("docstring", "humaneval"),
}
"""Every ``task.name`` -> the ``data.format`` values its rows come in, the first being what
``data.format: auto`` falls back to (none: any chat format, no fallback). The tasks themselves
(:func:`rlhf_lab.tasks.registry.get_task`) sit above config and data, which read only this;
a test checks that the registry registers exactly these names."""

TASKS: tuple[str, ...] = tuple(TASK_FORMATS)
"""Every ``task.name``."""


class TaskConfig(Section):
    name: Literal[tuple(TASKS)] = "chat"  # type: ignore[valid-type]
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


# The optimiser fields' types, constraints and doc lines, defined once: OptimConfig declares
# them, and a section that needs another default re-declares only the default
# (``lr: LearningRate = 2.0e-4``), keeping the constraint and the doc line.
LearningRate = Annotated[
    float, Field(gt=0.0, description="AdamW peak learning rate (reached after the warm-up).")
]
Epochs = Annotated[int, Field(ge=1, description="Passes over the training examples.")]
BatchSize = Annotated[
    int, Field(ge=1, description="Examples per optimiser step (a preference pair is one example).")
]
MaxLength = Annotated[
    int,
    Field(
        ge=16,
        description="Longest prompt + reply in tokens (the prompt is truncated from the left).",
    ),
]
WeightDecay = Annotated[
    float,
    Field(
        ge=0.0, description="AdamW weight decay (matrices only: biases and norm weights get none)."
    ),
]
WarmupRatio = Annotated[
    float, Field(ge=0.0, lt=1.0, description="Fraction of steps with linear learning-rate warm-up.")
]


class OptimConfig(Section):
    """The optimiser fields of every supervised loop (:mod:`rlhf_lab.training.loop`): the
    ``sft``, ``dpo``, ``critic`` and ``reward.train`` sections extend it.

    A section's own fields that params.yaml lists before these (DPO's loss, the critic's
    target) live in a class given after this one in the section's bases: pydantic orders the
    fields of the last base first.
    """

    lr: LearningRate = 1.0e-4
    epochs: Epochs = 1
    batch_size: BatchSize = 8
    max_length: MaxLength = 192
    weight_decay: WeightDecay = 0.0
    warmup_ratio: WarmupRatio = 0.1
    max_grad_norm: float = Field(1.0, gt=0.0)
    """Global gradient-norm clip."""
    max_bad_steps: int = Field(3, ge=1)
    """Abort after this many optimiser steps skipped for a non-finite loss or gradient."""


class RewardTrainConfig(OptimConfig):
    epochs: Epochs = 3
    batch_size: BatchSize = 16
    weight_decay: WeightDecay = 0.01
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


class SftConfig(OptimConfig):
    lr: LearningRate = 2.0e-4
    warmup_ratio: WarmupRatio = 0.05
    lora: LoraConfig = LoraConfig()
    """LoRA adapter settings; the adapter is merged into models/sft at the end."""
    seed: int = 0
    """Seed for adapter init and shuffling."""


class DpoObjective(Section):
    """The DPO loss (listed first in the ``dpo`` section)."""

    beta: float = Field(0.1, gt=0.0)
    """β: strength of the implicit KL tie to the reference (the SFT model); smaller drifts more."""
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """sigmoid: DPO (Rafailov et al. 2023); ipo: IPO (Azar et al. 2023); hinge: SLiC."""


class DpoConfig(OptimConfig, DpoObjective):
    lora: LoraConfig = LoraConfig()
    """LoRA adapter on the SFT model; merged into models/dpo at the end."""
    seed: int = 0
    """Seed for adapter init and shuffling."""


class CriticTarget(Section):
    """What the critic warm-start fits (listed first in the ``critic`` section)."""

    target: Literal["ppo_score", "reward_model", "judge"] = "ppo_score"
    """Warm-start target: PPO's clipped composite score, the reward model's, or the judge's."""
    head_init: Literal["least_squares", "random"] = "least_squares"
    """Value head before training: ridge fit on the frozen features, or random (N(0, 1/√(H+1)))."""


class CriticConfig(OptimConfig, CriticTarget):
    epochs: int = Field(0, ge=0)
    """Passes of LoRA + head training after the head init (0: the least-squares head alone)."""
    max_length: MaxLength = 128
    warmup_ratio: WarmupRatio = 0.05
    lora: LoraConfig = LoraConfig()
    """LoRA adapter settings of the critic."""
    seed: int = 0
    """Seed for init and shuffling."""
    shared_trunk: bool = True
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
                "the value head, fitted on the frozen base's features (head_init least_squares); "
                "set critic.shared_trunk false for a critic with its own trained adapter"
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


class ProtocolGates(Section):
    """A task's own decision rule (the docstring task's Phase-1 protocol), on the task's rule
    reward, BLEU-4 and the mean KL per token (``eval.gates.protocol``).

    Below, PPO stands for any of ``eval.policies`` and SFT for ``eval.baseline``; the reward is
    the weighted mean of the rule components (``reward.weights`` without ``reward_model`` and
    ``judge``), BLEU-4 corpus BLEU on the 0-1 scale, KL the mean KL(PPO || SFT) per sampled
    token. ``reconsider`` when the reward or BLEU-4 fell or KL > ``reconsider_kl_per_token``;
    else ``proceed`` when the reward rose by >= ``min_reward_gain``, BLEU-4 by >=
    ``min_bleu_gain`` and KL < ``max_kl_per_token``; else ``adjust`` (the reward rose by less
    than ``adjust_reward_gain``, KL is above ``max_kl_per_token``, or a gain fell short of the
    proceed bar). A null threshold takes the task's default
    (:attr:`rlhf_lab.tasks.base.Task.gate_defaults`).
    """

    use: bool | None = None
    """Decide by this rule, not the generic gates; null: where the task has one (docstring)."""
    min_reward_gain: float | None = None
    """proceed: the mean rule reward rose by at least this (null: the task's default)."""
    min_bleu_gain: float | None = None
    """proceed: corpus BLEU-4 (0-1 scale) rose by at least this (null: the task's default)."""
    max_kl_per_token: float | None = Field(None, ge=0.0)
    """proceed: mean KL per token below this (nats); above it: adjust (null: the task's default)."""
    adjust_reward_gain: float | None = None
    """adjust: the mean rule reward rose by less than this (null: the task's default)."""
    reconsider_kl_per_token: float | None = Field(None, ge=0.0)
    """reconsider: mean KL per token above this (nats) (null: the task's default)."""


class EvalGates(Section):
    """Thresholds of the evaluate verdict, checked on each policy vs the baseline (``eval``).

    Below, PPO stands for any of ``eval.policies`` and SFT for ``eval.baseline``.

    Hard gates: ``reward_gain`` (mean reward-model gain > ``min_reward_gain``),
    ``significance`` (its paired Wilcoxon p-value < ``max_rm_pvalue``), ``kl`` (KL(PPO || SFT)
    < ``max_kl``) and ``bertscore`` (PPO's BERTScore F1 to the references not below the lower
    end of SFT's 95% CI: a reward gain that a signal the reward model never trained on does not
    see is reward hacking). Soft gates: ``bleu_drop``, ``distinct2_drop`` and ``eos_rate_drop``
    (collapse). Verdict (unless ``protocol`` applies): ``proceed`` when every gate passes;
    ``adjust`` when only one soft gate fails (retune, e.g. a larger KL coefficient or more
    diversity reward); ``reconsider`` when a hard gate fails or several soft gates fail (the
    run did not buy reward, or bought it by drifting too far).
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
    protocol: ProtocolGates = ProtocolGates()
    """The task's own rule (docstring: Phase-1 protocol); when used it replaces the gates above."""


EVAL_RESERVED = ("ref", "delta", "verdict", "eval")
"""Metric-key prefixes evaluate uses itself, so no model may be named after them."""


class EvalConfig(Section):
    policies: list[str] = ["ppo", "dpo"]
    """Policies compared with the baseline, each the model dir models/<name> (e.g. ppo, dpo)."""
    baseline: str = "sft"
    """The model every policy is compared with: the model dir models/<name> (e.g. sft)."""
    num_prompts: int = Field(60, ge=1)
    """Held-out prompts evaluated (from data/grounded/test.jsonl)."""
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


class RecommenderConfig(Section):
    """The crs recommender (train_recommender; other tasks skip the stage)."""

    folds: int = Field(5, ge=2)
    """Dialogue folds for the out-of-fold signals the blend's weights are learnt on."""
    hard_negatives: int = Field(20, ge=0)
    """Per training turn and signal: its top non-gold movies the blend learns to rank below gold."""
    random_negatives: int = Field(500, ge=1)
    """Per training turn: uniformly drawn non-gold movies (the catalogue the ranking is over)."""
    ngram_max: int = Field(2, ge=1)
    """Longest word n-gram of the TF-IDF text signal."""
    min_df: int = Field(1, ge=1)
    """TF-IDF: ignore words in fewer training turns than this."""
    c: float = Field(1.0, gt=0)
    """Inverse L2 strength of the logistic-regression blend (scikit-learn's C)."""
    demote: bool = True
    """Rank movies the seeker has seen or disliked after every other movie, as ECR does."""
    seed: int = 0
    """Seed for the random negatives and the paired bootstrap."""
    candidates: int = Field(5, ge=1)
    """Top-k recommender candidates a grounded crs prompt carries (ECR's retrieval prompt)."""


class TrackingConfig(Section):
    """Where the training curves go besides DVC (rlhf_lab.tracking). No stage declares this
    section: it changes where numbers are sent, never a stage's outputs."""

    log_with: list[Literal["dvclive", "tensorboard", "mlflow", "wandb"]] = ["dvclive"]
    """Trackers: dvclive (always: DVC's plots read it) plus tensorboard, mlflow, wandb."""
    dir: str = "runs"
    """TensorBoard's log dir (one sub-folder per stage) and wandb's working dir."""
    mlflow_uri: str = "file:./mlruns"
    """MLflow tracking URI: a local file store by default, or an http(s) server."""
    project: str = "rlhf-lab"
    """MLflow experiment and wandb project name; each stage is one run in it."""

    @field_validator("log_with")
    @classmethod
    def _dvclive_stays(cls, value: list[str]) -> list[str]:
        if "dvclive" not in value:
            raise ValueError("tracking.log_with must include dvclive (DVC's plots read it)")
        return value


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
    recommender: RecommenderConfig = RecommenderConfig()
    tracking: TrackingConfig = TrackingConfig()

    @property
    def critic_layout(self) -> CriticLayout:
        """train_ppo's model layout: from ``ppo.advantage`` and ``critic.shared_trunk``."""
        return CriticLayout.choose(self.ppo.estimator.critic, self.critic.shared_trunk)


def _describe(err: dict[str, Any]) -> str:
    kind = err["type"]
    got = clip(err.get("input"))
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing key"
    if kind == "finite_number":
        return f"expected a finite number, got {got}"
    if kind in {"float_type", "int_type", "bool_type", "string_type", "dict_type", "list_type"}:
        want = {
            "float_type": "a number",
            "int_type": "an integer",
            "bool_type": "true or false",
            "string_type": "a string",
            "dict_type": "a mapping",
            "list_type": "a list",
        }[kind]
        return f"expected {want}, got {got}"
    return f"{err['msg']} (got {got})"


def _did_you_mean(loc: tuple[Any, ...]) -> str:
    """``" (did you mean 'clip'?)"`` for an unknown key close to a key of its section."""
    import difflib

    model: Any = Params
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return ""
        model = field.annotation
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a parsed YAML mapping; raise ConfigError with one line naming the key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    try:
        params = Params.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = clip(".".join(str(p) for p in err["loc"]), quote=False) or "(top level)"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        if err["type"] == "value_error":
            # model validators: the message already names the keys
            msg = clip(str(err["msg"]).removeprefix("Value error, "), 500, quote=False)
            raise ConfigError(f"{source}: {msg}{more}") from None
        hint = _did_you_mean(err["loc"]) if err["type"] == "extra_forbidden" else ""
        raise ConfigError(f"{source}: {key}: {_describe(err)}{hint}{more}") from None
    _check_seeds(params, "", source)
    return params


def _check_seeds(model: BaseModel, prefix: str, source: str) -> None:
    """Every field named ``seed``, in every section present or future, within 0 … SEED_MAX:
    checked when params load rather than when a stage seeds numpy/torch, minutes later."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            _check_seeds(value, f"{prefix}{name}.", source)
        elif name == "seed" and not 0 <= value <= SEED_MAX:
            raise ConfigError(
                f"{source}: {prefix}{name}: a seed is an integer from 0 to {SEED_MAX} "
                f"(got {clip(value)})"
            )


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``params.yaml`` (a missing file gives the defaults is NOT allowed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    text = decode_utf8(path.read_bytes(), str(path), ConfigError)
    loader = _ParamsLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_size(node, str(path))
        raw = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = clip(str(getattr(exc, "problem", None) or exc), quote=False)
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
    finally:
        loader.dispose()
    return parse_params(raw, str(path))


class _ParamsLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key twice in one mapping (PyYAML keeps the last one
    silently, so ``ppo: {lr: 1e-4, lr: 1}`` would train with 1)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *defaults` may be overridden by the keys beside it
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):  # unhashable: the base class says why
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {clip(key)}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_size(root: yaml.Node, source: str) -> None:
    """Refuse a document over :data:`MAX_YAML_NODES` nodes once aliases expand, or one that
    holds itself (``&a [*a]``), before anything walks it. Each distinct node is visited once
    (sizes memoised), so the check is linear in the file, not in the expansion."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, done = stack.pop()
        if done:
            open_nodes.discard(id(node))
            children = _children(node)
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            if size[id(node)] > MAX_YAML_NODES:
                line = node.start_mark.line + 1
                raise ConfigError(
                    f"{source}:{line}: YAML expands to over {MAX_YAML_NODES} values through "
                    "anchors and aliases (&x / *x); params are never that large"
                )
            continue
        if id(node) in size:
            continue
        if id(node) in open_nodes:
            raise ConfigError(
                f"{source}:{node.start_mark.line + 1}: YAML alias refers to a value that holds it"
            )
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


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
