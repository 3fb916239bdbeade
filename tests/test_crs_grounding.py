"""Candidate-grounded crs prompts and their rewards (gold, candidate, known, hallucinated)."""

from __future__ import annotations

from rlhf_lab import reward_components
from rlhf_lab.config import Params
from rlhf_lab.tasks import crs
from rlhf_lab.tasks.crs import grounding

CATALOGUE = crs.MovieCatalogue(
    {
        "1": "Police Academy  (1984)",
        "2": "Heat (1995)",
        "3": "The Lord of the Rings: The Fellowship of the Ring (2001)",
        "4": "Alien (1979)",
        "5": "Up (2009)",
    }
)


def _row():
    return {
        "id": "redial-7-3",
        "prompt": [
            {"role": "user", "content": "I loved Up (2009)"},
            {"role": "assistant", "content": "Have you seen Alien (1979)?"},
            {"role": "user", "content": "yes, hated it. Something else?"},
        ],
        "reference": "Try Heat (1995)",
        "meta": {
            "movies": {"5": "Up (2009)", "4": "Alien (1979)"},
            "gold_movies": ["2"],
            "context_movies": [
                {"id": "5", "liked": 1, "seen": 2, "said": "I loved Up (2009)"},
                {"id": "4", "liked": 0, "seen": 1, "said": ""},
            ],
        },
    }


def test_the_prompt_carries_the_top_k_candidates_and_the_stated_feelings():
    row = _row()
    grounded = grounding.with_candidates(row, ["2", "999", "1", "3"], CATALOGUE, k=2)
    # 999 has no name anywhere: dropped, the next one fills its place
    assert grounded["meta"]["candidates"] == ["2", "1"]
    assert grounded["meta"]["movies"]["1"] == "Police Academy  (1984)"
    assert grounded["prompt"][:2] == row["prompt"][:2]
    assert grounded["prompt"][2]["content"] == (
        "yes, hated it. Something else?\n\n"
        "[Recommender candidates]\n"
        "Movies to consider: Heat (1995); Police Academy  (1984).\n"
        "The user liked Up (2009); disliked and has seen Alien (1979)."
    )
    assert row["prompt"][2]["content"] == "yes, hated it. Something else?"  # not changed
    assert "candidates" not in row["meta"]


def test_grounded_score_levels():
    row = grounding.with_candidates(_row(), ["2", "1"], CATALOGUE, k=2)
    assert grounding.grounded_score("Try Heat (1995), it is tense.", row, CATALOGUE) == 1.0
    assert grounding.grounded_score("Police Academy is fun!", row, CATALOGUE) == 0.6
    assert grounding.CANDIDATE_CREDIT == 0.6
    # a known movie that is neither gold nor a candidate: the old partial credit
    partial = grounding.grounded_score("Maybe watch Alien (1979) again?", row, CATALOGUE)
    assert partial == crs.PARTIAL_CREDIT == 0.3
    assert grounding.grounded_score("I hope you find something you like.", row, CATALOGUE) == 0.0


def test_invented_titles_are_hallucinations_and_loose_real_ones_are_not():
    row = grounding.with_candidates(_row(), ["2", "1"], CATALOGUE, k=2)

    def found(reply):
        return grounding.hallucinated_titles(reply, row, CATALOGUE)

    assert found("Try Moonlight Expresso (2003)!") == ["Try Moonlight Expresso (2003)"]
    assert found('Have you seen "Galaxy Raiders of Zorbon"?') == ["Galaxy Raiders of Zorbon"]
    assert found("Heat (1994) is great") == ["Heat (1994)"]  # Heat is 1995: another film
    # real titles: exact, the start of a longer one after a lead-in word, quoted
    assert found("Try Heat (1995) or Police Academy (1984)") == []
    assert found("Try Lord of the Rings (2001)") == []
    assert found('I loved "Heat" and "Up".') == []
    assert found("no titles here, and lower case (1999) is no title") == []


def test_both_components_come_from_the_one_factory():
    params = Params(task={"name": "crs"})
    names = ["crs/grounded", "crs/no_hallucination"]
    assert set(names) <= set(reward_components.task_rules("crs"))
    fns = reward_components.build(names, params)
    row = grounding.with_candidates(_row(), ["2", "1"], CATALOGUE, k=2)
    replies = ["Try Heat (1995)", "Police Academy (1984)!", "Try Zorblax Rising (2011)", "hm"]
    rows = [row] * 4
    # no data.catalogue: the row's own movies and candidates are what is known
    assert fns["crs/grounded"](replies, rows) == [1.0, 0.6, 0.0, 0.0]
    assert fns["crs/no_hallucination"](replies, rows) == [1.0, 1.0, 0.0, 1.0]


def test_titles_with_lower_case_words_inside_are_read_whole():
    cat = crs.MovieCatalogue(
        {
            "7": "Manchester by the Sea (2016)",
            "8": "Freddy vs. Jason (2003)",
            "9": "Mission: Impossible – Rogue Nation (2015)",
        }
    )
    row = {"prompt": [], "meta": {"movies": {}, "gold_movies": []}}
    for reply in (
        "Also Manchester by the Sea (2016) as well",
        "Have you seen Freddy vs. Jason (2003) ?",
        "Mission: Impossible – Rogue Nation (2015) is fun",
    ):
        assert grounding.hallucinated_titles(reply, row, cat) == [], reply
    # the run is read whole: a real film's last words do not vouch for an invented one
    assert grounding.hallucinated_titles("Try Rogue Nation Zeta (2015)", row, cat) == [
        "Try Rogue Nation Zeta (2015)"
    ]


def test_empathy_is_vader_intensity_either_way():
    """|compound| of VADER: feeling words score, negative as much as positive; plain
    information scores 0. Values from vaderSentiment 3.3.2's lexicon."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    vader = SentimentIntensityAnalyzer()
    row = _row()
    for reply in ("I love it, you will adore Heat!", "Sorry, that sounds awful."):
        expected = abs(vader.polarity_scores(reply)["compound"])
        assert grounding.empathy_score(reply, row) == expected > 0.5
    assert grounding.empathy_score("Heat (1995) is a film.", row) == 0.0
    fn = reward_components.build(["crs/empathy"], Params(task={"name": "crs"}))["crs/empathy"]
    assert fn(["I love it!", "It is a film."], [row, row]) == [
        abs(vader.polarity_scores("I love it!")["compound"]),
        0.0,
    ]
