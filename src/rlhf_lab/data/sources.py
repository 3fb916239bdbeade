"""Data formats: infer ``data.format`` and parse each source record into examples.

:mod:`rlhf_lab.data.readers` yields the :class:`~rlhf_lab.data.readers.Record` s of
``data.source``; :func:`resolve_format` names their format; a *parser* per ``data.format`` turns
one record into zero or more :class:`Example` s. The formats of no
one task are here (:data:`GENERIC_PARSERS`):

``hh``        HH-RLHF ``{"chosen", "rejected"}`` transcripts; prompt = the turns both share
              before the final Assistant reply; chosen/rejected = the two final replies.
``preference`` TRL's preference rows (the arena's ``data/human/votes.jsonl`` among them).
              Explicit prompt ``{"prompt", "chosen", "rejected"}``: ``prompt`` as text
              (standard) or chat messages (conversational; system turns dropped:
              ``task.system_prompt`` sets the system turn), ``chosen``/``rejected`` as text,
              one assistant message, or the whole conversation starting with the prompt
              (``HuggingFaceH4/ultrafeedback_binarized``). Implicit prompt ``{"chosen",
              "rejected"}`` as two message lists: the prompt is the prefix they share
              (``trl-lib/ultrafeedback_binarized``). Every other key is kept in ``meta``. A row
              whose ``label`` is ``tie`` or ``both_bad`` is no pair and is skipped
              (``no_preference``).
``prompt_only`` TRL's ``{"prompt"}`` (text or messages): prompts with no reference, for PPO;
              ``data.pairs: auto`` asks the judge (``judge``) since there is no reply to prefer.
``prompt_completion`` TRL's ``{"prompt", "completion"}``: reference = the completion (text or
              one assistant message).
``messages``  TRL's ``{"messages": [...]}``: reference = the last assistant turn, prompt = the
              turns before it.
``chitchat``  one example per turn after the first: prompt = the conversation so far (the
              speaker of the target turn plays the assistant), reference = that turn.

A task's own formats live in its package, beside its rewards: ``redial`` and ``crs_turns`` in
:mod:`rlhf_lab.tasks.crs.formats`, ``docstring`` and ``humaneval`` in
:mod:`rlhf_lab.tasks.docstring.formats`. Each :class:`~rlhf_lab.tasks.base.Task` declares its
parser factories (``Task.parsers``, format -> :data:`ParserFactory`), the registry collects them
in ``FORMAT_PARSERS``, and the caller hands that to :func:`make_parser`: ``data`` sits below the
tasks in the layers contract (``[tool.importlinter]`` in pyproject.toml), so it never imports a
task, and a new task format needs no edit here beyond the key / name hints of
:func:`resolve_format` (``data.format: auto``), which only name formats (the config's Literal
lists them all).

Prompts keep the last ``data.max_turns`` turns and then start with a user turn: several chat
templates (Llama 2, Mistral, Gemma) raise on a conversation that opens with the assistant.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any, get_args

from rlhf_lab.config import TASK_FORMATS, DataConfig, TaskConfig
from rlhf_lab.data.rows import Example, Message
from rlhf_lab.data.validate import (
    BAD_TRANSCRIPT,
    NO_PREFERENCE,
    WRONG_TYPE,
    Origin,
    RowError,
    content_key,
    require,
)
from rlhf_lab.errors import ConfigError, clip

FORMATS = tuple(f for f in get_args(DataConfig.model_fields["format"].annotation) if f != "auto")
"""Every row format ``data.format`` names (the config's Literal is the one list)."""
CODE_KEYS = ("code", "func_code_string", "whole_func_string", "original_string", "function")
"""Columns holding the function source, in order of preference (ours, CodeSearchNet, CodeXGLUE)."""
DOC_KEYS = ("docstring", "func_documentation_string", "docstring_summary")
"""Columns holding the docstring, in order of preference."""


# ---------------------------------------------------------------------------------- format


def _format_from_keys(row: Mapping[str, Any]) -> str | None:
    """The format a first row's keys (and, where keys are shared, value types) say it has."""
    keys = set(row)
    if {"prompt", "chosen", "rejected"} <= keys:  # before hh: hh rows have no prompt
        return "preference"
    if {"chosen", "rejected"} <= keys:
        # TRL's implicit-prompt form holds message lists; HH-RLHF holds transcripts (text).
        return "preference" if isinstance(row["chosen"], list) else "hh"
    if {"messages", "movieMentions"} <= keys:
        return "redial"
    if {"context", "resp"} <= keys:
        return "crs_turns"
    if {"task_id", "prompt", "canonical_solution", "entry_point"} <= keys:
        return "humaneval"
    if keys & set(CODE_KEYS) and keys & set(DOC_KEYS):
        return "docstring"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "messages" in keys and isinstance(row["messages"], list):
        return "messages"
    if "prompt" in keys:
        return "prompt_only"
    return None


def _format_from_name(source: str) -> str | None:
    name = source.lower()
    if "hh-rlhf" in name or "hh_rlhf" in name:
        return "hh"
    if "redial" in name or "re_dial" in name:
        return "redial"
    if any(s in name for s in ("docstring", "code_search_net", "codesearchnet", "code_x_glue")):
        return "docstring"
    if "humaneval" in name or "human_eval" in name:
        return "humaneval"
    return None


def resolve_format(cfg: DataConfig, task: TaskConfig, first: Mapping[str, Any] | None) -> str:
    """``data.format``, or for 'auto': the first row's keys, then the source name, then the task.

    ``first`` is the first parsed record of the source (None if there is none).
    """
    if cfg.source == "chitchat" and cfg.format not in ("auto", "chitchat"):
        raise ConfigError(
            f"params.yaml: data.format {cfg.format!r} does not fit data.source 'chitchat' "
            "(the embedded chats); set data.format to 'auto' or 'chitchat'"
        )
    if cfg.format == "chitchat" and cfg.source != "chitchat":
        raise ConfigError(
            "params.yaml: data.format 'chitchat' reads the embedded chats; "
            f"set data.source to 'chitchat' (got {clip(cfg.source)})"
        )
    if cfg.format != "auto":
        return cfg.format
    if cfg.source == "chitchat":
        return "chitchat"
    # Row keys first: a path can mention anything ("tests/test_redial_x/docstrings.jsonl").
    found = (_format_from_keys(first) if first else None) or _format_from_name(cfg.source)
    if found:
        return found
    by_task = TASK_FORMATS[task.name]
    if by_task:
        return by_task[0]
    raise ConfigError(
        f"params.yaml: data.format: cannot infer the format of data.source {clip(cfg.source)} "
        f"from its first row's keys {clip(sorted(first or {}))}; set data.format to one of "
        f"{', '.join(FORMATS)}"
    )


# ---------------------------------------------------------------------------------- helpers


def window(turns: list[Message], max_turns: int) -> list[Message]:
    """The last ``max_turns`` turns, minus a leading assistant turn (see the module docstring)."""
    kept = turns[-max_turns:]
    if len(kept) > 1 and kept[0]["role"] == "assistant":
        kept = kept[1:]
    return kept


def merge_turns(turns: Iterable[tuple[Any, str]], sep: str) -> list[tuple[Any, str]]:
    """Join consecutive turns of the same speaker (chat apps split one turn into messages)."""
    merged: list[tuple[Any, str]] = []
    for speaker, text in turns:
        if merged and merged[-1][0] == speaker:
            merged[-1] = (speaker, merged[-1][1] + sep + text)
        else:
            merged.append((speaker, text))
    return merged


# ---------------------------------------------------------------------------------- hh

_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def hh_turns(text: str, field: str) -> list[Message]:
    """Split an HH-RLHF transcript into chat messages (consecutive same-role turns merged)."""
    parts = _HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text.lstrip())
    if parts[0].strip():
        raise RowError(BAD_TRANSCRIPT, field, "text before the first Human:/Assistant: marker")
    pairs = [(_HH_ROLE[parts[i]], parts[i + 1].strip()) for i in range(1, len(parts), 2)]
    if not pairs:
        raise RowError(BAD_TRANSCRIPT, field, "no '\\n\\nHuman:' / '\\n\\nAssistant:' turns")
    return [{"role": r, "content": c} for r, c in merge_turns(pairs, "\n\n")]


