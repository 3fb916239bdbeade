"""The supervised training loop: SFT, DPO, the reward model and the critic each bring their batches,
their loss and their evaluation; the epochs, the guarded optimiser step, the learning-rate
schedule, the curves and the timing are written here once.

It is HF ``Trainer``'s split (``training_step`` / ``compute_loss``, which TRL's trainers
override) in cleanrl's form: one loop a reader can follow top to bottom, with the part that
varies passed in as a function. Per optimiser step:

1. ``step_fn(model, batch)`` returns the loss to back-propagate (HF ``compute_loss``) and how
   to compute the step's curve point;
2. ``accelerator.backward``, then :func:`~rlhf_lab.training.common.guarded_step` (clip; skip a
   non-finite step, counted by :class:`~rlhf_lab.training.common.NonFiniteGuard`; AdamW and
   the linear schedule otherwise);
3. on an applied step only, the point (``train/*`` plus ``train/lr``) goes to the curves and
   the history. A skipped batch still counts in the step numbers, so it leaves a gap in the
   curves where it was.

After each epoch ``evaluate()`` (if any) returns the validation curve point; its time is
excluded from ``perf/train_seconds``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from rlhf_lab import ui
from rlhf_lab.config import OptimConfig
from rlhf_lab.training.common import (
    Curves,
    NonFiniteGuard,
    TrainOutcome,
    adamw_with_warmup,
    finish_training,
    gather,
    guarded_step,
    perf_metrics,
    progress,
    train_mode,
)


@dataclass
class Step:
    """What a trainer's ``step_fn`` returns for one batch."""

    loss: torch.Tensor
    """The scalar to back-propagate."""
    point: Callable[[], dict[str, float]]
    """The step's ``train/*`` curve values, called only once the update was applied (it may
    reduce across processes, which every process then does together)."""


@dataclass
class Fitted:
    """What the loop saw: the step count, the applied steps' points per epoch, the time."""

    steps: int
    """Batches trained on, skipped ones included (``train/steps``)."""
    epochs: list[list[dict[str, float]]] = field(default_factory=list)
    """Each epoch's curve points of its applied steps (``train/lr`` included)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Every applied step's point with its ``step``, for tests and benchmarks."""
    train_seconds: float = 0.0
    """Wall time of the epochs, evaluation excluded."""

    def epoch_means(self, key: str) -> list[float]:
        """Mean of ``key`` over each epoch's applied steps (nan for an epoch without one: null
        in the metrics file)."""
        return [sum(p[key] for p in ps) / len(ps) if ps else math.nan for ps in self.epochs]

    def last_epoch_mean(self, key: str) -> float:
        """:meth:`epoch_means` of the last epoch (nan without an epoch)."""
        return self.epoch_means(key)[-1] if self.epochs else math.nan


