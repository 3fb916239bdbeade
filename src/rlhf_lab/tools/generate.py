"""generate: replies from trained models, for reading them (a command, not a DVC stage).

    rlhf-lab generate --prompt "Any good sci-fi films?" --model sft --model ppo
    rlhf-lab generate --file prompts.jsonl --model models/ppo --out replies.jsonl
    rlhf-lab generate --task docstring --code utils.py -m sft -m ppo
    rlhf-lab generate --task docstring --code "def area(w, h): return w * h" -m sft -m ppo

``--code`` (docstring task; ``--task`` defaults to params ``task.name``) takes a Python file
or a snippet: every top-level function and method in it (its own docstring removed) is asked
for a docstring with the prompt the training rows use, and the models' docstrings are printed
side by side, each with its rule reward (the task's weights, reference-free: there is no
reference to compare with). This is the Phase-1 protocol's qualitative check.

``--model`` takes ``base``, ``sft`` or ``ppo`` (``models/base/policy``, ``models/sft``,
``models/ppo``) or any model directory; repeat it to see several models answer the same
prompts side by side. Sampling follows params ``eval`` (temperature, max_new_tokens,
batch_size, seed) and ``task.system_prompt``, the settings ``evaluate`` compares the models
under, unless an option overrides them. The replies are printed to stdout; ``--out`` also
writes them as JSON lines, one row per prompt: ``{"prompt": [...], "replies": {model:
{"text", "n_tokens", "eos"}}}``.

A prompt file is either JSONL (``.jsonl``: prompt rows as ``data/prompts/*.jsonl`` has them,
``{"prompt": [messages]}``, or ``{"prompt": "text"}``), or plain text with one prompt per line.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from rlhf_lab import outputs
from rlhf_lab.config import Params
from rlhf_lab.data.rows import Row
from rlhf_lab.errors import DataError, ModelSourceError
from rlhf_lab.io import write_jsonl

MODEL_ALIASES = {
    "base": Path("models/base/policy"),
    "sft": Path("models/sft"),
    "ppo": Path("models/ppo"),
    "dpo": Path("models/dpo"),
}
"""Short names for the pipeline's policy directories (``generate``, ``arena``)."""
HELD_OUT_PROMPTS = Path("data/grounded/test.jsonl")
"""The held-out prompts as evaluate samples them (its ``PROMPTS``): train_recommender's copy of
``data/prompts/test.jsonl``, which for crs carries the recommender's candidates, so a reply here
is one the policy was trained to write (and the crs/grounded reward can see the candidates)."""

Messages = list[dict[str, str]]


def resolve_model(name: str) -> Path:
    """A model alias or directory as a directory that exists."""
    path = MODEL_ALIASES.get(name, Path(name))
    if not (path / "config.json").is_file():
        known = ", ".join(MODEL_ALIASES)
        raise ModelSourceError(
            f"model {name!r}: {path} holds no trained model (config.json): "
            f"{outputs.how_to_get(path)} (--model takes {known} or a model directory)"
        )
    return path


def _as_messages(value: Any, where: str) -> Messages:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value)
    ):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]
    raise DataError(f"{where}: 'prompt' must be text or a list of {{role, content}} messages")


