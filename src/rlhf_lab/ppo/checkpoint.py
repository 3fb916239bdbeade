"""Checkpoints and resume of the PPO loop (``checkpoints/train_ppo/step-NNNNNN/``).

A checkpoint (atomic, the last two kept) holds the policy adapter, the critic (its value head
alone for a shared trunk), the optimiser, every RNG state, the KL controller, the metric
history, the step and the run's fingerprint (:mod:`rlhf_lab.ppo.fingerprint`), so a resume
continues bit-for-bit where an uninterrupted run with the same inputs would be
(``tests/test_ppo_resume.py``) and never continues a run whose inputs changed.

:class:`Checkpointing` is the part of :class:`rlhf_lab.ppo.trainer.PpoTrainer` that reads and
writes them; it works on the trainer's own state (model, optimiser, KL controller, history).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape

from rlhf_lab import ui
from rlhf_lab.config import CriticLayout, PpoConfig
from rlhf_lab.errors import RlhfLabError
from rlhf_lab.io import atomic_dir, remove_dir
from rlhf_lab.ppo import fingerprint as fp
from rlhf_lab.ppo.core import AdaptiveKLController, FixedKLController
from rlhf_lab.ppo.distributed import DataParallel, rank_seed
from rlhf_lab.ppo.model import (
    POLICY,
    PolicyCritic,
    load_adapter_dir,
    load_critic_weights,
    save_adapter,
    save_critic,
)

CHECKPOINT_PREFIX = "step-"
KEEP_CHECKPOINTS = 2
# ppo keys that may change between a checkpoint and a resume (they do not change what the
# finished steps computed). ppo.steps does when a weight schedule (reward.weights_end) spreads
# over the steps; the trainer then keeps it in the fingerprint.
RESUMABLE_CHANGES = {"steps", "save_every", "max_bad_steps"}


# ---------------------------------------------------------------------------------------------
# RNG
# ---------------------------------------------------------------------------------------------


def rng_file(rank: int) -> str:
    """A checkpoint's RNG file of process ``rank`` (``rng.pt`` for rank 0 / one process)."""
    return "rng.pt" if rank == 0 else f"rng-rank{rank}.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from (sampling uses torch's global generator)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": json.dumps(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))


def _delete_checkpoint(path: Path) -> None:
    # state.json first: it is what marks a checkpoint complete, so a kill midway through the
    # deletion leaves a directory checkpoints() ignores rather than one missing its weights.
    (path / "state.json").unlink(missing_ok=True)
    remove_dir(path)  # renamed aside first: never a half-deleted directory under its name


