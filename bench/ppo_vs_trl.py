"""Our PPO vs TRL's last PPOTrainer (trl 1.12.0): throughput and peak memory, same PPO shape.

    python bench/ppo_vs_trl.py --tiny          # smoke run on 2-layer random models (~1 min)
    python bench/ppo_vs_trl.py                 # models/sft (else models/base/policy), models/reward
    python bench/ppo_vs_trl.py --separate-critic  # ours with a critic adapter (its own results)
    python bench/ppo_vs_trl.py --policy /tmp/defrun/models/base/policy \\
        --reward /tmp/defrun/models/reward --prompts /tmp/defrun/data/prompts/train.jsonl

Each run is its own subprocess (so its peak RSS is its own ``ru_maxrss``), alternating
``ours, trl, ours, trl, ...`` for ``--repeats`` rounds. Both sides get the same policy
directory, the same prompt token ids (``rlhf_lab.ppo.model.chat_prompt_ids``, the first
``batch_size x (warmup + steps)`` prompts, each used once) in the same batches and order (our
trainer's seeded shuffle; TRL's loader is replaced by one over that order, so both pay for the
same left padding), batch size, minibatches, PPO epochs,
reply length, temperature, KL coefficient (fixed), missing-EOS penalty, learning rate, LoRA
config, seed and torch threads; the first ``--warmup`` steps are not timed. Prints a table and
writes ``bench/results/ppo_vs_trl.json``.

What each side trains (``--trl-mode lora``, the default, is the like-for-like comparison):

- ours (``rlhf_lab.ppo``), the pipeline's default (``critic.shared_trunk``): ONE frozen base, a
  policy LoRA adapter (peft, all-linear) and a scalar value head on the policy's hidden states:
  one backbone pass and one backward for both losses (TRL's own original
  ``AutoModelForCausalLMWithValueHead`` layout; TRL 1.12.0's PPOTrainer only takes a separate
  value model); reference = adapter disabled. ``--separate-critic``: a critic LoRA adapter +
  value head on the same base (two passes). Its figures go to their own file
  (``bench/results/ppo_vs_trl_separate_critic.json``), never mixed with the default's.
- trl, ``lora``: ``peft_config`` = the same LoRA config on the policy (TRL's reference is then the
  adapter-disabled policy, no copy); the value model is a *second* copy of the base
  (``AutoModelForSequenceClassification``, ``num_labels=1``, as TRL's examples) with the same LoRA
  config injected into its backbone + its ``score`` head trainable: the same trainable set as
  our critic, but TRL's trainer can only take a separate value model, so the base is in memory
  twice.
- trl, ``full``: TRL's default recipe: full policy, a deep-copied reference, full value model.

TRL calls the reward model on the *policy's* token ids (``get_reward``: ``model.<prefix>``
then ``model.score`` on the last hidden state, read at the last reply token). Our reward model is
an encoder that scores decoded text, so :class:`TrlRewardAdapter` is that interface around our
own scorer: its backbone finds the prompt (the sequence's prefix that is one of the prompts'
token ids), decodes the reply with the policy tokenizer (EOS dropped, as our trainer does) and
calls the same ``reward_model`` component our ``CompositeScorer`` uses (re-tokenise with the
encoder tokenizer, run ``RewardModel``, normalise); the scalar is broadcast over the sequence as
a ``[B, T, 1]`` "hidden state" and ``score`` is the identity, so TRL's indexing returns it.

Timing (:class:`StepClock`, the same for both): wall and CPU seconds of each step's rollout and
update, and of generation, reward scoring and (TRL) ``gc.collect`` inside them. Ours: wrappers
on the trainer instance's ``rollout`` / ``update``, the model's ``generate`` and the scorer.
TRL: a ``TrainerCallback`` marks step boundaries; the step's first pass of TRL's policy+value
wrapper (through the module function ``forward`` its loop calls) starts the update; wrappers
around its module-level ``batch_generation`` and ``gc.collect``; scoring inside the reward
adapter. samples/s = timed replies / timed seconds; tokens/s = generated reply tokens (up to and
including EOS) / timed seconds; both also per CPU-second, which a busy machine disturbs less.
Peak RSS is the child's ``ru_maxrss`` (everything: loading, rollout, update), with a 20 ms
sampler's peaks per phase beside it. With glibc's default (dynamic) mmap threshold most of a CPU
run's peak RSS is heap fragmentation from activations of varying shapes, not live tensors;
``--malloc-mmap-threshold 131072`` gives both runs a fixed threshold, so RSS tracks live memory.

trl 1.12.0 is installed on first use with ``pip install --no-deps --target bench/.trl`` (its
dependencies are already in the venv) and put first on the TRL child's ``PYTHONPATH``; the venv's
own trl is newer and has no PPOTrainer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from benchlib import RESULTS as RESULTS_DIR
from benchlib import ROOT, load_span, machine, shown_path
from benchlib import WORK as WORK_ROOT
from rlhf_lab.config import Params

HERE = ROOT / "bench"
TRL_VERSION = "1.12.0"
TRL_DIR = HERE / ".trl"
WORK = WORK_ROOT / "ppo_vs_trl"
RESULTS = RESULTS_DIR / "ppo_vs_trl.json"
# --tiny's figures say nothing about speed: they go under the ignored work dir, never RESULTS.
TINY_RESULTS = WORK / "tiny" / "ppo_vs_trl.json"
DEFAULTS = Params()
"""The pipeline's defaults: the PPO shape and critic layout a run with no flags measures."""
SEPARATE_CRITIC_SUFFIX = "_separate_critic"
"""--separate-critic's results file: RESULTS' (or TINY_RESULTS') name with this suffix."""
SIDES = ("ours", "trl")
GENERATED_PROMPTS = "generated tiny set"  # source_prompts of a run without --prompts
TARGET_SPEEDUP = 2.0
"""The PPO step this project aims for: twice TRL 1.12's PPOTrainer in samples/s."""
TINY_PROMPTS = [
    "hello how are you doing today",
    "what is your favorite movie",
    "i really like science fiction films",
    "can you recommend a film like alien",
    "thank you so much, that sounds lovely",
    "sorry to hear that, i hope you feel better soon",
    "what do you think of star wars",
    "the quick brown fox jumps over the lazy dog",
]


