"""TRL's standard dataset formats: preference (explicit/implicit prompt, standard/conversational),
prompt-only, prompt-completion and messages; from .jsonl/.jsonl.gz/.parquet/.json and the hub."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlhf_lab import models
from rlhf_lab.cli import app
from rlhf_lab.config import DataConfig, TaskConfig
from rlhf_lab.data.pairs import resolve_pairs
from rlhf_lab.data.prepare import load_examples, open_source
from rlhf_lab.data.readers import read_source
from rlhf_lab.data.sources import (
    parse_messages,
    parse_preference,
    parse_prompt_completion,
    parse_prompt_only,
    resolve_format,
)
from rlhf_lab.data.validate import BAD_TRANSCRIPT, MISSING_FIELD, WRONG_TYPE, Origin, RowError
from rlhf_lab.errors import ConfigError
from rlhf_lab.io import read_jsonl

ORIGIN = Origin("rows.jsonl", 1, "rows")
SYS = {"role": "system", "content": "Be brief."}


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


STANDARD = {"prompt": "Sky colour?", "chosen": "Blue.", "rejected": "Green."}
CONVERSATIONAL = {"prompt": [SYS, u("Sky colour?")], "chosen": [a("Blue.")], "rejected": [a("No.")]}
IMPLICIT = {
    "chosen": [u("Hi"), a("Hello"), u("Sky colour?"), a("Blue.")],
    "rejected": [u("Hi"), a("Hello"), u("Sky colour?"), a("Green.")],
    "score_chosen": 8.0,
}
H4 = {  # HuggingFaceH4/ultrafeedback_binarized: text prompt, whole conversations as replies
    "prompt": "Sky colour?",
    "prompt_id": "p1",
    "chosen": [u("Sky colour?"), a("Blue.")],
    "rejected": [u("Sky colour?"), a("Green.")],
    "messages": [u("Sky colour?"), a("Blue.")],
}
PROMPT_ONLY = {"prompt": [u("Tell me a joke.")]}
PROMPT_COMPLETION = {"prompt": "2+2?", "completion": "4."}
MESSAGES = {"messages": [SYS, u("Hi"), a("Hello!"), u("Sky colour?"), a("Blue."), u("Thanks")]}


def test_preference_forms_give_the_same_pair():
    [std] = parse_preference(STANDARD, ORIGIN, max_turns=6)
    [conv] = parse_preference(CONVERSATIONAL, ORIGIN, max_turns=6)
    [h4] = parse_preference(H4, ORIGIN, max_turns=6)
    for ex in (std, conv, h4):
        assert ex.prompt == [u("Sky colour?")] and ex.chosen == "Blue." and ex.reference == "Blue."
    assert (std.rejected, conv.rejected, h4.rejected) == ("Green.", "No.", "Green.")
    # H4's messages repeat the conversation: not kept; its other keys are
    assert h4.meta == {"prompt_id": "p1", "origin": "rows.jsonl:1"}


def test_implicit_prompt_is_the_shared_prefix():
    [ex] = parse_preference(IMPLICIT, ORIGIN, max_turns=6)
    assert ex.prompt == [u("Hi"), a("Hello"), u("Sky colour?")]
    assert (ex.chosen, ex.rejected) == ("Blue.", "Green.")
    assert ex.meta["score_chosen"] == 8.0
    [short] = parse_preference(IMPLICIT, ORIGIN, max_turns=1)
    assert short.prompt == [u("Sky colour?")]


def test_prompt_only_completion_and_messages():
    [po] = parse_prompt_only(PROMPT_ONLY, ORIGIN, max_turns=6)
    assert po.prompt == [u("Tell me a joke.")] and po.reference is None and po.chosen is None
    [pc] = parse_prompt_completion(PROMPT_COMPLETION, ORIGIN, max_turns=6)
    assert pc.prompt == [u("2+2?")] and pc.reference == "4."
    [msg] = parse_messages(MESSAGES, ORIGIN, max_turns=6)
    # the last assistant turn is the reference; the trailing user turn is not part of it
    assert msg.prompt == [u("Hi"), a("Hello!"), u("Sky colour?")] and msg.reference == "Blue."


@pytest.mark.parametrize(
    ("parse", "row", "reason", "field"),
    [
        (
            parse_preference,
            {**IMPLICIT, "rejected": [u("Yo"), a("Green.")]},
            BAD_TRANSCRIPT,
            "rejected",
        ),
        (parse_preference, {"chosen": [u("Hi")], "rejected": [u("Hi")]}, BAD_TRANSCRIPT, "chosen"),
        (parse_preference, {**H4, "chosen": [u("Other?"), a("Blue.")]}, BAD_TRANSCRIPT, "chosen"),
        (parse_prompt_only, {"prompt": [u("q"), a("x")]}, BAD_TRANSCRIPT, "prompt"),
        (parse_prompt_only, {"prompt": None}, MISSING_FIELD, "prompt"),
        (parse_prompt_completion, {"prompt": "q", "completion": 3}, WRONG_TYPE, "completion"),
        (parse_prompt_completion, {"prompt": "q"}, MISSING_FIELD, "completion"),
        (parse_messages, {"messages": [u("q")]}, BAD_TRANSCRIPT, "messages"),
        (parse_messages, {"messages": [a("x"), u("q")]}, BAD_TRANSCRIPT, "messages"),
        (parse_messages, {"messages": "hi"}, WRONG_TYPE, "messages"),
    ],
)
def test_bad_rows_name_their_field_and_reason(parse, row, reason, field):
    with pytest.raises(RowError) as err:
        parse(row, ORIGIN, max_turns=6)
    assert (err.value.reason, err.value.field) == (reason, field)


@pytest.mark.parametrize(
    ("first", "fmt"),
    [
        (STANDARD, "preference"),
        (CONVERSATIONAL, "preference"),
        (IMPLICIT, "preference"),
        (H4, "preference"),
        ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "x"}, "hh"),
        (PROMPT_ONLY, "prompt_only"),
        (PROMPT_COMPLETION, "prompt_completion"),
        (MESSAGES, "messages"),
    ],
)
def test_auto_format_from_the_first_row(first, fmt):
    assert resolve_format(DataConfig(source="x.jsonl"), TaskConfig(), first) == fmt


def test_auto_pairs_per_format():
    assert resolve_pairs("auto", "preference") == "human"
    assert resolve_pairs("auto", "prompt_only") == "judge"
    assert resolve_pairs("auto", "messages") == "reference_vs_sample"
    with pytest.raises(ConfigError, match="'prompt_only' has none"):
        resolve_pairs("reference_vs_sample", "prompt_only")


def write_rows(path: Path, rows: list[dict]) -> Path:
    """``rows`` in the file type ``path``'s name says (.jsonl, .jsonl.gz, .parquet, .json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.name.endswith(".json"):
        path.write_text(json.dumps(rows))
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
        path.write_bytes(
            gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode()
        )
    return path


