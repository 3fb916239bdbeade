"""train_ppo data-parallel: N processes (``accelerate launch``) computing what 1 process does.

Each process samples, scores and evaluates its shard of the step's prompts; everything that is
a statistic of the *batch* is computed over the whole batch, so 1 and N processes optimise the
same objective (``docs/scaling.md``):

* **Shards by prompt.** The step's global ``batch_indices`` are cut into N contiguous slices
  (:func:`shard`), so the union over ranks is exactly the 1-process batch, and every reply to a
  prompt (a GRPO group of ``num_generations`` samples) stays on the process that drew it.
* **Batch statistics over all ranks.** Reward and advantage whitening, the logged means and
  the KL controller's input are computed on the batch gathered from every rank
  (:meth:`DataParallel.across`, :meth:`DataParallel.gather_rows`): a ``[B, R]`` float tensor
  is tiny next to a forward pass, and applying the *same* function to the whole batch cannot
  drift from the 1-process definition the way hand-written sum/count all-reduces could.
* **Token-weighted loss.** A minibatch's loss is the mean over the tokens of the *global*
  minibatch: each rank scales its local token mean by ``N · local_tokens / global_tokens``
  (:meth:`DataParallel.loss_scale`) before ``backward``, so the averaged gradient equals the
  1-process one even when replies have different lengths on different ranks.
* **Gradients all-reduced by hand** (:meth:`DataParallel.average_gradients`), not DDP:
  :class:`~rlhf_lab.ppo.model.PolicyCritic` switches peft adapters between forwards and runs two
  backward passes per minibatch (policy, then critic), each touching a disjoint subset of the
  trainable parameters. DDP's reducer expects one backward per forward over a fixed set of
  used parameters (``find_unused_parameters`` would re-scan the graph each pass and still
  fire its buckets twice). One flat ``all_reduce`` after both backwards is simpler, exact,
  and happens before clipping, so every rank clips the same averaged gradient and takes the
  same optimiser step.

With one process every method is the identity (no copies, no collectives), so the 1-process
run is bit-for-bit what it was before this module existed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as torch_dist

from rlhf_lab.errors import ConfigError

T = TypeVar("T")


def shard(indices: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank ``rank``'s contiguous slice of ``indices`` (``len(indices)`` divisible by ``world``)."""
    size = len(indices) // world
    return list(indices[rank * size : (rank + 1) * size])


def rank_seed(seed: int, rank: int) -> int:
    """The sampling seed of ``rank``: ``seed`` itself on rank 0 (so a 1-process run draws what
    it always did), a different stream on every other rank (else N ranks would draw correlated
    samples)."""
    return seed if rank == 0 else seed + 1_000_003 * rank


def check_sizes(batch_size: int, rollout_size: int, minibatches: int, world: int) -> None:
    """One-line error unless every rank gets the same whole number of prompts, and of replies
    per minibatch (``rollout_size`` = batch_size × ppo.num_generations replies per step)."""
    if batch_size % world or rollout_size % (world * minibatches):
        raise ConfigError(
            f"params.yaml: ppo.batch_size ({batch_size}) must be divisible by the number of "
            f"processes ({world}), and batch_size × ppo.num_generations ({rollout_size}) by "
            f"processes × ppo.minibatches ({minibatches}): each process takes batch_size / "
            "processes prompts per step (all samples of a prompt on one process), cut into "
            "the same number of minibatches"
        )


def check_launch(accelerator: Any) -> None:
    """One-line error for a launch that shards the weights (DeepSpeed, FSDP): train_ppo keeps
    a full replica per process and averages gradients itself (see the module docstring)."""
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    if kind in ("DEEPSPEED", "FSDP"):
        raise ConfigError(
            f"train_ppo: accelerate distributed_type {kind} is not supported (train_ppo is "
            "data-parallel with a full replica per process); launch it with "
            "accelerate/multi_gpu.yaml"
        )