@dataclass(frozen=True)
class Spec:
    """Everything a run needs; written to JSON and read back by each child process."""

    policy: str
    """Policy (SFT) model directory: ours' frozen base, TRL's policy and value model."""
    reward: str
    """Reward model directory (models/reward format)."""
    prompts: str
    """JSONL of the prompt rows both sides train on (each used once)."""
    critic: str
    """Our fresh critic directory (made by the prepare child from ``policy``)."""
    batch_size: int
    minibatches: int
    epochs: int
    max_new_tokens: int
    max_prompt_length: int
    temperature: float
    lr: float
    kl_coef: float
    missing_eos_penalty: float
    lora_r: int
    lora_alpha: int
    steps: int
    """Timed PPO steps."""
    warmup: int
    """Untimed PPO steps first."""
    threads: int
    seed: int
    trl_mode: str
    """'lora' (LoRA policy + LoRA value model, like ours) or 'full' (TRL's default recipe)."""
    tiny: bool = False
    source_prompts: str = ""
    """Where ``prompts`` were taken from (for the results file)."""
    malloc_mmap_threshold: int | None = None
    """MALLOC_MMAP_THRESHOLD_ set in the runs (None: glibc's default)."""
    shared_trunk: bool = DEFAULTS.critic.shared_trunk
    """Ours with ``critic.shared_trunk``: the value head on the policy, no critic adapter."""

    @property
    def total_steps(self) -> int:
        return self.warmup + self.steps

    @property
    def num_prompts(self) -> int:
        return self.batch_size * self.total_steps


# ---------------------------------------------------------------------------------------------
# setup (parent and the prepare child)
# ---------------------------------------------------------------------------------------------


def ensure_trl() -> None:
    """Install trl==1.12.0 (no dependencies) into bench/.trl unless it is already there."""
    meta = TRL_DIR / f"trl-{TRL_VERSION}.dist-info"
    if meta.is_dir() and (TRL_DIR / "trl" / "__init__.py").is_file():
        return
    print(f"installing trl=={TRL_VERSION} into {TRL_DIR.relative_to(ROOT)}", flush=True)
    subprocess.run(
        [
            sys.executable,
            *("-m", "pip", "install", "--quiet", "--no-deps", "--upgrade"),
            *("--target", str(TRL_DIR), f"trl=={TRL_VERSION}"),
        ],
        check=True,
    )


def lora_config(spec: Spec) -> Any:
    from rlhf_lab.config import LoraConfig

    return LoraConfig(r=spec.lora_r, alpha=spec.lora_alpha, dropout=0.0)


def prepare(spec: Spec) -> None:
    """Tiny models (``--tiny``) and our fresh critic; run in a child so the parent stays light."""
    from rlhf_lab import models
    from rlhf_lab.ppo.model import new_critic, save_critic

    if spec.tiny:
        from rlhf_lab.reward_scorer import save_reward_stats
        from rlhf_lab.testing import build_tiny_encoder, build_tiny_policy

        build_tiny_policy(spec.policy, seed=spec.seed)
        encoder = build_tiny_encoder(WORK / "tiny" / "encoder", seed=spec.seed)
        torch.manual_seed(spec.seed)
        tok = models.load_tokenizer(encoder, padding_side="right")
        rm = models.load_sequence_classifier(encoder, num_labels=1)
        models.save_model(rm, tok, spec.reward)
        save_reward_stats(spec.reward, mean=0.0, std=1.0, max_length=64)
    # A fresh critic (LoRA B = 0, new value head): what train_critic would warm-start.
    torch.manual_seed(spec.seed)
    critic = new_critic(spec.policy, lora_config(spec), device=torch.device("cpu"))
    save_critic(critic, spec.critic, score_mean=0.0, score_std=1.0)


def select_prompts(path: Path | None, n: int, out: Path) -> None:
    """The first ``n`` prompt rows of ``path`` (cycled if short), or a generated tiny set."""
    from rlhf_lab.io import read_jsonl, write_jsonl

    if path is None:
        rows = [
            {"id": f"tiny-{i}", "prompt": [{"role": "user", "content": text}], "meta": {}}
            for i, text in enumerate(TINY_PROMPTS)
        ]
    else:
        rows = read_jsonl(path)
    if not rows:
        raise SystemExit(f"{path}: no prompts")
    write_jsonl(out, [rows[i % len(rows)] for i in range(n)])


# ---------------------------------------------------------------------------------------------
# shared by both children
# ---------------------------------------------------------------------------------------------