@pytest.mark.parametrize("name", ["p.jsonl", "p.jsonl.gz", "p.parquet", "p.json"])
def test_every_file_type_reads_the_same_examples(tmp_path, name):
    rows = [{**IMPLICIT, "chosen": [*IMPLICIT["chosen"][:-1], a(f"Blue {i}.")]} for i in range(3)]
    cfg = DataConfig(source=str(write_rows(tmp_path / name, rows)))
    source = open_source(cfg, TaskConfig())
    loaded = load_examples(source, cfg)
    assert source.format == "preference" and not loaded.rejected
    assert [ex.chosen for ex in loaded.examples] == ["Blue 0.", "Blue 1.", "Blue 2."]
    assert [ex.origin.line for ex in loaded.examples] == [1, 2, 3]


def test_json_array_element_that_is_not_an_object_is_rejected_with_its_number(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps([STANDARD, [1, 2]]))
    recs = list(read_source(DataConfig(source=str(tmp_path / "p.json"))))
    assert recs[0].value == STANDARD
    assert (recs[1].origin.line, recs[1].error.reason) == (2, WRONG_TYPE)


def test_hub_id_with_split_goes_through_load_dataset(monkeypatch):
    """The hub path with datasets.load_dataset replaced: never the network in tests."""
    import datasets

    calls = []

    def fake_load(source, data_dir=None, split=None):
        calls.append((source, data_dir, split))
        grass = [u("Grass colour?")]
        return [
            H4,
            {
                **H4,
                "prompt": "Grass colour?",
                "chosen": [*grass, a("G.")],
                "rejected": [*grass, a("R.")],
            },
        ]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    cfg = DataConfig(source="HuggingFaceH4/ultrafeedback_binarized", split="train_prefs")
    source = open_source(cfg, TaskConfig())
    loaded = load_examples(source, cfg)
    assert calls == [("HuggingFaceH4/ultrafeedback_binarized", None, "train_prefs")]
    assert source.format == "preference" and not loaded.rejected
    assert [str(ex.origin) for ex in loaded.examples] == [
        "HuggingFaceH4/ultrafeedback_binarized[train_prefs]:1",
        "HuggingFaceH4/ultrafeedback_binarized[train_prefs]:2",
    ]


