"""The crs recommender: its signals, the ECR demotion, and that it beats popularity where
co-mentions predict the gold (a dataset built so)."""

from __future__ import annotations

import math

import pytest

from rlhf_lab.config import RecommenderConfig
from rlhf_lab.data.validate import Origin
from rlhf_lab.evaluation.recommender import compare
from rlhf_lab.tasks.crs import recommender as rec
from rlhf_lab.tasks.crs.formats import parse_redial
from rlhf_lab.tasks.crs.recommender import Mention, RecTurn
from rlhf_lab.tasks.registry import FORMAT_PARSERS

from .test_data_sources import REDIAL


def prompt_row(conv: str, text: str, context: list[dict], gold: list[str]) -> dict:
    """A crs prompt row as prepare_preference writes it."""
    return {
        "id": f"redial-{conv}-1",
        "prompt": [{"role": "user", "content": text}],
        "reference": "try this one",
        "meta": {
            "movies": {},
            "gold_movies": gold,
            "context_movies": context,
            "conversation_id": conv,
        },
    }


def synthetic_rows(pairs: int = 30, popular: int = 12) -> tuple[list[dict], list[dict]]:
    """(train, test) rows: a seeker who liked movie a<i> is suggested b<i> (3 training
    dialogues each); popular movies p<j> are suggested 5 times each with no context, so
    popularity ranks every b<i> below the twelve p<j>."""

    def liked(movie: str) -> list[dict]:
        return [{"id": movie, "liked": 1, "seen": 1, "said": f"I loved {movie}"}]

    train = [
        prompt_row(f"t{i}-{r}", "any ideas for tonight?", liked(f"a{i}"), [f"b{i}"])
        for i in range(pairs)
        for r in range(3)
    ]
    train += [
        prompt_row(f"p{j}-{r}", "any ideas for tonight?", [], [f"p{j}"])
        for j in range(popular)
        for r in range(5)
    ]
    test = [
        prompt_row(f"x{i}", "any ideas for tonight?", liked(f"a{i}"), [f"b{i}"])
        for i in range(pairs)
    ]
    return train, test


def test_beats_popularity_where_co_mentions_predict_the_gold():
    train_rows, test_rows = synthetic_rows()
    train, test = rec.turns_from_rows(train_rows), rec.turns_from_rows(test_rows)
    systems = {
        "recommender": rec.Recommender(train, (), RecommenderConfig()),
        "baseline_popularity": rec.Popularity(train),
        "baseline_cooccurrence": rec.CoOccurrence(train),
    }
    out, ranked = compare(systems, test)
    assert out["baseline_popularity/recall@10"] == 0.0  # ten of the twelve p<j> fill the top
    assert out["baseline_cooccurrence/recall@1"] == 1.0
    assert out["recommender/recall@1"] == 1.0
    assert out["recommender/cases"] == 30.0
    assert out["recommender_vs_baseline_popularity/diff"] == 1.0
    assert out["recommender_vs_baseline_popularity/wilcoxon_p"] < 1e-6
    assert out["recommender_vs_baseline_popularity/bootstrap_p"] < 0.01
    assert out["recommender_vs_baseline_cooccurrence/diff"] == 0.0
    assert ranked["baseline_popularity"][0][:3] == ["p0", "p1", "p2"]  # ties: first seen first
    # the blend learnt that a liked mention's co-occurrence predicts the gold
    assert systems["recommender"].weights["cooc_pos"] > 0


def test_seen_or_disliked_movies_are_demoted():
    train_rows, _ = synthetic_rows()
    train = rec.turns_from_rows(train_rows)
    model = rec.Recommender(train, (), RecommenderConfig())
    liked_a0 = Mention("a0", liked=1)
    fresh = RecTurn("q", "q", "any ideas?", (liked_a0,), ("b0",))
    assert rec.top_k(model, fresh, 1) == ["b0"]
    # the seeker already saw b0, or said they disliked it: everything fresh ranks above it
    for b0 in (Mention("b0", seen=1), Mention("b0", liked=0)):
        turn = RecTurn("q", "q", "any ideas?", (liked_a0, b0), ("b0",))
        assert rec.top_k(model, turn, len(model.items))[-1] == "b0"
    no_demotion = rec.Recommender(train, (), RecommenderConfig(demote=False))
    turn = RecTurn("q", "q", "any ideas?", (liked_a0, Mention("b0", seen=1)), ("b0",))
    assert "b0" in rec.top_k(no_demotion, turn, 10)


def test_sentiment_reads_the_questionnaire_then_the_words():
    feel = rec.Sentiment()
    assert feel(Mention("1", liked=1, said="I hated it")) == 1.0  # the answer wins
    assert feel(Mention("1", liked=0)) == -1.0
    assert feel(Mention("1", liked=2, said="I hated it, so boring")) < -0.5
    assert feel(Mention("1", liked=None, said="I loved it!")) > 0.5
    assert feel(Mention("1", liked=2)) == 0.0
    assert rec.is_demoted(Mention("1", seen=1), 1.0) and not rec.is_demoted(Mention("1"), 0.0)