class DataParallel:
    """The collectives the PPO trainer needs; the identity for a single process.

    ``accelerator`` is an :class:`accelerate.Accelerator` (its process group, rank and device);
    ``None`` is one process.
    """

    def __init__(self, accelerator: Any = None) -> None:
        if accelerator is not None:
            check_launch(accelerator)
        self.accelerator = accelerator
        self.world = 1 if accelerator is None else int(accelerator.num_processes)
        self.rank = 0 if accelerator is None else int(accelerator.process_index)

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- objects and rows ----------------------------------------------------------------------

    def gather_objects(self, obj: T) -> list[T]:
        """``obj`` of every rank, in rank order (pickled; for small CPU state such as RNGs)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        torch_dist.all_gather_object(out, obj)
        return out

    def gather_rows(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each CPU tensor ``[B_r, ...]`` concatenated over ranks in rank order (the global batch
        in 1-process order); per-token tensors are right-padded with 0 to the widest rank's
        width first, which every masked statistic ignores."""
        if not self.active:
            return tensors
        per_rank = self.gather_objects([t.detach().cpu() for t in tensors])
        out = []
        for k in range(len(tensors)):
            parts = [p[k] for p in per_rank]
            if parts[0].dim() >= 2:
                width = max(p.shape[1] for p in parts)
                parts = [torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts]
            out.append(torch.cat(parts))
        return tuple(out)

    def across(
        self, fn: Callable[..., torch.Tensor], x: torch.Tensor, mask: torch.Tensor, **kw: Any
    ) -> torch.Tensor:
        """``fn(x, mask, **kw)`` on the global batch; this rank's rows of the result.

        For batch-wide maps such as :func:`rlhf_lab.ppo.core.masked_whiten`: whitening a
        shard with its own mean/variance would give every rank a different normalisation.
        """
        if not self.active:
            return fn(x, mask, **kw)
        counts = self.gather_objects(x.shape[0])
        full_x, full_mask = self.gather_rows(x, mask)
        start = sum(counts[: self.rank])
        return fn(full_x, full_mask, **kw)[start : start + x.shape[0], : x.shape[1]].to(x.dtype)

    # -- reductions ----------------------------------------------------------------------------

    def sum(self, value: float) -> float:
        """``value`` summed over ranks."""
        if not self.active:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._device)
        torch_dist.all_reduce(t)
        return float(t.item())

    def max(self, value: int) -> int:
        """``value``'s maximum over ranks."""
        if not self.active:
            return value
        t = torch.tensor([int(value)], dtype=torch.long, device=self._device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return int(t.item())

    def loss_scale(self, local_tokens: float) -> tuple[float, float]:
        """``(scale, global_tokens)`` for a minibatch: multiply the local token-mean loss by
        ``scale`` before ``backward``, and after :meth:`average_gradients` the gradient is that
        of the mean over the global minibatch's tokens (``scale = 1`` for one process)."""
        if not self.active:
            return 1.0, local_tokens
        total = self.sum(local_tokens)
        return (self.world * local_tokens / total if total > 0 else 0.0), total

    def global_mean(
        self, local_tokens: float, total: float, *local_means: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Token means over the global minibatch from each rank's token means over its share
        (one all-reduce for all of them; the inputs themselves for one process)."""
        if not self.active:
            return local_means
        t = torch.stack([v.detach().double().reshape(()) for v in local_means]).cpu()
        t = (t * local_tokens).to(self._device)
        torch_dist.all_reduce(t)
        return tuple((t.cpu() / max(total, 1.0)).float())

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace every gradient by its mean over ranks (one flat all-reduce; a parameter
        without a gradient contributes zeros, so every rank reduces the same layout)."""
        if not self.active:
            return
        params = list(params)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch_dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def broadcast_parameters(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Rank 0's values of ``params`` on every rank (a fresh adapter's init, or a device's
        nondeterminism, can never leave the replicas apart)."""
        if not self.active:
            return
        with torch.no_grad():
            for p in params:
                torch_dist.broadcast(p.data, src=0)

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    @property
    def _device(self) -> torch.device:
        # gloo reduces CPU tensors, NCCL only CUDA ones: the accelerator's device is the one
        # its process group was built for.
        return self.accelerator.device if self.accelerator is not None else torch.device("cpu")
