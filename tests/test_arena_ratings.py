"""Arena ratings: win rates, Bradley–Terry (MM) and the Elo scale against hand-computed values."""

from __future__ import annotations

import math

import pytest

from rlhf_lab.arena import ratings
from rlhf_lab.arena.ratings import Game
from rlhf_lab.arena.votes import vote_row


def vote(left: str, right: str, label: str, prompt: str = "hi") -> dict:
    return vote_row(
        comparison_id="c",
        prompt=[{"role": "user", "content": prompt}],
        models=(left, right),
        replies=("a", "b"),
        label=label,
    )


def test_prompt_coverage_counts_distinct_held_out_prompts_with_any_vote():
    held_out = [[{"role": "user", "content": f"q{i}"}] for i in range(4)]
    held_out.append([{"role": "user", "content": "q0"}])  # a duplicate is one prompt
    rows = [
        vote("sft", "ppo", "left", "q0"),
        vote("ppo", "sft", "tie", "q0"),
        vote("sft", "ppo", "both_bad", "q2"),
        vote("sft", "ppo", "right", "typed, not held out"),
    ]
    assert ratings.prompt_coverage(rows, held_out) == {"arena/prompts_voted": 2, "arena/prompts": 4}
    # a multi-turn prompt matches on every turn, not on its last message alone
    turns = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "x"}]
    assert (
        ratings.prompt_coverage([vote("a", "b", "left", "q1")], [turns])["arena/prompts_voted"] == 0
    )
    assert ratings.prompt_coverage([], held_out) == {"arena/prompts_voted": 0, "arena/prompts": 4}
    board = ratings.leaderboard({**ratings.summary(rows, n_boot=50), "arena/prompts": 4})
    assert board["coverage"] == {"voted": 0, "prompts": 4}


def test_games_score_ties_and_both_bad_as_half():
    rows = [vote("a", "b", "left"), vote("a", "b", "right"), vote("b", "a", "tie")]
    rows += [vote("a", "b", "both_bad"), vote("a", "a", "left")]  # a vs a: not a game
    assert ratings.games(rows) == [
        Game("a", "b", 1.0),
        Game("a", "b", 0.0),
        Game("b", "a", 0.5),
        Game("a", "b", 0.5),
    ]


def test_win_rates_means_and_ci_bounds():
    played = [Game("a", "b", 1.0)] * 3 + [Game("b", "a", 1.0), Game("a", "c", 0.5)]
    wr = ratings.win_rates(played, n_boot=500)
    assert list(wr) == ["a", "b", "c"]
    # a: 1, 1, 1, 0, 0.5 -> 3.5 / 5; b: 0, 0, 0, 1 -> 1 / 4; c: one tie
    assert wr["a"].rate == pytest.approx(0.7) and wr["a"].games == 5
    assert wr["b"].rate == pytest.approx(0.25) and wr["b"].games == 4
    assert (wr["c"].rate, wr["c"].lo, wr["c"].hi) == (0.5, 0.5, 0.5)
    assert 0.0 <= wr["a"].lo <= 0.7 <= wr["a"].hi <= 1.0


def test_bradley_terry_two_models_hand_computed():
    # 3 wins of 4: the MLE odds are 3:1, so p_a / p_b = 3; geometric mean 1 -> sqrt(3), 1/sqrt(3)
    played = [Game("a", "b", 1.0)] * 3 + [Game("a", "b", 0.0)]
    p = ratings.bradley_terry(played, prior=0.0)
    assert p["a"] == pytest.approx(math.sqrt(3)) and p["b"] == pytest.approx(1 / math.sqrt(3))
    elo = ratings.elo_scale(p)
    assert elo["a"] == pytest.approx(1000 + 200 * math.log10(3))  # 1095.42
    assert elo["b"] == pytest.approx(1000 - 200 * math.log10(3))
    # one virtual tie: 3.5 wins to 1.5 of 5 games -> odds 7:3
    p1 = ratings.bradley_terry(played, prior=1.0)
    assert p1["a"] / p1["b"] == pytest.approx(7 / 3)


def test_bradley_terry_cycle_is_equal_and_unbeaten_stays_finite():
    cycle = [Game("a", "b", 1.0), Game("b", "c", 1.0), Game("c", "a", 1.0)]
    elo = ratings.elo_scale(ratings.bradley_terry(cycle, prior=0.0))
    assert all(r == pytest.approx(1000.0) for r in elo.values())
    unbeaten = [Game("a", "b", 1.0)] * 5
    with pytest.raises(ValueError, match="no win"):
        ratings.bradley_terry(unbeaten, prior=0.0)
    p = ratings.bradley_terry(unbeaten, prior=1.0)  # 5.5 : 0.5 -> 11:1
    assert p["a"] / p["b"] == pytest.approx(11.0)