class SupervisedLoop:
    """The loop of one training run and what it owns: the curves under ``plots_dir`` and the
    non-finite guard of ``<section>.max_bad_steps``.

    Create it where the run starts logging (a trainer may log a point at step 0 before
    :meth:`fit`); end the run with :meth:`finish`.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        cfg: OptimConfig,
        *,
        stage: str,
        section: str,
        hint: str,
        plots_dir: str | Path | None,
    ) -> None:
        """``hint`` completes the abort message after "lower <section>.lr, or ..."."""
        self.accelerator, self.cfg, self.stage = accelerator, cfg, stage
        self.curves = Curves(plots_dir, enabled=accelerator.is_main_process)
        self.guard = NonFiniteGuard(
            stage, f"{section}.max_bad_steps", cfg.max_bad_steps, f"lower {section}.lr, or {hint}",
            accelerator,
        )  # fmt: skip

    def fit(
        self,
        model: torch.nn.Module,
        loader: Iterable[Any],
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        step_fn: Callable[[Any, Any], Step],
        *,
        label: str,
        evaluate: Callable[[], Mapping[str, float]] | None = None,
        step_line: Mapping[str, str] | None = None,
    ) -> Fitted:
        """``cfg.epochs`` passes over ``loader`` (progress bars read "<label> epoch i/n").

        ``step_line`` (shown name -> curve key): also print one line per applied step
        (:func:`rlhf_lab.ui.step_line`), which a log file keeps where a progress bar is not drawn.
        """
        acc, cfg = self.accelerator, self.cfg
        fitted = Fitted(steps=0)
        eval_seconds = 0.0
        start = step_start = time.perf_counter()
        total = len(loader) * cfg.epochs if step_line else 0  # type: ignore[arg-type]
        for epoch in range(cfg.epochs):
            points: list[dict[str, float]] = []
            with train_mode(model, True):
                for batch in progress(acc, loader, f"{label} epoch {epoch + 1}/{cfg.epochs}"):
                    out = step_fn(model, batch)
                    acc.backward(out.loss)
                    # the clip skips parameters without a gradient: the frozen base adds nothing
                    trainable = [p for p in model.parameters() if p.requires_grad]
                    applied = guarded_step(
                        acc, trainable, optimizer, scheduler, self.guard, fitted.steps + 1,
                        out.loss, cfg.max_grad_norm,
                    )  # fmt: skip
                    fitted.steps += 1  # numbers the batch; a skipped one has no curve point
                    if not applied:
                        continue
                    point = {**out.point(), "train/lr": scheduler.get_last_lr()[0]}
                    points.append(point)
                    fitted.history.append({"step": fitted.steps, **point})
                    self.curves.log(fitted.steps, point)
                    if step_line and acc.is_main_process:
                        shown = {name: point[key] for name, key in step_line.items()}
                        seconds = time.perf_counter() - step_start
                        ui.step_line(self.stage, fitted.steps, total, shown, seconds)
                    step_start = time.perf_counter()
            fitted.epochs.append(points)
            if evaluate is not None:
                t0 = time.perf_counter()
                valid = evaluate()
                eval_seconds += time.perf_counter() - t0
                self.curves.log(fitted.steps, valid)
                step_start = time.perf_counter()
        fitted.train_seconds = time.perf_counter() - start - eval_seconds
        return fitted

    def metrics(self, fitted: Fitted, **done: float) -> dict[str, Any]:
        """``train/steps``, ``train/skipped_nonfinite`` and the ``perf/*`` block, whose rates
        count what the epochs trained on (``done``: ``unit=count``, see ``perf_metrics``)."""
        return {
            "train/steps": fitted.steps,
            "train/skipped_nonfinite": self.guard.skipped,
            **perf_metrics(self.accelerator, fitted.train_seconds, **done),
        }

    def finish(self, metrics: Mapping[str, Any], history: list[dict[str, float]]) -> TrainOutcome:
        """Close the curves; the outcome the trainer returns (see ``finish_training``)."""
        return finish_training(self.accelerator, self.curves, metrics, history)


@torch.no_grad()
def evaluation(
    accelerator: Accelerator,
    model: torch.nn.Module,
    loader: Iterable[Any],
    what: str,
    outputs: Callable[[Any, Any], Mapping[str, torch.Tensor]],
) -> list[dict[str, torch.Tensor]]:
    """``outputs(model, batch)`` for every batch of ``loader``, in eval mode and without
    gradients, each tensor gathered from every process (``gather``: dataset order, float32 on
    the CPU); a progress bar reads ``what``."""
    with train_mode(model, False):
        return [
            {key: gather(accelerator, value) for key, value in outputs(model, batch).items()}
            for batch in progress(accelerator, loader, what)
        ]


def concat(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """:func:`evaluation`'s batches joined per key ({} without a batch)."""
    return {key: torch.cat([b[key] for b in batches]) for key in (batches[0] if batches else {})}


def adamw(
    model: torch.nn.Module, cfg: OptimConfig, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW and the warm-up schedule over ``cfg.epochs * steps_per_epoch`` steps, from ``cfg``."""
    return adamw_with_warmup(
        model, cfg.lr, cfg.weight_decay, steps_per_epoch * cfg.epochs, cfg.warmup_ratio
    )