def test_redial_rows_carry_the_context_movies_and_feelings():
    answers = {
        "111": {"suggested": 1, "seen": 0, "liked": 2},
        "222": {"suggested": 0, "seen": 1, "liked": 1},
    }
    row = dict(REDIAL, initiatorQuestions=answers)
    examples = parse_redial(row, Origin("f", 1, "train"), max_turns=6)
    turns = [rec.turn_from_row(ex.to_prompt_row()) for ex in examples]
    assert [t.context for t in turns[:2]] == [
        (),
        (Mention("222", liked=1, seen=1, said="I loved Up (2009)\nsomething scary?"),),
    ]
    # the third turn also knows Alien, which only the recommender has mentioned so far
    assert [m.id for m in turns[2].context] == ["222", "111"]
    assert turns[2].context[1] == Mention("111", liked=2, seen=0, said="")
    assert turns[2].gold == ("333", "444") and turns[2].group == "77"
    assert rec.recommendation_turns(turns) == turns[1:]


def test_rows_without_crs_meta_are_a_one_line_error():
    with pytest.raises(rec.DataError, match=r"data/prompts/train.jsonl:2: meta.context_movies"):
        rec.turns_from_rows(
            [prompt_row("a", "x", [], ["b"]), {"meta": {}}], "data/prompts/train.jsonl"
        )


def test_crs_turns_rows_give_item_ids_and_the_words_around_each_mention(tmp_path):
    from .test_data_crs_turns import GOOD, load, write_dir

    _, loaded = load(write_dir(tmp_path, [GOOD]))
    (turn,) = [rec.turn_from_row(ex.to_prompt_row()) for ex in loaded.examples]
    assert turn.gold == ("3",) and turn.group == "d1"  # the rec ids, not their names
    said = "I loved Police Academy (1984). Any comedies?"
    assert turn.context == (Mention("1", liked=None, seen=None, said=said),)
    assert rec.Sentiment()(turn.context[0]) > 0.5  # no questionnaire: the words say "loved"


def test_the_hub_id_reaches_the_recommender_through_the_data_path(monkeypatch):
    """``community-datasets/re_dial`` (list-of-objects schema) works like the raw files."""
    import datasets

    from rlhf_lab.config import DataConfig, TaskConfig
    from rlhf_lab.data import prepare

    def as_list(d):
        return [
            {"movieId": k, **(v if isinstance(v, dict) else {"movieName": v})} for k, v in d.items()
        ]

    answers = {
        "111": {"suggested": 1, "seen": 0, "liked": 1},
        "222": {"suggested": 0, "seen": 1, "liked": 0},
    }
    hub_row = dict(REDIAL, conversationId=77)
    hub_row["movieMentions"] = as_list(REDIAL["movieMentions"])
    hub_row["respondentQuestions"] = as_list(REDIAL["respondentQuestions"])
    hub_row["initiatorQuestions"] = as_list(answers)
    calls = []

    def fake_load_dataset(path, data_dir=None, split=None):
        calls.append((path, split))
        return [hub_row]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(source="community-datasets/re_dial", split="test", max_examples=0)
    loaded = prepare.load_examples(
        prepare.open_source(cfg, TaskConfig(name="crs")), cfg, FORMAT_PARSERS
    )
    turns = rec.recommendation_turns(
        rec.turns_from_rows(ex.to_prompt_row() for ex in loaded.examples)
    )
    assert calls == [("community-datasets/re_dial", "test")] and loaded.format == "redial"
    assert [t.gold for t in turns] == [("111",), ("333", "444")]
    assert turns[0].context == (
        Mention("222", liked=0, seen=1, said="I loved Up (2009)\nsomething scary?"),
    )
    # the questionnaire says disliked and seen, whatever the words: demoted
    assert rec.is_demoted(turns[0].context[0], rec.Sentiment()(turns[0].context[0]))


def test_cross_fitted_candidates_never_come_from_the_turns_own_dialogue():
    """A pairing seen in one training dialogue only: the full model ranks its gold first for
    that very turn (it counted it); the cross-fitted ranking, fitted without the dialogue,
    cannot. Pairings repeated in other dialogues are still found."""
    train_rows, _ = synthetic_rows()
    liked = [{"id": "a_once", "liked": 1, "seen": 1, "said": "I loved a_once"}]
    train_rows.append(prompt_row("once", "any ideas for tonight?", liked, ["b_once"]))
    train = rec.turns_from_rows(train_rows)
    model = rec.Recommender(train, (), RecommenderConfig())
    crossed = model.cross_fitted_top_k(train, 5)
    assert rec.top_k(model, train[-1], 5)[0] == "b_once"  # the full model saw it
    assert "b_once" not in crossed[-1]
    repeated = train[: 3 * 30]  # a<i> -> b<i>, three dialogues each
    assert rec.candidate_hit_rate(repeated, crossed[: 3 * 30]) == 1.0
    assert rec.candidate_hit_rate(train[-1:], crossed[-1:]) == 0.0


def test_candidate_hit_rate_counts_turns_that_suggest_a_movie():
    turns = rec.turns_from_rows(
        [
            prompt_row("1", "x", [], ["m1"]),
            prompt_row("2", "x", [], ["m2", "m3"]),
            prompt_row("3", "x", [], []),  # suggests nothing: not counted
        ]
    )
    assert rec.candidate_hit_rate(turns, [["m1", "m9"], ["m9"], ["m1"]]) == 0.5
    assert math.isnan(rec.candidate_hit_rate(turns[2:], [["m1"]]))