def test_bradley_terry_solves_the_likelihood_equations():
    # At the MLE every model's wins equal its expected wins: W_i = Σ_j n_ij p_i / (p_i + p_j).
    played = [Game("a", "b", 1.0)] * 4 + [Game("b", "a", 1.0)] * 2 + [Game("b", "c", 1.0)] * 3
    played += [Game("c", "a", 1.0), Game("a", "c", 1.0), Game("a", "c", 0.5), Game("c", "b", 1.0)]
    p = ratings.bradley_terry(played, prior=0.0)
    for i in p:
        won = sum(g.score for g in played if g.a == i) + sum(
            1 - g.score for g in played if g.b == i
        )
        expected = sum(
            p[i] / (p[i] + p[g.b if g.a == i else g.a]) for g in played if i in (g.a, g.b)
        )
        assert won == pytest.approx(expected, abs=1e-8)
    assert math.prod(p.values()) == pytest.approx(1.0)


def test_summary_metrics():
    rows = [vote("sft", "ppo", "right")] * 3 + [
        vote("ppo", "sft", "tie"),
        vote("sft", "ppo", "both_bad"),
    ]
    m = ratings.summary(rows, n_boot=200)
    assert (m["arena/votes"], m["arena/pairs"], m["arena/ties"], m["arena/both_bad"]) == (
        5,
        3,
        1,
        1,
    )
    assert m["arena/left_win_fraction"] == 0.0
    assert m["arena/ppo/win_rate"] == pytest.approx(4 / 5) and m["arena/ppo/games"] == 5
    assert m["arena/sft/win_rate"] == pytest.approx(1 / 5)
    # 4 : 1 wins plus one virtual tie -> 4.5 : 1.5 = 3:1
    assert m["arena/ppo/elo"] - m["arena/sft/elo"] == pytest.approx(400 * math.log10(3))
    assert ratings.summary([]) == {
        "arena/votes": 0,
        "arena/pairs": 0,
        "arena/ties": 0,
        "arena/both_bad": 0,
        "arena/identical": 0,
        "arena/left_win_fraction": 0.0,
    }
    # 5 games each, below MIN_SAMPLES: no interval, and the leaderboard says why.
    assert "arena/ppo/win_rate_lo" not in m and "arena/ppo/elo_lo" not in m
    assert m["arena/pair/ppo vs sft"] == 5
    board = ratings.leaderboard(m)
    assert [r["model"] for r in board["models"]] == ["ppo", "sft"]
    assert board["models"][0]["win_rate"] == "0.80 (too few votes: 5 < 10)"
    assert board["left_wins"] == "0.00 (too few votes: 3 < 10)"
    assert board["pairs"] == {"ppo vs sft": 5}


def test_identical_replies_are_flagged_never_a_pair_and_not_a_game():
    row = vote_row(
        comparison_id="c",
        prompt=[{"role": "user", "content": "hi"}],
        models=("a", "b"),
        replies=("same", "same"),
        label="tie",
    )
    assert row["identical"] is True and row["chosen"] is None
    assert ratings.games([row]) == []
    assert ratings.summary([row])["arena/identical"] == 1
    with pytest.raises(ValueError, match="identical replies"):
        vote_row(
            comparison_id="c",
            prompt=[{"role": "user", "content": "hi"}],
            models=("a", "b"),
            replies=("same", "same"),
            label="left",
        )


def test_intervals_once_there_are_enough_votes():
    # 12 decisive votes, ppo wins 9: win rate 0.75; left (ppo is left in 6) wins 6 of 12.
    rows = [vote("ppo", "sft", "left")] * 6 + [vote("sft", "ppo", "right")] * 3
    rows += [vote("sft", "ppo", "left")] * 3
    m = ratings.summary(rows, n_boot=400)
    assert m["arena/ppo/win_rate"] == pytest.approx(0.75)
    assert m["arena/left_win_fraction"] == pytest.approx(9 / 12)
    assert 0.0 <= m["arena/ppo/win_rate_lo"] < 0.75 < m["arena/ppo/win_rate_hi"] <= 1.0
    # BT with one virtual tie: 9.5 : 3.5 -> Elo gap 400 log10(19/7) = 173.4, inside its CI
    gap = m["arena/ppo/elo"] - m["arena/sft/elo"]
    assert gap == pytest.approx(400 * math.log10(9.5 / 3.5))
    assert m["arena/ppo/elo_lo"] < m["arena/ppo/elo"] < m["arena/ppo/elo_hi"]
    board = ratings.leaderboard(m)
    lo, hi = m["arena/ppo/win_rate_lo"], m["arena/ppo/win_rate_hi"]
    assert board["models"][0]["win_rate"] == f"0.75 [{lo:.2f}, {hi:.2f}]"


def test_elo_ci_of_a_single_game_kind_is_a_point():
    # Every resample is the same multiset of games: the interval collapses on the fit.
    played = [Game("a", "b", 0.5)] * 4
    bounds = ratings.elo_ci(played, n_boot=50)
    assert bounds["a"] == pytest.approx((1000.0, 1000.0))
    assert ratings.elo_ci([]) == {}