def read_prompts(path: str | Path) -> list[Messages]:
    """Prompts of a ``.jsonl`` file of prompt rows, or of a text file (one per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompt file not found")
    lines = path.read_text(encoding="utf-8").splitlines()
    prompts: list[Messages] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            prompts.append(_as_messages(line.strip(), f"{path}:{n}"))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "prompt" not in row:
            raise DataError(f"{path}:{n}: expected an object with a 'prompt' key")
        prompts.append(_as_messages(row["prompt"], f"{path}:{n}"))
    if not prompts:
        raise DataError(f"{path}: no prompts in the file")
    return prompts


def _show(prompts: Sequence[Messages], replies: dict[str, list[Any]]) -> None:
    width = max(len(name) for name in replies)
    for i, messages in enumerate(prompts):
        last = messages[-1]
        typer.echo(f"[{i + 1}] {last['role']}: {last['content']}")
        for name, samples in replies.items():
            s = samples[i]
            cut = "" if s.eos else "  [cut at max_new_tokens]"
            typer.echo(f"  {name:>{width}}: {s.text}{cut}")
        typer.echo("")


def code_rows(code: Sequence[str]) -> list[Row]:
    """Docstring prompt rows for ``--code`` values: a file path or a snippet each, one row per
    function in it (:func:`rlhf_lab.tasks.docstring.functions_in`), its docstring removed."""
    from rlhf_lab.data.validate import RowError
    from rlhf_lab.tasks.docstring import functions_in
    from rlhf_lab.tasks.docstring.formats import docstring_prompt, strip_docstring

    rows: list[Row] = []
    for arg in code:
        path = Path(arg)
        is_file = "\n" not in arg and path.is_file()
        if not is_file and "\n" not in arg and path.suffix == ".py":
            raise DataError(f"--code {arg}: file not found")
        text = path.read_text(encoding="utf-8") if is_file else arg
        if not text.strip():
            raise DataError(f"--code {arg!r}: no code")
        for func in functions_in(text):
            try:
                stripped = strip_docstring(func, "code")
            except RowError as exc:
                raise DataError(f"--code {arg!r}: {exc}") from None
            rows.append({"prompt": docstring_prompt(stripped), "reference": None,
                         "meta": {"code": stripped}})  # fmt: skip
    return rows


def _show_docstrings(
    rows: Sequence[Row], replies: dict[str, list[Any]], params: Params, task: str
) -> None:
    """Each function's docstrings by model, side by side, with their rule rewards."""
    from rich.console import Console
    from rich.table import Table

    from rlhf_lab.evaluation.reward_check import normalised
    from rlhf_lab.reward_components import task_weights
    from rlhf_lab.tasks import docstring

    weights, _ = task_weights(task, params.reward.weights)
    weights = normalised(weights, reference_free=True)
    table = Table(show_header=True, header_style="bold", show_lines=True)
    table.add_column("function", overflow="fold")
    for name in replies:
        table.add_column(name, overflow="fold")
    for i, row in enumerate(rows):
        signature = row["meta"]["code"].splitlines()[0] if row["meta"]["code"] else ""
        cells = []
        for samples in replies.values():
            s = samples[i]
            reward, _ = docstring.docstring_reward(s.text, row, weights)
            cut = "" if s.eos else " [cut]"
            cells.append(f"{docstring.clean_docstring(s.text)}\n\nreward {reward:.3f}{cut}")
        table.add_row(signature, *cells)
    # stdout, wide enough for every column: this output is the command's product
    Console(width=32 + 48 * len(replies), soft_wrap=False).print(table)


def main(
    params: Params,
    *,
    models: Sequence[str],
    prompts: Sequence[str] = (),
    file: Path | None = None,
    out: Path | None = None,
    temperature: float | None = None,
    max_new_tokens: int | None = None,
    seed: int | None = None,
    task: str | None = None,
    code: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Sample one reply per (prompt, model); print them, write ``out`` if given; return rows."""
    from rlhf_lab import generation
    from rlhf_lab.evaluation.pipeline import load_policy
    from rlhf_lab.tasks.registry import TASKS, get_task

    task = task or params.task.name
    if code and not get_task(task).writes_about_code:
        takes = " or ".join(n for n, t in TASKS.items() if t.writes_about_code)
        raise DataError(f"--code needs --task {takes} (task is {task!r})")
    if code and (prompts or file is not None):
        raise DataError("give --code, or --prompt / --file, not both")
    rows = code_rows(code)
    messages = [r["prompt"] for r in rows] + [_as_messages(p, "--prompt") for p in prompts]
    if file is not None:
        messages += read_prompts(file)
    if not messages:
        raise DataError("nothing to answer: give --prompt TEXT, --file PATH or --code CODE")
    cfg = params.eval
    dirs = {name: resolve_model(name) for name in dict.fromkeys(models)}  # check all first
    replies: dict[str, list[Any]] = {}
    for name, folder in dirs.items():
        model, tok = load_policy(folder)
        replies[name] = generation.generate(
            model,
            tok,
            messages,
            max_new_tokens=max_new_tokens if max_new_tokens is not None else cfg.max_new_tokens,
            temperature=temperature if temperature is not None else cfg.temperature,
            batch_size=cfg.batch_size,
            seed=seed if seed is not None else cfg.seed,
            system_prompt=params.task.system_prompt,
            desc=f"generate {name}",
        )
        del model
        gc.collect()  # one policy in memory at a time
    if rows:
        _show_docstrings(rows, replies, params, task)
    else:
        _show(messages, replies)
    written = [
        {
            "prompt": m,
            "replies": {
                name: {"text": s[i].text, "n_tokens": s[i].n_tokens, "eos": s[i].eos}
                for name, s in replies.items()
            },
        }
        for i, m in enumerate(messages)
    ]
    for item, row in zip(written, rows, strict=False):
        item["code"] = row["meta"]["code"]
    if out is not None:
        write_jsonl(out, written)
    return written