def parse_hh(row: Mapping[str, Any], origin: Origin, *, max_turns: int) -> list[Example]:
    """One HH-RLHF pair: prompt = shared turns before the final reply; chosen/rejected = replies."""
    chosen_text = require(row, "chosen", str)
    rejected_text = require(row, "rejected", str)
    chosen, rejected = hh_turns(chosen_text, "chosen"), hh_turns(rejected_text, "rejected")
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant":
            raise RowError(
                BAD_TRANSCRIPT, name, "the transcript does not end with an Assistant turn"
            )
    prompt = chosen[:-1]
    if prompt != rejected[:-1]:
        raise RowError(
            BAD_TRANSCRIPT, "rejected", "chosen and rejected differ before the final reply"
        )
    if not prompt:
        raise RowError(BAD_TRANSCRIPT, "chosen", "no Human turn before the final reply")
    prompt = window(prompt, max_turns)
    reply_c, reply_r = chosen[-1]["content"], rejected[-1]["content"]
    key = content_key(prompt)
    return [
        Example(
            id=f"hh-{content_key(prompt, reply_c, reply_r)}",
            # Pairs that share a prompt stay in one split, so no prompt is in train and test.
            group=f"hh-{key}",
            prompt=prompt,
            reference=reply_c,
            origin=origin,
            meta={"origin": str(origin)},
            chosen=reply_c,
            rejected=reply_r,
        )
    ]


