"""Pieces every supervised loop shares (reward model, SFT, DPO, critic): the accelerator, seeding,
the LoRA policy, AdamW with linear warm-up, the guarded step, dvclive curves, progress bars,
gathering, the ``perf/*`` metrics, saving the trained model and the outcome handed back.

All loops run under :class:`accelerate.Accelerator`, so the same code runs as one CPU process,
under ``accelerate launch`` on several GPUs (DDP), or with DeepSpeed ZeRO-2/3 (see
``docs/accelerate.md``). Conventions the loops follow:

* ``batch_size`` in ``params.yaml`` is the *global* number of examples per optimiser step: the
  accelerator splits each batch across processes (``split_batches=True``), so changing the
  number of processes does not change the optimisation, only who computes what.
* Only the main process writes files (models, metrics, curves); evaluation results are
  gathered from every process first (``gather_for_metrics`` drops the padding duplicates).
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, set_seed

from rlhf_lab import models, precision, tracking, ui
from rlhf_lab.config import LoraConfig
from rlhf_lab.errors import ConfigError, NonFiniteLossError
from rlhf_lab.io import atomic_dir, finite_or_none

T = TypeVar("T")


@dataclass
class TrainOutcome:
    """What a training function hands back to its stage (identical on every process)."""

    metrics: dict[str, Any]
    """Flat, namespaced metrics for ``metrics/<stage>.json``."""
    is_main_process: bool
    """Only the main process writes metrics and prints the summary."""
    num_processes: int = 1
    """How many processes trained (``accelerate launch --num_processes``)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Per-step training values (what the curves show), for tests and benchmarks."""


def make_accelerator(seed: int, batch_size: int, batch_key: str) -> Accelerator:
    """An Accelerator that splits each ``batch_size`` batch across processes; seeds everything.

    ``batch_key`` names the params key in the error when the batch cannot be split evenly.
    """
    accelerator = Accelerator(
        # accelerate picks its multi-CPU (gloo) mode only when told to use the CPU; without
        # this, `accelerate launch --multi_gpu` / torchrun on a machine with no GPU would start
        # N independent copies that each believe they are the main process.
        cpu=_launched_without_gpu(),
        dataloader_config=DataLoaderConfiguration(
            # One global batch per step whatever the process count (see the module docstring);
            # the seedable sampler makes the shuffle order depend on the seed only.
            split_batches=True,
            use_seedable_sampler=True,
            data_seed=seed,
        ),
    )
    if batch_size % accelerator.num_processes:
        raise ConfigError(
            f"params.yaml: {batch_key} ({batch_size}) must be divisible by the number of "
            f"processes ({accelerator.num_processes})"
        )
    # The same seed on every process, so newly initialised weights (a reward head, LoRA
    # matrices) start identical everywhere even before DDP broadcasts rank 0's copy.
    set_seed(seed)
    return accelerator


def _launched_without_gpu() -> bool:
    world = max(int(os.environ.get(k, "1") or 1) for k in ("WORLD_SIZE", "PMI_SIZE"))
    return world > 1 and not torch.cuda.is_available()


class NonFiniteGuard:
    """Skip an optimiser step whose loss or gradient norm is nan/inf; count; abort past a limit.

    Shared by every training loop (reward model, SFT, critic, PPO, DPO). One
    bad batch (a degenerate row, an overflow) must not put nan into the weights, so its step is
    skipped; a run that keeps producing them is diverging, and stops with one line naming the
    limit instead of saving garbage. With an ``accelerator`` every process reaches the same
    verdict (the flags are summed across processes), so DDP never sees one rank step while
    another skips.
    """

    def __init__(
        self,
        stage: str,
        limit_key: str,
        limit: int,
        hint: str,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.stage, self.limit_key, self.limit, self.hint = stage, limit_key, limit, hint
        self.accelerator = accelerator
        self.skipped = 0
        """Steps skipped so far (``train/skipped_nonfinite``)."""

    def ok(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None = None) -> bool:
        """True when the step may be taken; else count it as skipped (the caller zeroes the
        gradients and moves on) and raise :class:`NonFiniteLossError` at the limit."""
        values = [loss] if grad_norm is None else [loss, grad_norm]
        bad = any(not bool(torch.isfinite(torch.as_tensor(v)).all()) for v in values)
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            flag = torch.tensor([float(bad)], device=self.accelerator.device)
            bad = float(self.accelerator.reduce(flag, reduction="sum").item()) > 0
        if bad:
            self.skip(step, f"non-finite loss/gradient ({float(loss.detach().float())})")
        return not bad

    def skip(self, step: int, reason: str) -> None:
        """Count one skipped step; raise :class:`NonFiniteLossError` once the limit is reached."""
        self.skipped += 1
        ui.console.print(
            f"[yellow]warning:[/] {self.stage} step {step}: {reason}; update skipped "
            f"({self.skipped}/{self.limit})",
            highlight=False,
        )
        if self.skipped >= self.limit:
            raise NonFiniteLossError(
                f"{self.stage}: {self.skipped} updates skipped for a non-finite loss, gradient "
                f"or score ({self.limit_key}={self.limit}), last at step {step}; {self.hint}"
            )

    def check_weights(self, model: torch.nn.Module) -> None:
        """Refuse to save a model whose trainable weights hold nan/inf."""
        bad = [n for n, p in model.named_parameters() if p.requires_grad and not p.isfinite().all()]
        if bad:
            raise NonFiniteLossError(
                f"{self.stage}: {len(bad)} trained weight tensors hold nan/inf (first: {bad[0]}); "
                f"nothing saved; {self.hint}"
            )


def is_zero3(accelerator: Accelerator) -> bool:
    """True under DeepSpeed ZeRO-3, where each process holds only a shard of every weight."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return False
    plugin = accelerator.state.deepspeed_plugin
    return plugin is not None and plugin.zero_stage == 3


