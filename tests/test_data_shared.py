"""The loaders on the real public data in ../shared/data (first rows only; skips without it)."""

from __future__ import annotations

import itertools
import re

import pytest

from rlhf_lab.config import TaskConfig, parse_params
from rlhf_lab.data import prepare
from rlhf_lab.data.readers import read_jsonl
from rlhf_lab.tasks.registry import FORMAT_PARSERS

pytestmark = pytest.mark.shared_data
N_ROWS = 200


def load_head(path, n: int, **data):
    """Resolve the format like the stage does, but parse only the first ``n`` records."""
    cfg = parse_params({"data": {"source": str(path), "max_examples": 0, **data}}).data
    fmt = prepare.open_source(cfg, TaskConfig()).format
    records = itertools.islice(read_jsonl(path), n)
    return prepare.load_examples(prepare.Source(fmt, records), cfg, FORMAT_PARSERS)


def test_hh_helpful_base(shared_data):
    loaded = load_head(shared_data / "hh-rlhf/helpful-base/test.jsonl.gz", N_ROWS)
    assert loaded.format == "hh" and loaded.rows_read == N_ROWS
    assert len(loaded.examples) >= 0.95 * N_ROWS
    assert loaded.invalid_fraction < 0.05
    for ex in loaded.examples:
        assert ex.prompt[0]["role"] == "user" and ex.prompt[-1]["role"] == "user"
        roles = [t["role"] for t in ex.prompt]
        assert all(a != b for a, b in itertools.pairwise(roles))  # alternating turns
        assert ex.chosen and ex.rejected and ex.chosen != ex.rejected
        # no transcript markup leaks into the texts
        assert not any("\n\nHuman:" in t["content"] for t in ex.prompt)
        assert "\n\nAssistant:" not in ex.chosen


def test_redial_train(shared_data):
    loaded = load_head(
        shared_data / "redial/train_data.jsonl.gz",
        40,
        catalogue=str(shared_data / "redial/movies_with_mentions.csv"),
    )
    assert loaded.format == "redial" and loaded.rows_read == 40
    assert len(loaded.examples) > 150 and loaded.invalid_fraction < 0.05
    with_gold = [ex for ex in loaded.examples if ex.meta["gold_movies"]]
    assert len(with_gold) > 40
    for ex in loaded.examples:
        assert set(ex.meta["gold_movies"]) <= set(ex.meta["movies"])
        # every @id was named (dialogue mentions, then the catalogue)
        texts = [t["content"] for t in ex.prompt] + [ex.reference]
        assert not any(re.search(r"@\d+", t) for t in texts)
        assert ex.prompt[-1]["role"] == "user"