# ---------------------------------------------------------------------------------- preference

_ROLES = ("system", "user", "assistant")
NO_PREFERENCE_LABELS = ("tie", "both_bad")
"""Labels of human-judged rows that prefer neither reply (the arena's votes)."""


def _chat(value: Any, field: str) -> list[Message]:
    """Text (one user turn) or a list of {role, content} messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise RowError(WRONG_TYPE, field, f"expected text or messages, got {type(value).__name__}")
    turns = []
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("content"), str)):
            raise RowError(WRONG_TYPE, f"{field}[{i}]", "expected a {role, content} message")
        if m.get("role") not in _ROLES:
            raise RowError(WRONG_TYPE, f"{field}[{i}].role", f"unknown role {clip(m.get('role'))}")
        turns.append({"role": m["role"], "content": m["content"]})
    return turns


def _prompt_turns(value: Any, field: str) -> list[Message]:
    """A prompt (text or messages) as the windowed non-system turns, ending with a user turn."""
    turns = [t for t in _chat(value, field) if t["role"] != "system"]
    if not turns or turns[-1]["role"] != "user":
        raise RowError(BAD_TRANSCRIPT, field, "the prompt does not end with a user turn")
    return turns


def _reply(value: Any, field: str, prompt: list[Message] | None = None) -> str:
    """A reply as text, one assistant message, or the whole conversation: ``prompt`` then one
    assistant message (HuggingFaceH4/ultrafeedback_binarized's ``chosen``/``rejected``)."""
    if isinstance(value, str):
        return value
    turns = _chat(value, field)
    if prompt is not None and any(t["role"] == "user" for t in turns[:-1]):
        said = [t for t in turns[:-1] if t["role"] != "system"]
        if said != prompt:
            raise RowError(BAD_TRANSCRIPT, field, "the conversation does not start with the prompt")
        turns = turns[-1:]
    if len(turns) != 1 or turns[0]["role"] != "assistant":
        raise RowError(WRONG_TYPE, field, "expected text or exactly one assistant message")
    return turns[0]["content"]


def _implicit_prompt(row: Mapping[str, Any]) -> tuple[list[Message], str, str]:
    """TRL's implicit-prompt pair: two conversations that share every turn but the last."""
    convs = {}
    for name in ("chosen", "rejected"):
        value = require(row, name, list)
        turns = [t for t in _chat(value, name) if t["role"] != "system"]
        if len(turns) < 2 or turns[-1]["role"] != "assistant":
            raise RowError(
                BAD_TRANSCRIPT, name, "expected a conversation ending with an assistant turn"
            )
        convs[name] = turns
    prompt = convs["chosen"][:-1]
    if prompt != convs["rejected"][:-1]:
        raise RowError(
            BAD_TRANSCRIPT, "rejected", "chosen and rejected differ before the final reply"
        )
    if prompt[-1]["role"] != "user":
        raise RowError(BAD_TRANSCRIPT, "chosen", "the shared prompt does not end with a user turn")
    return prompt, convs["chosen"][-1]["content"], convs["rejected"][-1]["content"]


_CONVERSATION_COPIES = ("messages",)
"""Keys that repeat the row's own conversation (H4's ``messages`` = prompt + chosen): not meta."""


def _extra_meta(row: Mapping[str, Any], used: Iterable[str], origin: Origin) -> dict[str, Any]:
    """Every key of ``row`` a parser did not use, kept in ``meta`` (with the origin)."""
    skip = {"id", *used, *_CONVERSATION_COPIES}
    return {**{k: v for k, v in row.items() if k not in skip}, "origin": str(origin)}


def _row_key(row: Mapping[str, Any], *content: Any) -> str:
    """The row's own ``id`` when it has one, else a hash of its content."""
    row_id = row.get("id")
    return str(row_id) if isinstance(row_id, (str, int)) else content_key(*content)


def parse_preference(row: Mapping[str, Any], origin: Origin, *, max_turns: int) -> list[Example]:
    """One preference row: explicit or implicit prompt, standard or conversational (module doc)."""
    label = row.get("label")
    if label in NO_PREFERENCE_LABELS:
        raise RowError(NO_PREFERENCE, "label", f"{label!r}: neither reply preferred, not a pair")
    if row.get("prompt") is None and isinstance(row.get("chosen"), list):
        turns, chosen, rejected = _implicit_prompt(row)
    else:
        turns = _prompt_turns(require(row, "prompt", object), "prompt")
        chosen = _reply(require(row, "chosen", object), "chosen", turns)
        rejected = _reply(require(row, "rejected", object), "rejected", turns)
    prompt = window(turns, max_turns)
    return [
        Example(
            id=f"pref-{_row_key(row, prompt, chosen, rejected)}",
            group=f"pref-{content_key(prompt)}",  # pairs that share a prompt share a split
            prompt=prompt,
            reference=chosen,
            origin=origin,
            meta=_extra_meta(row, ("prompt", "chosen", "rejected"), origin),
            chosen=chosen,
            rejected=rejected,
        )
    ]


def parse_prompt_only(row: Mapping[str, Any], origin: Origin, *, max_turns: int) -> list[Example]:
    """TRL's prompt-only row: a prompt and no reference."""
    prompt = window(_prompt_turns(require(row, "prompt", object), "prompt"), max_turns)
    key = content_key(prompt)
    return [
        Example(
            id=f"prompt-{_row_key(row, prompt)}",
            group=f"prompt-{key}",
            prompt=prompt,
            reference=None,
            origin=origin,
            meta=_extra_meta(row, ("prompt",), origin),
        )
    ]


def parse_prompt_completion(
    row: Mapping[str, Any], origin: Origin, *, max_turns: int
) -> list[Example]:
    """TRL's prompt-completion row: reference = the completion."""
    turns = _prompt_turns(require(row, "prompt", object), "prompt")
    completion = _reply(require(row, "completion", object), "completion", turns)
    prompt = window(turns, max_turns)
    return [
        Example(
            id=f"pc-{_row_key(row, prompt, completion)}",
            group=f"pc-{content_key(prompt)}",
            prompt=prompt,
            reference=completion,
            origin=origin,
            meta=_extra_meta(row, ("prompt", "completion"), origin),
        )
    ]


def parse_messages(row: Mapping[str, Any], origin: Origin, *, max_turns: int) -> list[Example]:
    """TRL's conversational row: reference = the last assistant turn, prompt = the turns before."""
    turns = [t for t in _chat(require(row, "messages", list), "messages") if t["role"] != "system"]
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=-1)
    if last < 0:
        raise RowError(BAD_TRANSCRIPT, "messages", "no assistant turn to use as the reference")
    if last == 0 or turns[last - 1]["role"] != "user":
        raise RowError(
            BAD_TRANSCRIPT, "messages", "the last assistant turn does not answer a user turn"
        )
    prompt, reference = window(turns[:last], max_turns), turns[last]["content"]
    return [
        Example(
            id=f"msg-{_row_key(row, prompt, reference)}",
            group=f"msg-{content_key(prompt)}",
            prompt=prompt,
            reference=reference,
            origin=origin,
            meta=_extra_meta(row, ("messages",), origin),
        )
    ]


