"""Hash splits and the streaming subsample: deterministic, order-free, conversation-safe."""

from __future__ import annotations

import random

import pytest

from rlhf_lab.data.splits import Subsample, assign_split, split_rows, unit_hash


def test_unit_hash_is_stable_and_uniform():
    # A fixed value: the split of a row must not change between runs, machines or versions.
    assert unit_hash("split", 0, "chitchat-abc") == unit_hash("split", 0, "chitchat-abc")
    assert unit_hash("split", 0, "a") != unit_hash("split", 1, "a")
    values = [unit_hash("u", i) for i in range(4000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert sum(v < 0.25 for v in values) / len(values) == pytest.approx(0.25, abs=0.03)


def test_split_fractions_and_determinism():
    groups = [f"g{i}" for i in range(5000)]
    splits = [assign_split(g, 0, 0.1, 0.2) for g in groups]
    assert splits == [assign_split(g, 0, 0.1, 0.2) for g in groups]
    assert splits.count("test") / 5000 == pytest.approx(0.2, abs=0.02)
    assert splits.count("valid") / 5000 == pytest.approx(0.1, abs=0.02)
    # another seed reshuffles
    assert splits != [assign_split(g, 1, 0.1, 0.2) for g in groups]
    assert {assign_split(g, 0, 0.0, 0.0) for g in groups} == {"train"}


def test_rows_of_one_group_share_a_split_and_keep_their_order():
    rows = [{"id": f"c{c}-{t}", "group": f"c{c}"} for c in range(200) for t in range(4)]
    out = split_rows(rows, lambda r: r["group"], 3, 0.2, 0.2)
    where = {r["group"]: name for name, part in out.items() for r in part}
    for name, part in out.items():
        assert all(where[r["group"]] == name for r in part)
        assert part == sorted(part, key=rows.index)
    assert sum(len(p) for p in out.values()) == len(rows)


def test_subsample_is_independent_of_order_and_returns_source_order():
    ids = [f"row-{i}" for i in range(1000)]
    a: Subsample[str] = Subsample(50, seed=7)
    for i in ids:
        a.add(i, i)
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    b: Subsample[str] = Subsample(50, seed=7)
    for i in shuffled:
        b.add(i, i)
    assert len(a) == 50 and set(a.items()) == set(b.items())
    assert a.items() == sorted(a.items(), key=ids.index)
    # the kept ones are exactly the 50 smallest hashes
    expected = sorted(ids, key=lambda i: unit_hash("subsample", 7, i))[:50]
    assert set(a.items()) == set(expected)
    everything: Subsample[str] = Subsample(0, seed=7)
    for i in ids:
        everything.add(i, i)
    assert everything.items() == ids
