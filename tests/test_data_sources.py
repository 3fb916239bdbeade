"""Loaders on small fixture files written here (never copies of public data)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_lab.config import DataConfig, TaskConfig, parse_params
from rlhf_lab.data import prepare
from rlhf_lab.data.readers import read_chitchat, read_jsonl, read_parquet
from rlhf_lab.data.sources import make_parser, parse_chitchat, parse_hh, resolve_format, window
from rlhf_lab.data.validate import BAD_TRANSCRIPT, Origin, RowError
from rlhf_lab.errors import ConfigError, DataError
from rlhf_lab.tasks.crs.formats import parse_redial
from rlhf_lab.tasks.docstring.formats import parse_docstring, strip_docstring
from rlhf_lab.tasks.registry import FORMAT_PARSERS

ORIGIN = Origin("fixture.jsonl", 1, "fixture")


def hh_row(turns: list[str], chosen: str, rejected: str) -> dict[str, str]:
    """An HH-RLHF row: ``turns`` alternate Human/Assistant starting with Human."""
    prefix = "".join(
        f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns)
    )
    return {
        "chosen": f"{prefix}\n\nAssistant: {chosen}",
        "rejected": f"{prefix}\n\nAssistant: {rejected}",
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def data_cfg(**kw) -> DataConfig:
    return parse_params({"data": kw}).data


# A ReDial dialogue in the raw schema (made up): 1 = seeker, 2 = recommender.
REDIAL = {
    "conversationId": "77",
    "initiatorWorkerId": 1,
    "respondentWorkerId": 2,
    "movieMentions": {"111": "Alien  (1979)", "222": "Up (2009)", "333": "Heat (1995)"},
    "respondentQuestions": {"111": {"suggested": 1}, "222": {"suggested": 0}},
    "initiatorQuestions": {"111": {"suggested": 1}, "222": {"suggested": 0}},
    "messages": [
        {"text": "hi", "senderWorkerId": 1, "messageId": 1},
        {"text": "hello! what do you like?", "senderWorkerId": 2, "messageId": 2},
        {"text": "I loved @222", "senderWorkerId": 1, "messageId": 3},
        {"text": "something scary?", "senderWorkerId": 1, "messageId": 4},
        {"text": "Have you seen @111? Like @222 it is great", "senderWorkerId": 2, "messageId": 5},
        {"text": "no, thanks!", "senderWorkerId": 1, "messageId": 6},
        {"text": "Try @333 or @444", "senderWorkerId": 2, "messageId": 7},
    ],
}


def test_hh_prompt_is_shared_prefix_and_replies_are_final_turns():
    row = hh_row(["hi", "hello, how can I help?", "name a fruit"], "An apple.", "No.")
    (ex,) = parse_hh(row, ORIGIN, max_turns=6)
    assert ex.prompt == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello, how can I help?"},
        {"role": "user", "content": "name a fruit"},
    ]
    assert (ex.chosen, ex.rejected, ex.reference) == ("An apple.", "No.", "An apple.")
    assert ex.id.startswith("hh-") and ex.group.startswith("hh-")
    # same prompt, other replies: another id, same split group
    (other,) = parse_hh(
        hh_row(["hi", "hello, how can I help?", "name a fruit"], "Pear.", "?"), ORIGIN, max_turns=6
    )
    assert other.id != ex.id and other.group == ex.group


def test_hh_window_keeps_recent_turns_and_starts_with_user():
    row = hh_row(["q1", "a1", "q2", "a2", "q3"], "yes", "no")
    (ex,) = parse_hh(row, ORIGIN, max_turns=4)
    # the last 4 are a1 q2 a2 q3; a leading assistant turn is dropped
    assert [t["content"] for t in ex.prompt] == ["q2", "a2", "q3"]
    assert window([{"role": "user", "content": "x"}], 1) == [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("row", "field", "detail"),
    [
        ({"chosen": "just text", "rejected": "\n\nHuman: a\n\nAssistant: b"}, "chosen", "marker"),
        (
            hh_row(["a"], "b", "c") | {"rejected": "\n\nHuman: z\n\nAssistant: c"},
            "rejected",
            "differ",
        ),
        ({"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a"}, "chosen", "Assistant turn"),
        ({"chosen": "\n\nAssistant: a", "rejected": "\n\nAssistant: b"}, "chosen", "no Human"),
    ],
)
def test_hh_bad_transcripts(row, field, detail):
    with pytest.raises(RowError) as err:
        parse_hh(row, ORIGIN, max_turns=6)
    assert err.value.reason == BAD_TRANSCRIPT and err.value.field == field
    assert detail in err.value.detail


def test_redial_one_example_per_recommender_turn_with_names_and_gold():
    examples = parse_redial(REDIAL, ORIGIN, max_turns=6)
    assert [ex.meta["turn"] for ex in examples] == [1, 3, 5]
    first, second, third = examples
    assert first.prompt == [{"role": "user", "content": "hi"}]
    assert first.reference == "hello! what do you like?" and first.meta["gold_movies"] == []
    # consecutive seeker messages merge; @ids become names (double spaces cleaned)
    assert second.prompt[-1] == {"role": "user", "content": "I loved Up (2009)\nsomething scary?"}
    assert second.reference == "Have you seen Alien (1979)? Like Up (2009) it is great"
    # Up was brought up by the seeker (suggested = 0): not a recommendation
    assert second.meta["gold_movies"] == ["111"]
    # 444 is unknown: its @id markup stays; movies without answers count as suggested
    assert third.reference == "Try Heat (1995) or @444"
    assert third.meta["gold_movies"] == ["333", "444"]
    assert third.meta["movies"] == {"111": "Alien (1979)", "222": "Up (2009)", "333": "Heat (1995)"}
    assert [t["role"] for t in third.prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert {ex.group for ex in examples} == {"redial-77"}
    assert third.id == "redial-77-5"


def test_redial_hub_schema_gives_the_same_examples():
    def as_list(d):
        return [
            {"movieId": k, **(v if isinstance(v, dict) else {"movieName": v})} for k, v in d.items()
        ]

    hub = dict(REDIAL, conversationId=77)
    hub["movieMentions"] = as_list(REDIAL["movieMentions"])
    hub["respondentQuestions"] = as_list(REDIAL["respondentQuestions"])
    hub["initiatorQuestions"] = as_list(REDIAL["initiatorQuestions"])
    raw = parse_redial(REDIAL, ORIGIN, max_turns=6)
    via_hub = parse_redial(hub, ORIGIN, max_turns=6)
    assert [e.to_prompt_row() for e in raw] == [e.to_prompt_row() for e in via_hub]


def test_redial_catalogue_names_unknown_ids(tmp_path):
    csv = tmp_path / "movies.csv"
    csv.write_text("movieId,movieName,nbMentions\n444,Se7en  (1995),3\n")
    cfg = data_cfg(source="x.jsonl", format="redial", catalogue=str(csv))
    parse = make_parser("redial", cfg, FORMAT_PARSERS)
    third = parse(REDIAL, ORIGIN)[-1]
    assert third.reference == "Try Heat (1995) or Se7en (1995)"
    assert third.meta["movies"]["444"] == "Se7en (1995)"


@pytest.mark.parametrize("fmt", ["redial", "crs_turns", "docstring", "humaneval"])
def test_task_formats_need_the_task_parsers_passed_in(fmt):
    # data never imports a task (the layers contract): the caller passes the tasks' parsers in
    with pytest.raises(ValueError, match=f"format '{fmt}' is a task's: pass task_parsers="):
        make_parser(fmt, data_cfg(source="x.jsonl", format=fmt))


def test_docstring_rows_and_codesearchnet_columns():
    (ex,) = parse_docstring(
        {"id": "v-1", "code": "def add(a, b):\n    return a + b", "docstring": " Add two. "},
        ORIGIN,
        max_turns=6,
    )
    assert ex.reference == "Add two."
    assert ex.meta["code"] == "def add(a, b):\n    return a + b" and ex.meta["source_id"] == "v-1"
    assert ex.prompt[0]["role"] == "user" and "```python\ndef add(a, b):" in ex.prompt[0]["content"]
    # CodeSearchNet: the function source still holds its docstring; it must not leak
    csn = {
        "func_code_string": 'def f(x):\n    """Double x."""\n    return 2 * x\n',
        "func_documentation_string": "Double x.",
        "language": "python",
        "url": "https://example.com/f",
    }
    (ex,) = parse_docstring(csn, ORIGIN, max_turns=6)
    assert ex.meta["code"] == "def f(x):\n    return 2 * x"
    assert "Double" not in ex.prompt[0]["content"] and ex.reference == "Double x."
    assert ex.meta["source_id"] == "https://example.com/f"


def test_strip_docstring_leaves_unparseable_and_one_line_functions():
    py2 = 'def f(x):\n    """Doc."""\n    print x\n'
    assert strip_docstring(py2) == py2
    only_doc = 'def f():\n    """Doc."""\n'
    assert strip_docstring(only_doc) == only_doc
    multi = 'def f():\n    """Doc\n    more."""\n    return 1\n'
    assert strip_docstring(multi) == "def f():\n    return 1\n"


def test_chitchat_target_speaker_is_the_assistant(tmp_path):
    conv = {
        "messages": [
            [{"text": "hey", "sender": "A"}, {"text": "how are you?", "sender": "A"}],
            [{"text": "good, you?", "sender": "B"}],
            [{"text": "fine", "sender": "A"}],
        ]
    }
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"c1": conv}))
    (rec,) = list(read_chitchat(path))
    examples = parse_chitchat(rec.value, rec.origin, max_turns=6)
    assert [ex.id for ex in examples] == ["chitchat-c1-1", "chitchat-c1-2"]
    assert examples[0].prompt == [{"role": "user", "content": "hey\nhow are you?"}]
    assert examples[0].reference == "good, you?"
    # turn 2 is A's: A's earlier turn plays the assistant, and that leading assistant turn is
    # dropped so the prompt starts with the user
    assert examples[1].prompt == [{"role": "user", "content": "good, you?"}]
    assert examples[1].reference == "fine"


def test_jsonl_gz_parquet_and_directory_sources(tmp_path):
    rows = [hh_row(["q"], f"yes {i}", f"no {i}") for i in range(3)]
    (tmp_path / "d").mkdir()
    gz = write_jsonl(tmp_path / "d" / "a.jsonl.gz", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d" / "b.parquet")
    assert [r.value for r in read_jsonl(gz)] == rows
    parquet = list(read_parquet(tmp_path / "d" / "b.parquet"))
    assert [r.value for r in parquet] == rows and parquet[2].origin.line == 3
    # a directory reads every data file in name order; each file is its own split label
    cfg = data_cfg(source=str(tmp_path / "d"), max_examples=0)
    loaded = prepare.load_examples(prepare.open_source(cfg, TaskConfig()), cfg)
    assert loaded.format == "hh" and loaded.rows_read == 6
    assert loaded.split_labels == ["a", "b"]
    # the same pairs twice: the second file's rows are duplicates
    assert len(loaded.examples) == 3 and {r.reason for r in loaded.rejected} == {"duplicate"}


def test_missing_local_file_is_one_line():
    cfg = data_cfg(source="./nope/data.jsonl")
    with pytest.raises(DataError, match=r"data.source './nope/data.jsonl': file not found"):
        prepare.open_source(cfg, TaskConfig())


@pytest.mark.parametrize(
    ("source", "first", "task", "expected"),
    [
        ("chitchat", None, "chat", "chitchat"),
        ("Anthropic/hh-rlhf", None, "chat", "hh"),
        ("community-datasets/re_dial", None, "chat", "redial"),
        ("data/pairs.jsonl", {"chosen": "a", "rejected": "b"}, "chat", "hh"),
        ("data/d.jsonl", {"messages": [], "movieMentions": {}}, "chat", "redial"),
        (
            "data/f.jsonl",
            {"func_code_string": "", "func_documentation_string": ""},
            "chat",
            "docstring",
        ),
        ("data/x.jsonl", {"text": "?"}, "crs", "redial"),
        ("data/x.jsonl", {"text": "?"}, "docstring", "docstring"),
    ],
)
def test_format_inference(source, first, task, expected):
    cfg = data_cfg(source=source)
    assert resolve_format(cfg, TaskConfig(name=task), first) == expected


def test_format_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"data\.format: cannot infer"):
        resolve_format(data_cfg(source="x.jsonl"), TaskConfig(), {"text": "?"})
    with pytest.raises(ConfigError, match=r"data\.format 'hh' does not fit"):
        resolve_format(data_cfg(source="chitchat", format="hh"), TaskConfig(), None)
    with pytest.raises(ConfigError, match=r"data\.format 'chitchat' reads the embedded chats"):
        resolve_format(data_cfg(source="x.jsonl", format="chitchat"), TaskConfig(), None)


def test_hub_ids_go_through_datasets_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, data_dir=None, split=None):
        calls.append((path, data_dir, split))
        if path == "nobody/missing":
            raise FileNotFoundError("Dataset 'nobody/missing' doesn't exist on the Hub\nmore")
        return [hh_row(["q"], "yes", "no"), hh_row(["q2"], "yes", "no")]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = data_cfg(source="Anthropic/hh-rlhf", data_dir="helpful-base", split="test")
    loaded = prepare.load_examples(prepare.open_source(cfg, TaskConfig()), cfg)
    assert calls == [("Anthropic/hh-rlhf", "helpful-base", "test")]
    assert loaded.format == "hh" and len(loaded.examples) == 2
    assert str(loaded.examples[1].origin) == "Anthropic/hh-rlhf/helpful-base[test]:2"
    assert loaded.split_labels == ["test"]
    with pytest.raises(DataError) as err:
        prepare.open_source(data_cfg(source="nobody/missing"), TaskConfig())
    assert str(err.value).endswith(
        "loading it as a hub dataset failed: Dataset 'nobody/missing' doesn't exist on the Hub"
    )