# ------------------------------------------------------------------ end to end, the real CLI


def run(tmp_path: Path, data: dict) -> tuple[int, str, dict]:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": data, "task": {"name": "chat"}}))
    result = CliRunner().invoke(app, ["prepare_preference", "--params", str(params)])
    metrics_path = tmp_path / "metrics/full/prepare_preference.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return result.exit_code, result.output, metrics


def all_rows(tmp_path: Path, kind: str) -> list[dict]:
    return [
        r
        for s in ("train", "valid", "test")
        for r in read_jsonl(tmp_path / f"data/{kind}/{s}.jsonl")
    ]


def test_e2e_human_preference_file_keeps_labels(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no policy: human pairs never sample
    rows = [
        {"prompt": [u(f"q{i}?")], "chosen": [a(f"yes {i}")], "rejected": [a(f"no {i}")]}
        for i in range(10)
    ]
    rows += [
        {**IMPLICIT, "chosen": [u(f"i{i}?"), a("ok")], "rejected": [u(f"i{i}?"), a("ko")]}
        for i in range(10)
    ]
    rows.append({"prompt": "q", "chosen": [u("x"), a("y")], "rejected": "z"})  # bad: prefix
    write_rows(tmp_path / "raw/prefs.jsonl", rows)
    code, out, metrics = run(tmp_path, {"source": "raw/prefs.jsonl"})
    assert code == 0, out
    assert metrics["data/format"] == "preference" and metrics["data/pairs"] == "human"
    pref = all_rows(tmp_path, "preference")
    assert len(pref) == 20 and all(r["label_source"] == "human" for r in pref)
    assert {r["chosen"] for r in pref} == {f"yes {i}" for i in range(10)} | {"ok"}
    [bad] = read_jsonl(tmp_path / "data/invalid/prefs.jsonl")
    assert (bad["reason"], bad["field"], bad["line"]) == (BAD_TRANSCRIPT, "chosen", 21)


@pytest.fixture
def workdir(tiny_models, tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    models.materialise_policy(
        str(tiny_models["policy"]), tmp_path / "models/base/policy", "float32", None
    )
    return tmp_path


SAMPLING = {"sample_max_new_tokens": 3, "sample_batch_size": 8, "unfinished_samples": "keep"}


@pytest.mark.parametrize(
    ("fmt", "row", "pairs"),
    [
        ("prompt_only", lambda i: {"prompt": f"Question {i}?"}, "judge"),
        (
            "prompt_completion",
            lambda i: {"prompt": f"Q{i}?", "completion": f"A{i}."},
            "reference_vs_sample",
        ),
        ("messages", lambda i: {"messages": [u(f"Q{i}?"), a(f"A{i}.")]}, "reference_vs_sample"),
    ],
)
def test_e2e_unpaired_formats_through_the_cli(workdir, fmt, row, pairs):
    write_rows(workdir / "raw/rows.json", [row(i) for i in range(8)])
    code, out, metrics = run(workdir, {"source": "raw/rows.json", **SAMPLING})
    assert code == 0, out
    assert metrics["data/format"] == fmt and metrics["data/pairs"] == pairs
    prompts = all_rows(workdir, "prompts")
    assert len(prompts) == 8 and all(r["prompt"][-1]["role"] == "user" for r in prompts)
    expected_ref = {
        "prompt_only": lambda i: None,
        "prompt_completion": lambda i: f"A{i}.",
        "messages": lambda i: f"A{i}.",
    }[fmt]
    assert sorted(map(str, (r["reference"] for r in prompts))) == sorted(
        str(expected_ref(i)) for i in range(8)
    )
    pref = all_rows(workdir, "preference")
    if pairs == "judge":
        assert pref and all(r["chosen"] is None and len(r["candidates"]) >= 2 for r in pref)
    else:
        assert pref and all(r["chosen"].startswith("A") for r in pref)


def test_every_format_is_a_params_choice_and_has_a_parser():
    from typing import get_args

    from rlhf_lab.data.sources import FORMATS, make_parser
    from rlhf_lab.tasks.registry import FORMAT_PARSERS

    choices = set(get_args(DataConfig.model_fields["format"].annotation))
    assert choices == {"auto", *FORMATS}
    for fmt in FORMATS:
        if fmt not in ("redial", "crs_turns"):  # those two load their catalogues / id maps
            assert callable(make_parser(fmt, DataConfig(), FORMAT_PARSERS))