# ---------------------------------------------------------------------------------- chitchat


def parse_chitchat(row: Mapping[str, Any], origin: Origin, *, max_turns: int) -> list[Example]:
    """One chitchat conversation -> one example per turn after the first."""
    conv_id = require(row, "id", str)
    groups = require(row, "messages", list)
    raw_turns: list[tuple[str, str]] = []
    for j, group in enumerate(groups):
        if not isinstance(group, list):
            raise RowError(
                WRONG_TYPE, f"messages[{j}]", f"expected a list, got {type(group).__name__}"
            )
        for k, utt in enumerate(group):
            if not isinstance(utt, dict):
                raise RowError(WRONG_TYPE, f"messages[{j}][{k}]", "expected an object")
            text = require(utt, "text", str, where=f"messages[{j}][{k}].")
            sender = require(utt, "sender", str, where=f"messages[{j}][{k}].")
            raw_turns.append((sender, text.strip()))
    turns = merge_turns(raw_turns, "\n")
    examples = []
    for t in range(1, len(turns)):
        speaker = turns[t][0]
        # The speaker of the target turn plays the assistant, so the policy learns both sides.
        # Only the turns the window can keep: a 500-turn chat would otherwise cost O(n^2).
        context = [
            {"role": "assistant" if s == speaker else "user", "content": text}
            for s, text in turns[max(0, t - max_turns) : t]
        ]
        examples.append(
            Example(
                id=f"chitchat-{conv_id}-{t}",
                group=f"chitchat-{conv_id}",
                prompt=window(context, max_turns),
                reference=turns[t][1],
                origin=origin,
                meta={"conversation_id": conv_id, "turn": t, "origin": str(origin)},
            )
        )
    return examples