def prompt_rows_and_ids(spec: Spec, tok: Any) -> tuple[list[dict], list[list[int]]]:
    from rlhf_lab.io import read_jsonl
    from rlhf_lab.ppo.model import chat_prompt_ids

    rows = read_jsonl(spec.prompts)
    ids = [chat_prompt_ids(tok, r["prompt"], None, spec.max_prompt_length) for r in rows]
    return rows, ids


def reward_component(spec: Spec) -> Callable[[Sequence[str], Sequence[dict]], torch.Tensor]:
    """Our ``reward_model`` score component (exactly what ``train_ppo``'s scorer calls)."""
    from rlhf_lab.reward_components import REWARD_MODEL, build

    return build([REWARD_MODEL], DEFAULTS, reward_model_dir=spec.reward)[REWARD_MODEL]


def unique_parameters(*modules: nn.Module | None) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for m in modules:
        if m is not None:
            for p in m.parameters():
                seen.setdefault(id(p), p)
    return list(seen.values())


def peak_rss_mb() -> float:
    from rlhf_lab.training.common import peak_memory_mb

    return peak_memory_mb()  # the max resident set on a CPU, as every stage reports it


class StepClock:
    """Wall and CPU seconds of each step's rollout and update, and of named parts inside them
    (generate, score, gc), plus the peak RSS of each phase (a 20 ms sampler thread).

    CPU seconds (``time.process_time``) are the number to trust on a busy machine: with one
    torch thread they equal wall seconds when the process has a core to itself, and they do not
    count the time it waits for one.
    """

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.phase = "setup"
        self.in_rollout = False
        self.peak_rss: dict[str, float] = {}
        self._step: defaultdict[str, float] = defaultdict(float)
        self._mark = self.now()
        threading.Thread(target=self._sample_rss, daemon=True).start()

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def _sample_rss(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while True:
            with open("/proc/self/statm") as fh:
                rss = int(fh.read().split()[1]) * page / 2**20
            self.peak_rss[self.phase] = max(self.peak_rss.get(self.phase, 0.0), rss)
            time.sleep(0.02)

    def _lap(self, key: str) -> None:
        wall, cpu = self.now()
        self._step[f"{key}_s"] += wall - self._mark[0]
        self._step[f"{key}_cpu_s"] += cpu - self._mark[1]
        self._mark = (wall, cpu)

    def start_rollout(self) -> None:
        self._step = defaultdict(float)
        self._mark = self.now()
        self.in_rollout = True
        # Only the first rollout is labelled as such: the process's RSS rarely falls after an
        # update (freed memory stays with the allocator), so later rollouts show the update's.
        self.phase = "first_rollout" if not self.steps else "later"

    def start_update(self) -> None:
        self._lap("rollout")
        self.in_rollout = False
        self.phase = "update"

    def end_step(self) -> None:
        self._lap("update")
        self.steps.append(dict(self._step))
        self.phase = "later"

    def add(self, key: str, value: float) -> None:
        self._step[key] += value

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        wall, cpu = self.now()
        try:
            yield
        finally:
            wall2, cpu2 = self.now()
            self._step[f"{name}_s"] += wall2 - wall
            self._step[f"{name}_cpu_s"] += cpu2 - cpu

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.part(name):
                return fn(*args, **kwargs)

        return timed

    def result(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "rss_after_setup_mb": self.peak_rss.get("setup", 0.0),
            "peak_rss_first_rollout_mb": self.peak_rss.get("first_rollout", 0.0),
            "peak_rss_update_mb": self.peak_rss.get("update", 0.0),
        }


# ---------------------------------------------------------------------------------------------
# ours
# ---------------------------------------------------------------------------------------------


def run_ours(spec: Spec) -> dict[str, Any]:
    from rlhf_lab.config import PpoConfig
    from rlhf_lab.io import read_jsonl
    from rlhf_lab.ppo.composite_score import CompositeScorer
    from rlhf_lab.ppo.model import load_policy_critic
    from rlhf_lab.ppo.trainer import PpoTrainer
    from rlhf_lab.reward_components import REWARD_MODEL

    clock = StepClock()
    cfg = PpoConfig(
        steps=spec.total_steps,
        batch_size=spec.batch_size,
        minibatches=spec.minibatches,
        epochs=spec.epochs,
        lr=spec.lr,
        kl_coef=spec.kl_coef,
        # TRL's KL coefficient is fixed and its score is not clipped: match it (neither
        # changes the cost of a step).
        adaptive_kl=False,
        score_clip=None,
        temperature=spec.temperature,
        max_new_tokens=spec.max_new_tokens,
        max_prompt_length=spec.max_prompt_length,
        missing_eos_penalty=spec.missing_eos_penalty,
        lora=lora_config(spec),
        seed=spec.seed,
    )
    scorer = CompositeScorer({REWARD_MODEL: reward_component(spec)}, {REWARD_MODEL: 1.0})
    torch.manual_seed(spec.seed)  # the policy adapter's init
    model = load_policy_critic(
        spec.policy, spec.critic, cfg.lora, cfg.temperature, shared_trunk=spec.shared_trunk
    )
    trainer = PpoTrainer(model, read_jsonl(spec.prompts), scorer, cfg, progress=False)

    # Timing wrappers on this trainer instance (the loop calls self.rollout / self.update).
    rollout, update = trainer.rollout, trainer.update

    def timed_rollout(step: int) -> Any:
        clock.start_rollout()
        ro, timing = rollout(step)
        clock.add("samples", len(ro.rows))
        clock.add("reply_tokens", int(ro.response_mask.sum()))  # up to and including EOS
        return ro, timing

    def timed_update(ro: Any, step: int) -> Any:
        clock.start_update()
        stats = update(ro, step)
        clock.end_step()
        return stats

    trainer.rollout, trainer.update = timed_rollout, timed_update
    generate, widths = model.generate, []

    def timed_generate(*a: Any, **kw: Any) -> Any:
        with clock.part("generate"):
            out = generate(*a, **kw)
        # Sampling stops when every row has emitted EOS: the trimmed width is the step count.
        widths.append(out[0].shape[1])
        return out

    model.generate = timed_generate
    trainer.scorer = clock.wrap("score", trainer.scorer)
    trainer.train()
    return {
        "trains": (
            "LoRA policy + value head on its hidden states (shared trunk), one frozen base"
            if spec.shared_trunk
            else "LoRA policy + LoRA critic + value head on one shared frozen base"
        ),
        **clock.result(),
        "generated_width": widths,
        "trainable_parameters": sum(p.numel() for p in trainer.params),
        "model_parameters": sum(p.numel() for p in unique_parameters(model)),
    }


# ---------------------------------------------------------------------------------------------
# TRL
# ---------------------------------------------------------------------------------------------


class PromptIndex:
    """Finds which prompt a sequence starts with (all prompts' token ids are known)."""

    def __init__(self, rows: Sequence[dict], prompt_ids: Sequence[Sequence[int]]) -> None:
        self.rows = {tuple(ids): row for ids, row in zip(prompt_ids, rows, strict=True)}
        self.lengths = sorted({len(ids) for ids in prompt_ids}, reverse=True)

    def split(self, ids: Sequence[int]) -> tuple[dict, list[int]]:
        """``(prompt row, reply ids)`` of one unpadded sequence; the longest prompt wins."""
        for n in self.lengths:
            row = self.rows.get(tuple(ids[:n]))
            if row is not None:
                return row, list(ids[n:])
        raise RuntimeError("reward adapter: a sequence starts with none of the prompts")


class DecodeAndScore(nn.Module):
    """The adapter's "backbone": token ids → prompt row + reply text → our scalar score."""

    def __init__(
        self, index: PromptIndex, tok: Any, score_fn: Callable[..., Any], clock: StepClock
    ) -> None:
        super().__init__()
        self.index = index
        self.tok = tok
        self.score_fn = score_fn
        self.clock = clock

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any
    ) -> SimpleNamespace:
        with self.clock.part("score"):
            rows, replies = [], []
            for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
                row, reply = self.index.split([i for i, m in zip(ids, mask, strict=True) if m])
                rows.append(row)
                replies.append(reply)
            self.clock.add("samples", len(rows))
            # Up to and including EOS: TRL pads everything after it.
            self.clock.add("reply_tokens", sum(len(r) for r in replies))
            # skip_special_tokens drops the EOS, as our trainer's decode does.
            texts = self.tok.batch_decode(replies, skip_special_tokens=True)
            score = torch.as_tensor(self.score_fn(texts, rows), dtype=torch.float32)
            hidden = score.to(input_ids.device)[:, None, None].expand(-1, input_ids.shape[1], 1)
        return SimpleNamespace(hidden_states=(hidden,))


