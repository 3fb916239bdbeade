"""CRS task: movie-title normalisation, mention resolution and the recommendation reward."""

from __future__ import annotations

import pytest

from rlhf_lab import reward_components
from rlhf_lab.config import Params
from rlhf_lab.errors import DataError
from rlhf_lab.tasks import crs

CSV = """movieId,movieName,nbMentions
133249,Up  (2009),191
99276,Star Wars  (1977),300
204292,Star Wars: The Empire Strikes Back (1980),120
75984,Fool's Gold  (2008),9
202188,Fool's Gold  (1919),1
186635,Amélie (2001),20
188656,The Help  (2011),30
136877,300  (2007),72
122712,M  (1931),2
76012,The Exorcist  (1973),174
75881,Toy Story 2 (1999),26
111111,"Good Morning, Vietnam (1987)",10
"""


@pytest.fixture
def catalogue(tmp_path):
    path = tmp_path / "movies_with_mentions.csv"
    path.write_text(CSV, encoding="utf-8")
    return crs.MovieCatalogue(csv_path=path)


@pytest.fixture
def catalogue_file(tmp_path):
    path = tmp_path / "movies_with_mentions.csv"
    path.write_text(CSV, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Star Wars (1977)", "star wars"),
        ("Star Wars  (1977) ", "star wars"),
        ("The Exorcist", "exorcist"),
        ("THE   exorcist!!", "exorcist"),
        ("Fool's Gold  (2008)", "fools gold"),
        ("Good Morning, Vietnam (1987)", "good morning vietnam"),
        ("Amélie", "amelie"),
        ("Fast & Furious", "fast and furious"),
        ("The", "the"),
        (" (2015)", ""),
    ],
)
def test_normalize_title(name, key):
    assert crs.normalize_title(name) == key


def test_find_mentions_case_punctuation_year(catalogue):
    assert catalogue.find_mentions("have you seen STAR WARS?") == ["99276"]
    assert catalogue.find_mentions("try the exorcist (1973), it's scary") == ["76012"]
    assert catalogue.find_mentions("Good morning vietnam is a classic") == ["111111"]
    assert catalogue.find_mentions("I loved amelie") == ["186635"]
    # A shared title gives both ids; a year written after it picks one.
    assert catalogue.find_mentions("fools gold") == ["75984", "202188"]
    assert catalogue.find_mentions("Fool's Gold (1919)") == ["202188"]


def test_find_mentions_longest_first_and_order(catalogue):
    text = "Star Wars: The Empire Strikes Back beats Toy Story 2 and Star Wars"
    assert catalogue.find_mentions(text) == ["204292", "75881", "99276"]


def test_up_needs_whole_word_and_title_evidence(catalogue):
    assert catalogue.find_mentions("I'm so upset today") == []
    assert catalogue.find_mentions("I grew up watching cartoons") == []
    assert catalogue.find_mentions("Up is how I start") == []  # sentence-initial capital
    assert catalogue.find_mentions("You should watch Up, it's sweet") == ["133249"]
    assert catalogue.find_mentions('what about "up"?') == ["133249"]
    assert catalogue.find_mentions("up (2009) is lovely") == ["133249"]
    assert catalogue.find_mentions("I need help") == []
    assert catalogue.find_mentions("I cried at The Help") == ["188656"]


def test_numbers_and_short_titles(catalogue):
    assert catalogue.find_mentions("I have seen 300 movies") == []
    assert catalogue.find_mentions("watch 300 (2007)") == ["136877"]
    assert catalogue.find_mentions("M is a classic, as is M (1931)") == []


def test_at_mentions_and_layering(catalogue):
    layered = catalogue.with_movies({"500": "Pretty in Pink (1986)"})
    assert layered.find_mentions("like @500 and pretty in pink and @99276 and @1") == [
        "500",
        "99276",
    ]
    assert "500" not in catalogue
    assert layered.name("500") == "Pretty in Pink (1986)"


def test_large_catalogue_sharing_a_first_token():
    big = crs.MovieCatalogue({str(i): f"Title Number {i} (2000)" for i in range(7000)})
    assert big.find_mentions("I liked title number 6999 a lot") == ["6999"]


def _row(gold, movies=None):
    return {
        "id": "d1",
        "prompt": [{"role": "user", "content": "Any movie like Star Wars?"}],
        "reference": None,
        "meta": {"movies": movies or {}, "gold_movies": gold},
    }


def test_recommendation_score_levels(catalogue):
    row = _row(["99276"], {"99276": "Star Wars  (1977)", "75881": "Toy Story 2 (1999)"})
    assert crs.recommendation_score("You'd love star wars!", row, catalogue) == 1.0
    assert crs.recommendation_score("Try Toy Story 2.", row, catalogue) == crs.PARTIAL_CREDIT
    assert crs.recommendation_score("Try Amélie.", row, catalogue) == crs.PARTIAL_CREDIT
    assert crs.recommendation_score("Try Amélie.", row, catalogue, partial_credit=0.5) == 0.5
    assert crs.recommendation_score("I hope you feel better soon.", row, catalogue) == 0.0


def test_gold_by_name_and_int_id(catalogue):
    by_name = _row(["The Exorcist (1973)"])
    assert crs.recommendation_score("see the exorcist", by_name, catalogue) == 1.0
    # A gold name missing from every catalogue still counts.
    unknown = _row(["Paddington 2 (2017)"])
    assert crs.recommendation_score("Paddington 2 is sweet", unknown, catalogue) == 1.0
    by_int = _row([75881])
    assert crs.recommendation_score("toy story 2", by_int, catalogue) == 1.0


def test_factory_component_and_booleans(catalogue_file):
    params = Params(task={"name": "crs"}, data={"catalogue": str(catalogue_file)})
    fn = reward_components.build(["crs/recommendation"], params)["crs/recommendation"]
    cat = crs.load_catalogue(catalogue_file)
    rows = [_row(["99276"], {"99276": "Star Wars"})] * 3
    replies = ["Watch Star Wars", "Watch Amélie (2001)", "Sorry to hear that"]
    assert fn(replies, rows) == [1.0, crs.PARTIAL_CREDIT, 0.0]
    assert [crs.recommendation_hit(r, rows[0], cat) for r in replies] == [True, False, False]
    assert [crs.recommends_any(r, rows[0], cat) for r in replies] == [True, True, False]
    # Without data.catalogue only the dialogue's own movies are known.
    bare = reward_components.build(["crs/recommendation"], Params(task={"name": "crs"}))
    assert bare["crs/recommendation"](replies, rows) == [1.0, 0.0, 0.0]
    assert [crs.recommends_any(r, rows[0]) for r in replies] == [True, False, False]


def test_rule_context_loads_the_params_catalogue_for_crs_only(catalogue_file, tmp_path):
    ctx = reward_components.RuleContext.from_params
    chat = Params(data={"catalogue": str(catalogue_file)})
    assert ctx(chat).context is None
    assert ctx(Params(task={"name": "crs"})).context is None
    crs_params = Params(task={"name": "crs"}, data={"catalogue": str(catalogue_file)})
    assert "111111" in ctx(crs_params).context
    missing = Params(task={"name": "crs"}, data={"catalogue": str(tmp_path / "nope.csv")})
    with pytest.raises(DataError, match=r"data\.catalogue: file not found"):
        ctx(missing)