class Checkpointing:
    """Checkpoint and resume methods of :class:`rlhf_lab.ppo.trainer.PpoTrainer`."""

    model: PolicyCritic
    cfg: PpoConfig
    dp: DataParallel
    optimizer: torch.optim.Optimizer
    kl_ctl: AdaptiveKLController | FixedKLController
    checkpoint_dir: Path | None
    fingerprint: dict[str, Any]
    history: list[dict[str, float]]
    step: int
    skipped_updates: int
    _stale: list[Path]

    def scorer_has_schedule(self) -> bool:
        raise NotImplementedError

    def _start(self, resume: bool | None) -> None:
        """Continue a compatible checkpoint (see :meth:`PpoTrainer.train`), or seed step 0."""
        found = self.checkpoints()
        ignore = {fp.CODE} if resume else set()
        source = None if resume is False else self._resumable(found, ignore, required=bool(resume))
        if source is not None:
            self.load_checkpoint(source)
            if self.dp.is_main:
                ui.console.print(
                    f"resuming train_ppo at step {self.step}/{self.cfg.steps}", highlight=False
                )
            self._stale = [p for p in found if self._mismatch(p, ignore)]
        else:
            if resume and not found:
                ui.console.print("no checkpoint to resume from; starting at step 0")
            seed_everything(rank_seed(self.cfg.seed, self.dp.rank))
            self._stale = found

    # -- checkpoints ---------------------------------------------------------------------------

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (half-written ones are hidden temp dirs)."""
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return []
        found = [
            p
            for p in self.checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*")
            if (p / "state.json").is_file()
        ]
        return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))

    def save_checkpoint(self) -> Path:
        """Write ``step-NNNNNN/`` atomically; keep this run's newest :data:`KEEP_CHECKPOINTS`.

        The previous checkpoints are deleted only once the new one is complete (renamed into
        place by :func:`rlhf_lab.io.atomic_dir`), so a kill at any point leaves a complete one.
        """
        assert self.checkpoint_dir is not None
        target = self.checkpoint_dir / f"{CHECKPOINT_PREFIX}{self.step:06d}"
        # Every process's RNG (each samples its own stream); the main process alone writes.
        rngs = self.dp.gather_objects(rng_state())
        if not self.dp.is_main:
            return target
        with atomic_dir(target) as tmp:
            save_adapter(self.model, POLICY, tmp / "policy")
            if self.model.layout.has_critic:
                save_critic(self.model, tmp / "critic")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(rngs[0], tmp / "rng.pt")
            for rank, state in enumerate(rngs[1:], start=1):
                torch.save(state, tmp / rng_file(rank))
            state = {
                "step": self.step,
                "skipped_updates": self.skipped_updates,
                "kl_controller": self.kl_ctl.state_dict(),
                "config": self.cfg.model_dump(mode="json"),
                "fingerprint": self.fingerprint,
                # Python's json keeps NaN (explained variance of a constant return can be nan),
                # so the replayed history is exactly what was logged.
                "history": self.history,
            }
            (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
        for old in self._stale:
            if old != target:  # a stale checkpoint of the same step was just replaced
                _delete_checkpoint(old)
        self._stale = []
        for old in self.checkpoints()[:-KEEP_CHECKPOINTS]:
            _delete_checkpoint(old)
        return target

    def _ppo_fingerprint(self) -> dict[str, Any]:
        ppo = self.cfg.model_dump(mode="json")
        resumable = RESUMABLE_CHANGES - ({"steps"} if self.scorer_has_schedule() else set())
        out = fp.flatten({"ppo": {k: v for k, v in ppo.items() if k not in resumable}})
        layout = self.model.layout
        if layout.has_critic:
            # What the optimiser's state and the checkpoint's critic are laid out for (a value
            # head on the policy vs a critic adapter); critic-free runs ignore the option.
            out["critic.shared_trunk"] = layout is CriticLayout.SHARED_TRUNK
        return out

    def _mismatch(self, path: Path, ignore: AbstractSet[str] = frozenset()) -> list[str]:
        """Why the checkpoint at ``path`` cannot be continued by this run (empty: it can)."""
        try:
            state = json.loads((path / "state.json").read_text())
        except (OSError, ValueError):
            return ["state.json is unreadable"]
        if "fingerprint" not in state:
            return ["it records no fingerprint (made by an older rlhf-lab)"]
        saved = dict(state["fingerprint"])
        if self.model.layout.has_critic:
            # Checkpoints from before critic.shared_trunk existed had the separate critic.
            saved.setdefault("critic.shared_trunk", False)
        found = fp.changes(saved, self.fingerprint, ignore)
        if int(state["step"]) > self.cfg.steps and "ppo.steps" not in self.fingerprint:
            found.append(
                f"ppo.steps changed (checkpoint at step {state['step']} vs now {self.cfg.steps})"
            )
        return found

    def _resumable(
        self, found: list[Path], ignore: AbstractSet[str], required: bool
    ) -> Path | None:
        """The newest of ``found`` this run can continue; else None, or an error if required."""
        newest_reasons: list[str] = []
        for path in reversed(found):
            reasons = self._mismatch(path, ignore)
            if not reasons:
                for change in fp.changes(
                    json.loads((path / "state.json").read_text())["fingerprint"],
                    self.fingerprint,
                ):
                    ui.console.print(
                        f"[yellow]warning:[/] {escape(f'{path}: resuming although {change}')}"
                    )
                return path
            newest_reasons = newest_reasons or reasons
        if found:
            why = fp.summarise(newest_reasons)
            if required:
                raise RlhfLabError(
                    f"{self.checkpoint_dir}: cannot resume: {why}; "
                    "run without --resume to start over, or delete the directory"
                )
            ui.console.print(
                f"{self.checkpoint_dir}: not resuming: {why}; starting at step 0 "
                "(the old checkpoints stay until this run saves its first)",
                highlight=False,
                markup=False,
            )
        return None

    def load_checkpoint(self, path: Path) -> None:
        """Restore the checkpoint at ``path`` (chosen by :meth:`train`)."""
        state = json.loads((path / "state.json").read_text())
        load_adapter_dir(self.model, POLICY, path / "policy")
        if self.model.layout.has_critic:
            load_critic_weights(self.model, path / "critic")
        self.optimizer.load_state_dict(
            # On the CPU: load_state_dict moves each state to its parameter's device itself.
            torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        )
        rng = path / rng_file(self.dp.rank)
        if rng.is_file():
            set_rng_state(torch.load(rng, weights_only=True))
        else:
            # Saved by fewer processes: this rank's stream did not exist; start a new one
            # that depends on the seed, rank and step only (a resume under a different process
            # count continues the optimisation but not the exact samples).
            ui.console.print(
                f"[yellow]warning:[/] {path}: no RNG state for process {self.dp.rank} "
                "(saved by fewer processes); its sampling is reseeded",
                highlight=False,
            )
            seed_everything(rank_seed(self.cfg.seed, self.dp.rank) + 7919 * int(state["step"]))
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.step = int(state["step"])
        self.skipped_updates = int(state["skipped_updates"])
        self.history = state["history"]