class TrlRewardAdapter(nn.Module):
    """What TRL's ``get_reward`` needs: ``getattr(m, m.base_model_prefix)(...)`` then ``m.score``.

    Our reward model stays where our trainer runs it (CPU, via ``RewardModel.score``); only the
    result moves to the policy's device.
    """

    base_model_prefix = "backbone"

    def __init__(self, backbone: DecodeAndScore) -> None:
        super().__init__()
        self.backbone = backbone
        self.score = nn.Identity()


def trl_value_model(spec: Spec, tok: Any, dtype: str) -> nn.Module:
    """The policy architecture with a scalar ``score`` head (TRL's examples), LoRA in ``lora``
    mode: the same LoRA config injected into the backbone, the backbone frozen, the head
    trainable — the trainable set of our critic."""
    from rlhf_lab import models

    value = models.load_sequence_classifier(spec.policy, num_labels=1).to(models.DTYPES[dtype])
    value.config.pad_token_id = tok.pad_token_id
    if spec.trl_mode == "lora":
        from peft import inject_adapter_in_model

        from rlhf_lab.models import lora_config as peft_lora_config

        backbone = getattr(value, value.base_model_prefix)
        backbone.requires_grad_(False)
        inject_adapter_in_model(peft_lora_config(lora_config(spec)), backbone)
        for name, p in backbone.named_parameters():
            p.requires_grad_("lora_" in name)
        value.score.requires_grad_(True)
    return value