# ---------------------------------------------------------------------------------- api

Parser = Callable[[Mapping[str, Any], Origin], list[Example]]
"""One record -> its examples (a RowError for a bad one)."""
ParserFactory = Callable[[DataConfig], Parser]
"""Builds a task format's parser from ``data`` (binding ``max_turns``, loading the catalogue or
the id maps it names): what a task declares in :attr:`rlhf_lab.tasks.base.Task.parsers`."""

GENERIC_PARSERS: dict[str, Callable[..., list[Example]]] = {
    "hh": parse_hh,
    "preference": parse_preference,
    "prompt_only": parse_prompt_only,
    "prompt_completion": parse_prompt_completion,
    "messages": parse_messages,
    "chitchat": parse_chitchat,
}
"""The formats of no one task, by ``data.format``; the rest are in :data:`TASK_FORMATS`' tasks."""


def make_parser(
    fmt: str, cfg: DataConfig, task_parsers: Mapping[str, ParserFactory] | None = None
) -> Parser:
    """The parser for ``fmt`` with the config's options bound.

    A task's formats come from ``task_parsers`` (``rlhf_lab.tasks.registry.FORMAT_PARSERS``):
    ``data`` sits below the tasks in the layers contract, so the caller passes them in.
    """
    if fmt in GENERIC_PARSERS:
        return partial(GENERIC_PARSERS[fmt], max_turns=cfg.max_turns)
    if task_parsers is None or fmt not in task_parsers:
        raise ValueError(
            f"format {fmt!r} is a task's: pass task_parsers=rlhf_lab.tasks.registry.FORMAT_PARSERS"
        )
    return task_parsers[fmt](cfg)