def adamw_with_warmup(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    total_steps: int,
    warmup_ratio: float,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the trainable parameters and a linear warm-up then linear decay to zero.

    Biases and norm weights (1-D tensors) get no weight decay, as in BERT and the HF Trainer:
    decaying a LayerNorm gain towards 0 is a constraint nobody wants.
    """
    from transformers import get_linear_schedule_with_warmup

    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)
    warmup = round(warmup_ratio * total_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, max(total_steps, 1))
    return optimizer, scheduler


def apply_lora(model: torch.nn.Module, lora: LoraConfig, task_type: str = "CAUSAL_LM") -> Any:
    """``model`` wrapped by peft with fresh LoRA adapters; only the adapters are trainable.

    LoRA's B matrices start at zero (Hu et al. 2021, sec. 4.1), so the wrapped model computes
    exactly what the base model does until the first update.
    """
    from peft import get_peft_model

    from rlhf_lab.models import lora_config

    return get_peft_model(model, lora_config(lora, task_type))


def lora_policy_builder(model_dir: str | Path, tok: Any, lora: LoraConfig) -> Callable[[], Any]:
    """A function that builds the causal LM in ``model_dir`` (in the dtype it was saved in)
    with fresh LoRA adapters: the model the SFT and DPO loops train, built again by
    :func:`state_dict_for_saving` under ZeRO-3. It gives ``tok`` a pad token if it has none."""

    def build() -> Any:
        base = models.load_causal_lm(model_dir, models.saved_dtype(model_dir))
        models.ensure_pad_token(tok, base)
        return apply_lora(base, lora)

    return build


def trainable_parameters(model: torch.nn.Module) -> int:
    """Number of parameters the optimiser updates."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Curves:
    """dvclive curves under ``plots/<stage>/`` written by the main process; a no-op elsewhere.

    DVC reads ``plots/<stage>/plots/metrics/<name>.tsv`` (``dvc.yaml`` plots, ``x: step``).
    They go to a temporary sibling (:func:`rlhf_lab.io.atomic_dir`) that replaces the folder on
    :meth:`close`, together with the stage's other outputs under
    :func:`rlhf_lab.io.stage_outputs`: a run that fails or is killed leaves the previous curves
    whole (dvclive itself empties its folder at start and appends to the .tsv files as it goes).
    Use it as a context manager where the run may fail before :meth:`close`: leaving the block
    by an exception drops the temporary folder.
    """

    def __init__(self, directory: str | Path | None, enabled: bool = True) -> None:
        self.live: Any = None
        self._out = contextlib.ExitStack()
        if directory is not None and enabled:
            from dvclive import Live

            tmp = self._out.enter_context(atomic_dir(directory))
            # dvcyaml=None / save_dvc_exp=False: dvc.yaml already declares these plots, and
            # `dvc exp run` records the experiment itself.
            self.live = Live(dir=str(tmp), dvcyaml=None, save_dvc_exp=False, report=None)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Append one point per value at ``step``."""
        if self.live is None:
            return
        self.live.step = step
        for name, value in values.items():
            self.live.log_metric(name, float(value))
        tracking.log(step, values)  # TensorBoard / MLflow / W&B when params name them

    def close(self) -> None:
        """Write ``metrics.json`` (the last values) and publish the folder."""
        if self.live is not None:
            # Not Live.end(): inside `dvc exp run` it `git add`s the untracked files under its
            # dir that are not DVC outputs (dvclive's ensure_dir_is_tracked, treeverse/dvclive
            # #517), which the temporary folder is; with dvcyaml=None and report=None the only
            # file end() would still write is the summary.
            self.live.make_summary()
            self.live = None
        self._out.close()

    def __enter__(self) -> Curves:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # the temporary folder goes; the published curves stay as they were
            self.live = None
            self._out.__exit__(exc_type, exc, tb)


def progress(
    accelerator: Accelerator, items: Iterable[T], description: str, total: int | None = None
) -> Iterator[T]:
    """A progress bar on the main process only (N processes would draw N interleaved bars)."""
    if accelerator.is_main_process:
        return ui.track(items, description, total=total)
    return iter(items)


def gather(accelerator: Accelerator, values: torch.Tensor) -> torch.Tensor:
    """``values`` from every process, concatenated in dataset order, as float32 on the CPU."""
    return accelerator.gather_for_metrics(values.detach().contiguous()).float().cpu()


def mean_across(accelerator: Accelerator, value: torch.Tensor) -> float:
    """The mean of a scalar over processes (for logging a loss every process computed)."""
    return float(accelerator.reduce(value.detach().float().reshape(1), reduction="mean").item())


def state_dict_for_saving(
    accelerator: Accelerator, model: torch.nn.Module, rebuild: Callable[[], torch.nn.Module]
) -> torch.nn.Module | None:
    """The trained model with full weights on the main process (None on the others).

    Every process must call this: under ZeRO-3 the weights are sharded and
    ``get_state_dict`` gathers them collectively; the main process then loads them into a
    freshly built copy (``rebuild``), because its own module holds only empty shards. Without
    ZeRO-3 the unwrapped module already holds everything.
    """
    if is_zero3(accelerator):
        state = accelerator.get_state_dict(model)
        if not accelerator.is_main_process:
            return None
        fresh = rebuild()
        fresh.load_state_dict(state)
        return fresh
    accelerator.wait_for_everyone()
    return accelerator.unwrap_model(model) if accelerator.is_main_process else None


def perf_metrics(accelerator: Accelerator, train_seconds: float, **done: float) -> dict[str, Any]:
    """The ``perf/*`` metrics of a training loop.

    ``perf/train_<unit>_per_s`` for each ``unit=count`` in ``done`` (what the loop trained on
    in ``train_seconds``, evaluation excluded; nan without time), the seconds, this process's
    peak memory, the process count and whether training forward passes ran under bf16.
    """
    return {
        **{
            f"perf/train_{unit}_per_s": count / train_seconds if train_seconds > 0 else math.nan
            for unit, count in done.items()
        },
        "perf/train_seconds": train_seconds,
        "perf/peak_memory_mb": peak_memory_mb(accelerator.device),
        "perf/num_processes": accelerator.num_processes,
        "perf/bf16": int(precision.bf16_enabled()),
    }


def save_trained_model(
    accelerator: Accelerator,
    model: torch.nn.Module,
    rebuild: Callable[[], torch.nn.Module],
    guard: NonFiniteGuard,
    out_dir: str | Path,
    tok: Any,
    *,
    role: str,
    base: str | Path,
    metrics: Mapping[str, Any],
    provenance: Mapping[str, Any] | None = None,
    lora: LoraConfig | None = None,
    write_extra: Callable[[Path], None] | None = None,
) -> None:
    """Save the trained model to ``out_dir`` atomically, with ``provenance.json``.

    Every process calls it (see :func:`state_dict_for_saving`); the main process refuses
    non-finite weights (``guard``), then writes the model and tokenizer, whatever
    ``write_extra(tmp_dir)`` adds, and the provenance: ``role``, ``base``, size, dtype,
    process count, ``metrics`` without ``perf/*`` (timings would change the hash DVC keeps of
    the directory) and ``provenance``. With ``lora`` the model is a LoRA-trained causal LM: the
    adapter is folded into the weights, so the directory is a plain causal LM that every
    stage (and vLLM, llama.cpp...) loads without peft, and the provenance also records the
    LoRA settings and the pad and EOS tokens.
    """
    final = state_dict_for_saving(accelerator, model, rebuild)
    if final is not None:
        guard.check_weights(final)
        policy: dict[str, Any] = {}
        if lora is not None:
            final = final.merge_and_unload()
            policy = {
                "pad_token": tok.pad_token,
                "eos_token": tok.eos_token,
                "lora": lora.model_dump(mode="json"),
            }
        with atomic_dir(out_dir) as tmp:
            models.save_model(final, tok, tmp)
            if write_extra is not None:
                write_extra(tmp)
            models.write_provenance(
                tmp,
                role=role,
                base=str(base),
                parameters=models.parameter_count(final),
                dtype=str(final.dtype).removeprefix("torch."),
                num_processes=accelerator.num_processes,
                **policy,
                metrics=finite_or_none({k: v for k, v in metrics.items() if "perf/" not in k}),
                **dict(provenance or {}),
            )
    accelerator.wait_for_everyone()


def finish_training(
    accelerator: Accelerator,
    curves: Curves,
    metrics: Mapping[str, Any],
    history: list[dict[str, float]],
) -> TrainOutcome:
    """Close the curves; the outcome every process returns, nan/inf metrics as None (null in
    the metrics file: an empty split or a run whose every step was skipped has no value)."""
    curves.close()
    return TrainOutcome(
        metrics=finite_or_none(metrics),
        is_main_process=accelerator.is_main_process,
        num_processes=accelerator.num_processes,
        history=history,
    )


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak memory of this process: CUDA allocator peak on a GPU, max resident set on a CPU."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


@contextlib.contextmanager
def train_mode(model: torch.nn.Module, training: bool) -> Iterator[None]:
    """Switch ``model`` to train/eval for a block and restore the previous mode after it."""
    was = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, group: int = 16
) -> list[list[int]]:
    """Shuffled batches of similar-length examples (HF Trainer's ``group_by_length``).

    Indices are shuffled, cut into mega-batches of ``group * batch_size``, each sorted by
    length and cut into batches, and the batches are shuffled again: a batch is padded to its
    longest member, so random batches of chat prompts waste ~40% of the compute on padding;
    the grouping keeps most of the randomness of the order.
    """
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    mega = batch_size * group
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in perm]


class LengthGroupedBatches:
    """A batch sampler of :func:`length_grouped_batches`, regrouped each epoch (seed + epoch).

    Each ``iter()`` is one epoch; accelerate shards it across processes like any batch
    sampler, and every process draws the same grouping because it depends on the seed only.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.epoch = 0

    def __iter__(self) -> Any:
        batches = length_grouped_batches(self.lengths, self.batch_size, self.seed + self.epoch)
        self.epoch += 1
        return iter(batches)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def guarded_step(
    accelerator: Accelerator,
    params: Iterable[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    guard: NonFiniteGuard,
    step: int,
    loss: torch.Tensor,
    max_grad_norm: float,
) -> bool:
    """One optimiser step after ``backward``: clip, let ``guard`` check loss and grad norm,
    then update (optimiser and schedule) or skip; gradients are zeroed either way.

    Returns whether the update was applied (the SFT, reward and critic loops all step this way).
    """
    grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm)
    applied = guard.ok(step, loss, grad_norm)
    if applied:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad()
    return applied