def run_trl(spec: Spec) -> dict[str, Any]:
    import trl

    if trl.__version__ != TRL_VERSION:
        raise SystemExit(f"expected trl {TRL_VERSION} first on PYTHONPATH, got {trl.__version__}")
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    from rlhf_lab import models
    from rlhf_lab.models import lora_config as peft_lora_config
    from rlhf_lab.ppo.trainer import batch_indices

    clock = StepClock()
    dtype = models.read_provenance(spec.policy).get("dtype", "float32")
    dtype = dtype if dtype in models.DTYPES else "float32"
    tok = models.load_tokenizer(spec.policy, padding_side="left")
    policy = models.load_causal_lm(spec.policy, dtype)
    models.ensure_pad_token(tok, policy)
    value = trl_value_model(spec, tok, dtype)
    rows, prompt_ids = prompt_rows_and_ids(spec, tok)
    backbone = DecodeAndScore(PromptIndex(rows, prompt_ids), tok, reward_component(spec), clock)
    reward = TrlRewardAdapter(backbone)
    dataset = Dataset.from_dict({"input_ids": prompt_ids})

    args = PPOConfig(
        output_dir=str(WORK / "trl_out"),
        # per_device = the whole batch and gradient_accumulation_steps = 1: TRL then takes one
        # optimiser step per minibatch (batch / num_mini_batches), as ours does.
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=spec.minibatches,
        num_ppo_epochs=spec.epochs,
        total_episodes=spec.batch_size * spec.total_steps,
        local_rollout_forward_batch_size=spec.batch_size,
        response_length=spec.max_new_tokens,
        temperature=spec.temperature,
        stop_token="eos",
        missing_eos_penalty=spec.missing_eos_penalty,
        kl_coef=spec.kl_coef,
        learning_rate=spec.lr,
        adam_epsilon=1e-5,  # ours (lm-human-preferences)
        # TRL's defaults are bf16 autocast and gradient checkpointing: ours uses neither, and
        # both change the cost of a step.
        bf16=False,
        gradient_checkpointing=False,
        num_sample_generations=0,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=spec.seed,
    )

    generation, forward, gc = trl_ppo.batch_generation, trl_ppo.forward, trl_ppo.gc
    widths: list[int] = []

    def timed_generation(*a: Any, **kw: Any) -> Any:
        with clock.part("generate"):
            out = generation(*a, **kw)
        widths.append(out[1].shape[1])  # tokens generated per row (all rows stop together)
        return out

    def timed_forward(model: Any, *a: Any, **kw: Any) -> Any:
        # The first pass of the policy+value wrapper in a step is the first update pass.
        if clock.in_rollout and isinstance(model, trl_ppo.PolicyAndValueWrapper):
            clock.start_update()
        return forward(model, *a, **kw)

    class Steps(TrainerCallback):
        # TRL's loop calls on_train_begin, then on_step_end after each step (none at the start).
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            clock.start_rollout()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            clock.end_step()
            clock.start_rollout()

    # Module-level names TRL's loop looks up at call time; gc.collect runs twice a step (before
    # the update, and after the step, i.e. in the next step's rollout window).
    trl_ppo.batch_generation, trl_ppo.forward = timed_generation, timed_forward
    trl_ppo.gc = SimpleNamespace(collect=clock.wrap("gc", gc.collect))
    torch.manual_seed(spec.seed)
    trainer = PPOTrainer(
        args=args,
        processing_class=tok,
        model=policy,
        # None: the adapter-disabled policy (lora) or TRL's own deep copy of the policy (full).
        ref_model=None,
        reward_model=reward,
        train_dataset=dataset,
        value_model=value,
        peft_config=peft_lora_config(lora_config(spec)) if spec.trl_mode == "lora" else None,
        callbacks=[Steps()],
    )
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    # The same batches in the same order as ours (our trainer's seeded shuffle), so both pay for
    # the same prompt padding: TRL's shuffled loader replaced by one over that order. Its own
    # generator: a DataLoader iterator otherwise draws its base seed from torch's global RNG,
    # which both trainers sample replies from; untouched, the first step samples exactly the
    # replies ours does (same seed, same policy), so both generate the same number of tokens.
    order = [
        i
        for step in range(spec.total_steps)
        for i in batch_indices(step, len(rows), spec.batch_size, spec.seed)
    ]
    trainer.dataloader = DataLoader(
        dataset.select(order),
        batch_size=spec.batch_size,
        shuffle=False,
        collate_fn=trainer.data_collator,
        drop_last=True,
        generator=torch.Generator().manual_seed(spec.seed),
    )
    trainer.train()
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    params = unique_parameters(trainer.model, trainer.ref_model)
    trains = {
        "lora": "LoRA policy (ref = adapter off) + separate value model: base copy + LoRA + head",
        "full": "full policy + deep-copied reference + full value model",
    }[spec.trl_mode]
    return {
        "trains": trains,
        **clock.result(),
        "generated_width": widths,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "model_parameters": sum(p.numel() for p in params),
    }


# ---------------------------------------------------------------------------------------------
# child entry point
# ---------------------------------------------------------------------------------------------


