"""Bad input: one fixture line per rejection reason, dropped with reason, field and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf_lab.config import TaskConfig, parse_params
from rlhf_lab.data import prepare
from rlhf_lab.data.validate import REASONS, Deduper, RowError, check_pair, text_key
from rlhf_lab.errors import DataError
from rlhf_lab.tasks.registry import FORMAT_PARSERS


def hh(prompt: str, chosen: str, rejected: str) -> str:
    return json.dumps(
        {
            "chosen": f"\n\nHuman: {prompt}\n\nAssistant: {chosen}",
            "rejected": f"\n\nHuman: {prompt}\n\nAssistant: {rejected}",
        }
    )


# (line content, expected reason, expected field); None = the line is valid
BAD_LINES: list[tuple[bytes, str | None, str | None]] = [
    (hh("hi", "hello!", "go away").encode(), None, None),
    (b'{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", ', "bad_json", None),
    (b'{"chosen": "caf\xe9"}', "bad_encoding", None),
    (json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b"}).encode(), "missing_field", "rejected"),
    (json.dumps({"chosen": ["x"], "rejected": "y"}).encode(), "wrong_type", "chosen"),
    (b"[1, 2, 3]", "wrong_type", None),
    (hh("question", "   ", "an answer").encode(), "empty_text", "chosen"),
    (hh("", "an answer", "another").encode(), "empty_text", "prompt[0]"),
    (hh("what?", "same reply", "same reply").encode(), "chosen_equals_rejected", "rejected"),
    (hh("long?", "x" * 300, "short").encode(), "too_long", "chosen"),
    (hh("hi", "hello!", "go away").encode(), "duplicate", None),
    (
        json.dumps({"chosen": "no markers", "rejected": "at all"}).encode(),
        "bad_transcript",
        "chosen",
    ),
    (
        hh("lone \\ud800 surrogate", "a", "b").encode().replace(b"\\\\ud800", b"\\ud800"),
        "bad_encoding",
        "prompt[0]",
    ),
    (b'{"chosen": "a", "rejected": "b", "chosen": "c"}', "duplicate_key", None),
    (hh("fine", "ok", "not ok").encode(), None, None),
]


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n\n")  # a trailing blank line is not a row
    return path


def load(path: Path, **data):
    cfg = parse_params({"data": {"source": str(path), "max_chars": 200, **data}}).data
    return prepare.load_examples(prepare.open_source(cfg, TaskConfig()), cfg, FORMAT_PARSERS), cfg


def test_every_rejection_reason_is_reported_with_field_and_line(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [line for line, _, _ in BAD_LINES])
    loaded, _ = load(path, max_invalid_fraction=1.0)
    expected = [(i + 1, r, f) for i, (_, r, f) in enumerate(BAD_LINES) if r is not None]
    got = [(r.origin.line, r.reason, r.field) for r in loaded.rejected]
    assert got == expected
    # the fixture covers every reason but the docstring-only one (tests/faults/ has it) and the
    # crs_turns and humaneval ones (tests/test_data_crs_turns.py, test_data_humaneval.py)
    others = {"code_too_nested", "unknown_id", "bad_code"}
    assert {r for _, r, _ in expected} == set(REASONS) - others
    assert [ex.origin.line for ex in loaded.examples] == [1, len(BAD_LINES)]
    assert loaded.rows_read == loaded.rows_seen == len(BAD_LINES)
    assert loaded.invalid_fraction == pytest.approx(13 / 15)
    # each dropped row is self-describing: raw text of unparseable lines, the row otherwise
    rows = {r.origin.line: r.to_json() for r in loaded.rejected}
    assert rows[2]["raw"].startswith('{"chosen"') and rows[2]["reason"] == "bad_json"
    assert rows[3]["raw"] == '{"chosen": "caf\ufffd"}' and "0xe9" in rows[3]["detail"]
    assert rows[4]["raw"] == json.loads(BAD_LINES[3][0])
    assert rows[10]["detail"] == "300 characters > data.max_chars 200"
    assert rows[11]["detail"].startswith("same content as hh-")
    assert rows[11]["source"] == str(path) and rows[11]["id"].startswith("hh-")
    # a lone surrogate stays visible in the invalid file, which must still encode as UTF-8
    line = json.dumps(rows[13], ensure_ascii=False)
    line.encode("utf-8")
    assert "lone \\\\ud800 surrogate" in line


def test_too_many_invalid_rows_fail_with_one_line_naming_file_and_line(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [line for line, _, _ in BAD_LINES])
    loaded, cfg = load(path)
    with pytest.raises(DataError) as err:
        prepare.check_invalid_fraction(loaded, cfg, "data/invalid")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:2: bad_json: ")
    assert "13 of 15 rows (86.7%) are invalid, above data.max_invalid_fraction 0.2" in msg
    assert msg.endswith("every dropped row is in data/invalid/")
    # under the limit: no error
    ok, cfg = load(path, max_invalid_fraction=0.9)
    prepare.check_invalid_fraction(ok, cfg, "data/invalid")


def test_an_empty_source_fails(tmp_path):
    path = write_lines(tmp_path / "empty.jsonl", [])
    cfg = parse_params({"data": {"source": str(path), "format": "hh"}}).data
    with pytest.raises(DataError, match=r"empty\.jsonl: the file holds only blank lines"):
        prepare.open_source(cfg, TaskConfig())


def test_redial_and_docstring_field_errors(tmp_path):
    dialogue = {
        "conversationId": "1",
        "respondentWorkerId": 2,
        "movieMentions": {},
        "messages": [{"text": "hi", "senderWorkerId": 1}, {"senderWorkerId": 2}],
    }
    wrong = dict(dialogue, respondentWorkerId="2", messages=[])
    path = tmp_path / "redial.jsonl"
    path.write_text(json.dumps(dialogue) + "\n" + json.dumps(wrong) + "\n")
    loaded, _ = load(path, max_invalid_fraction=1.0)
    got = [(r.reason, r.field, r.origin.line) for r in loaded.rejected]
    assert got == [
        ("missing_field", "messages[1].text", 1),
        ("wrong_type", "respondentWorkerId", 2),
    ]
    path = tmp_path / "docstring.jsonl"
    path.write_text(
        json.dumps({"code": "def f(): pass", "docstring": 3})
        + "\n"
        + json.dumps({"docstring": "Doc."})
        + "\n"
        + json.dumps({"code": "def g(): pass", "docstring": "  "})
        + "\n"
    )
    loaded, _ = load(path, max_invalid_fraction=1.0)
    got = [(r.reason, r.field) for r in loaded.rejected]
    assert got == [
        ("wrong_type", "docstring"),
        ("missing_field", "code"),
        ("empty_text", "reference"),
    ]


def test_check_pair_and_deduper():
    check_pair("good", "bad", 100)
    with pytest.raises(RowError, match="identical"):
        check_pair(" same", "same ", 100)
    seen = Deduper()
    key = text_key([{"role": "user", "content": "q"}], "a")
    seen.check("id-1", key)
    with pytest.raises(RowError, match="same content as id-1"):
        seen.check("id-2", key)
    with pytest.raises(RowError, match="id 'id-1' was already used"):
        seen.check("id-1", text_key([{"role": "user", "content": "q"}], "b"))