def child(role: str, spec_path: Path, out: Path | None) -> None:
    spec = Spec(**json.loads(spec_path.read_text()))
    torch.set_num_threads(spec.threads)
    if role == "prepare":
        prepare(spec)
        return
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = run_ours(spec) if role == "ours" else run_trl(spec)
    result.update(
        {
            "side": role,
            "process_seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb(),
            "peak_cuda_mb": (
                torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
            ),
            "load_average_1min_start_end": load_span(load_start),
            "torch_threads": torch.get_num_threads(),
        }
    )
    assert out is not None
    out.write_text(json.dumps(result, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# parent: runs, aggregation, table, JSON
# ---------------------------------------------------------------------------------------------


def spawn(
    role: str, spec_path: Path, out: Path | None, threads: int, mmap_threshold: int | None
) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",  # nothing here may download a model
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }
    if mmap_threshold is not None:
        # A fixed threshold also turns off glibc's dynamic one, so freed activations go back to
        # the OS instead of fragmenting the heap: RSS then tracks live tensors.
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    if role == "trl":
        # trl 1.12.0 (the last with PPOTrainer) ahead of the venv's newer trl.
        env["PYTHONPATH"] = os.pathsep.join([str(TRL_DIR), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role, "--spec", str(spec_path)]
    if out is not None:
        cmd += ["--child-out", str(out)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def summarise(runs: Sequence[dict], warmup: int) -> dict[str, float]:
    """Pooled over every run of one side: timed steps only."""
    steps = [s for r in runs for s in r["steps"][warmup:]]
    n = max(len(steps), 1)

    def per_step(key: str) -> float:
        return sum(s.get(key, 0.0) for s in steps) / n

    wall = per_step("rollout_s") + per_step("update_s")
    cpu = per_step("rollout_cpu_s") + per_step("update_cpu_s")
    samples, tokens = per_step("samples"), per_step("reply_tokens")
    out = {
        "samples_per_s": samples / wall,
        "tokens_per_s": tokens / wall,
        "samples_per_cpu_s": samples / cpu,
        "tokens_per_cpu_s": tokens / cpu,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "rss_after_setup_mb": max(r["rss_after_setup_mb"] for r in runs),
        "peak_rss_first_rollout_mb": max(r["peak_rss_first_rollout_mb"] for r in runs),
        "peak_rss_update_mb": max(r["peak_rss_update_mb"] for r in runs),
        "step_s": wall,
        "step_cpu_s": cpu,
    }
    for part in ("rollout", "generate", "score", "gc", "update"):
        out[f"{part}_s"] = per_step(f"{part}_s")
        out[f"{part}_cpu_s"] = per_step(f"{part}_cpu_s")
    # The first (warm-up) step does identical work on both sides: same prompts, same policy
    # (LoRA B = 0) and the same RNG stream, so the same sampled replies.
    first = [r["steps"][0] for r in runs]
    for key in ("rollout_cpu_s", "update_cpu_s", "reply_tokens"):
        out[f"first_step/{key}"] = sum(f[key] for f in first) / len(first)
    out["first_step/step_cpu_s"] = out["first_step/rollout_cpu_s"] + out["first_step/update_cpu_s"]
    out.update(
        {
            "reply_tokens_mean": tokens / max(samples, 1),
            "timed_steps": len(steps),
            "trainable_parameters": runs[0]["trainable_parameters"],
            "model_parameters": runs[0]["model_parameters"],
        }
    )
    return out


def resolve_inputs(args: argparse.Namespace) -> tuple[str, str, Path | None]:
    if args.tiny:
        return str(WORK / "tiny" / "policy"), str(WORK / "tiny" / "reward"), None
    policy = args.policy
    if policy is None:
        policy = next(
            (p for p in ("models/sft", "models/base/policy") if (ROOT / p).is_dir()), None
        )
    if policy is None or not Path(policy).is_dir():
        raise SystemExit(
            f"policy directory {policy or 'models/sft'} not found (run the pipeline, pass "
            "--policy, or --tiny)"
        )
    if not Path(args.reward).is_dir():
        raise SystemExit(f"reward model directory {args.reward} not found (or pass --tiny)")
    prompts = Path(args.prompts)
    if not prompts.is_file():
        raise SystemExit(f"{prompts}: not found (run prepare_preference, pass --prompts or --tiny)")
    return str(Path(policy).resolve()), str(Path(args.reward).resolve()), prompts.resolve()


def target_met(ratio: dict[str, float]) -> bool:
    return ratio["samples_per_s"] >= TARGET_SPEEDUP and ratio["peak_rss_mb"] <= 1.0


def note(ours: dict[str, float], trl_: dict[str, float], ratio: dict[str, float]) -> str:
    """Where the CPU time goes on each side, and the verdict."""

    def split(s: dict[str, float]) -> str:
        def pct(key: str) -> str:
            return f"{s[key] / s['step_cpu_s']:.0%}"

        passes = s["rollout_cpu_s"] - s["generate_cpu_s"] - s["score_cpu_s"] - s["gc_cpu_s"]
        gc = f", gc.collect {pct('gc_cpu_s')}" if s["gc_cpu_s"] else ""
        return (
            f"{s['step_cpu_s']:.1f} CPU-s/step = rollout {pct('rollout_cpu_s')} (generate "
            f"{pct('generate_cpu_s')}, reward model {pct('score_cpu_s')}, logprob/ref/value "
            f"passes {passes / s['step_cpu_s']:.0%}{gc}) + update {pct('update_cpu_s')}"
        )

    return (
        f"ours {split(ours)}; trl {split(trl_)}. ours/trl: samples/s "
        f"{ratio['samples_per_s']:.2f}x wall, {ratio['samples_per_cpu_s']:.2f}x per CPU-s "
        f"(rollout {trl_['rollout_cpu_s'] / ours['rollout_cpu_s']:.2f}x, update "
        f"{trl_['update_cpu_s'] / ours['update_cpu_s']:.2f}x as fast); peak RSS "
        f"{ratio['peak_rss_mb']:.2f}x; on the identical first step (same replies) "
        f"{trl_['first_step/step_cpu_s'] / ours['first_step/step_cpu_s']:.2f}x as fast "
        f"(rollout {trl_['first_step/rollout_cpu_s'] / ours['first_step/rollout_cpu_s']:.2f}x, "
        f"update {trl_['first_step/update_cpu_s'] / ours['first_step/update_cpu_s']:.2f}x). "
        f"Target (>= {TARGET_SPEEDUP}x samples/s at no more peak "
        f"memory): {'met' if target_met(ratio) else 'NOT met'}."
    )


def print_table(ours: dict[str, float], trl_: dict[str, float], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    for col in ("ours", f"trl {TRL_VERSION}", "ours / trl"):
        table.add_column(col, justify="right")
    rows = [
        ("samples/s", "samples_per_s", "{:.3f}"),
        ("tokens/s", "tokens_per_s", "{:.2f}"),
        ("samples per CPU-s", "samples_per_cpu_s", "{:.3f}"),
        ("tokens per CPU-s", "tokens_per_cpu_s", "{:.2f}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("  after loading", "rss_after_setup_mb", "{:.0f}"),
        ("  peak in 1st rollout", "peak_rss_first_rollout_mb", "{:.0f}"),
        ("  peak in updates", "peak_rss_update_mb", "{:.0f}"),
        ("wall s / step", "step_s", "{:.2f}"),
        ("CPU s / step", "step_cpu_s", "{:.2f}"),
        ("  rollout", "rollout_cpu_s", "{:.2f}"),
        ("    generate", "generate_cpu_s", "{:.2f}"),
        ("    reward model", "score_cpu_s", "{:.2f}"),
        ("    gc.collect", "gc_cpu_s", "{:.2f}"),
        ("  update", "update_cpu_s", "{:.2f}"),
        ("reply tokens (mean)", "reply_tokens_mean", "{:.1f}"),
        ("1st step CPU s (same work)", "first_step/step_cpu_s", "{:.2f}"),
        ("  rollout", "first_step/rollout_cpu_s", "{:.2f}"),
        ("  update", "first_step/update_cpu_s", "{:.2f}"),
        ("  reply tokens", "first_step/reply_tokens", "{:.0f}"),
        ("trainable params (M)", "trainable_parameters", "{:.2f}"),
        ("model params resident (M)", "model_parameters", "{:.1f}"),
    ]
    for label, key, fmt in rows:
        a, b = ours[key], trl_[key]
        if key.endswith("parameters"):
            a, b = a / 1e6, b / 1e6
        table.add_row(label, fmt.format(a), fmt.format(b), f"{a / b:.2f}" if a and b else "-")
    Console().print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--policy", help="SFT policy dir (default models/sft, else models/base/policy)")
    ap.add_argument("--reward", default="models/reward", help="reward model dir")
    ap.add_argument("--prompts", default="data/prompts/train.jsonl", help="prompt rows (JSONL)")
    ap.add_argument("--tiny", action="store_true", help="2-layer random models, generated prompts")
    # The PPO shape and the critic layout default to the pipeline's own defaults (params.yaml's
    # ppo and critic sections), so "no flags" measures the configuration a user runs.
    ppo = DEFAULTS.ppo
    ap.add_argument("--batch-size", type=int, default=ppo.batch_size)
    ap.add_argument("--minibatches", type=int, default=ppo.minibatches)
    ap.add_argument("--epochs", type=int, default=ppo.epochs, help="PPO epochs per batch")
    ap.add_argument("--max-new-tokens", type=int, default=ppo.max_new_tokens)
    ap.add_argument("--max-prompt-length", type=int, default=ppo.max_prompt_length)
    ap.add_argument("--temperature", type=float, default=ppo.temperature)
    ap.add_argument("--lr", type=float, default=ppo.lr)
    ap.add_argument("--kl-coef", type=float, default=ppo.kl_coef)
    ap.add_argument("--missing-eos-penalty", type=float, default=ppo.missing_eos_penalty)
    ap.add_argument("--lora-r", type=int, default=ppo.lora.r)
    ap.add_argument("--lora-alpha", type=int, default=ppo.lora.alpha)
    ap.add_argument("--steps", type=int, default=3, help="timed PPO steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="untimed PPO steps first")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of (ours, trl)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trl-mode", choices=("lora", "full"), default="lora")
    layout = ap.add_mutually_exclusive_group()
    layout.add_argument(
        "--shared-trunk",
        action="store_true",
        default=DEFAULTS.critic.shared_trunk,
        help="ours with critic.shared_trunk: the value head on the policy (the default)",
    )
    layout.add_argument(
        "--separate-critic",
        dest="shared_trunk",
        action="store_false",
        help="ours with a critic LoRA adapter + value head (results in their own file)",
    )
    ap.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        metavar="BYTES",
        help="set MALLOC_MMAP_THRESHOLD_ in both runs (glibc; default: leave the allocator alone)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        help=f"results file (default {RESULTS.relative_to(ROOT)}; --tiny: "
        f"{TINY_RESULTS.relative_to(ROOT)})",
    )
    ap.add_argument(
        "--resummarise",
        action="store_true",
        help="no new runs: rebuild the table and --out from the last runs in bench/.work",
    )
    ap.add_argument("--child", choices=("prepare", *SIDES), help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.spec, args.child_out)
        return
    spec_path = WORK / "spec.json"
    if args.resummarise:
        spec = Spec(**json.loads(spec_path.read_text()))
        rounds = sorted(int(f.stem.split("-")[1]) for f in WORK.glob("trl-*.json"))
        runs = {
            side: [
                {"round": r, **json.loads((WORK / f"{side}-{r}.json").read_text())} for r in rounds
            ]
            for side in SIDES
        }
        report(spec, runs, results_path(args.out, spec.tiny, spec.shared_trunk), [])
        return
    if args.batch_size % args.minibatches:
        raise SystemExit("--batch-size must be divisible by --minibatches")

    load_start = list(os.getloadavg())
    policy, reward, prompts = resolve_inputs(args)
    ensure_trl()
    WORK.mkdir(parents=True, exist_ok=True)
    for old in WORK.glob("*-[0-9]*.json"):
        old.unlink()  # runs of an earlier invocation
    spec = Spec(
        policy=policy,
        reward=reward,
        prompts=str(WORK / "prompts.jsonl"),
        critic=str(WORK / "critic"),
        batch_size=args.batch_size,
        minibatches=args.minibatches,
        epochs=args.epochs,
        max_new_tokens=args.max_new_tokens,
        max_prompt_length=args.max_prompt_length,
        temperature=args.temperature,
        lr=args.lr,
        kl_coef=args.kl_coef,
        missing_eos_penalty=args.missing_eos_penalty,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        steps=args.steps,
        warmup=args.warmup,
        threads=args.threads,
        seed=args.seed,
        trl_mode=args.trl_mode,
        tiny=args.tiny,
        source_prompts=str(prompts) if prompts else GENERATED_PROMPTS,
        malloc_mmap_threshold=args.malloc_mmap_threshold,
        shared_trunk=args.shared_trunk,
    )
    select_prompts(prompts, spec.num_prompts, Path(spec.prompts))
    spec_path.write_text(json.dumps(asdict(spec), indent=1) + "\n")
    spawn("prepare", spec_path, None, spec.threads, spec.malloc_mmap_threshold)

    runs: dict[str, list[dict]] = {s: [] for s in SIDES}
    for rnd in range(args.repeats):
        for side in SIDES:
            print(f"round {rnd + 1}/{args.repeats}: {side}", flush=True)
            out = WORK / f"{side}-{rnd}.json"
            spawn(side, spec_path, out, spec.threads, spec.malloc_mmap_threshold)
            runs[side].append({"round": rnd, **json.loads(out.read_text())})
    report(spec, runs, results_path(args.out, spec.tiny, spec.shared_trunk), load_start)


def results_path(
    out: Path | None, tiny: bool, shared_trunk: bool = DEFAULTS.critic.shared_trunk
) -> Path:
    """Where the results go: ``--out``, else RESULTS, else (a tiny run) TINY_RESULTS; with
    ``--separate-critic`` a file of its own beside either, so the two layouts never mix."""
    if out is not None:
        return out
    path = TINY_RESULTS if tiny else RESULTS
    return path if shared_trunk else path.with_stem(path.stem + SEPARATE_CRITIC_SUFFIX)


def report(spec: Spec, runs: dict[str, list[dict]], out: Path, load_start: list[float]) -> None:
    """Print the table and the note; write the results file."""
    ours, trl_ = (summarise(runs[s], spec.warmup) for s in SIDES)
    keys = ("samples_per_s", "tokens_per_s", "samples_per_cpu_s", "tokens_per_cpu_s", "peak_rss_mb")
    ratio = {k: ours[k] / trl_[k] for k in keys}
    repeats = len(runs["ours"])
    print_table(
        ours,
        trl_,
        f"PPO: ours{'' if spec.shared_trunk else ' (separate critic)'} vs trl {TRL_VERSION} "
        f"({spec.trl_mode}), batch {spec.batch_size}, "
        f"{spec.minibatches} minibatches, {spec.epochs} epochs, {spec.max_new_tokens} new tokens, "
        f"{spec.steps} timed steps x {repeats}",
    )
    summary = note(ours, trl_, ratio)
    print(summary)
    shown = replace(
        spec,
        policy=shown_path(spec.policy),
        reward=shown_path(spec.reward),
        source_prompts=(
            spec.source_prompts
            if spec.source_prompts == GENERATED_PROMPTS
            else shown_path(spec.source_prompts)
        ),
    )
    result = {
        "note": summary,
        "target_met": target_met(ratio),
        **{f"ratio/{k}": v for k, v in ratio.items()},
        **{f"ours/{k}": v for k, v in ours.items()},
        **{f"trl/{k}": v for k, v in trl_.items()},
        "ours/trains": runs["ours"][0]["trains"],
        "trl/trains": runs["trl"][0]["trains"],
        **{f"config/{k}": v for k, v in asdict(shown).items() if k not in ("critic", "prompts")},
        # What the policy directory is (it may be a snapshot outside the repo).
        "config/policy_provenance": _provenance(spec.policy),
        "config/repeats": repeats,
        "config/trl_version": TRL_VERSION,
        # the parent's machine (each run's own torch threads: config/threads)
        **{k: v for k, v in machine().items() if k != "torch_threads"},
        # On a shared machine throughput says as much about the neighbours as about the code
        # (each run also records the 1-minute load average at its start and end).
        "load_average_start": load_start or runs["ours"][0]["load_average_1min_start_end"][:1],
        "load_average_end": (
            list(os.getloadavg())
            if load_start
            else runs["trl"][-1]["load_average_1min_start_end"][1:]
        ),
        "runs": [r for pair in zip(runs["ours"], runs["trl"], strict=True) for r in pair],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


def _provenance(model_dir: str) -> dict[str, Any]:
    from rlhf_lab import models

    info = models.read_provenance(model_dir)
    return {k: info.get(k) for k in ("role", "stage", "base", "parameters", "dtype")}


if __name__ == "__main__":
    main()
