"""The crs recommender: rank catalogue movies for a recommender turn, and two baselines.

A recommender turn (:class:`RecTurn`, from a prompt row's ``meta``) has the dialogue text so
far, the movies mentioned before it with the seeker's feelings toward each
(``meta["context_movies"]``: ReDial's ``liked`` / ``seen`` questionnaire answers and the
seeker's words around the mention) and the gold movies the human recommender suggested.

:class:`Recommender` scores every movie it knows with a logistic-regression blend
(scikit-learn) of signals that each capture one thing the dialogue says:

- ``pop``: how often the movie was suggested in training (log counts);
- ``cooc_pos`` / ``cooc_neg``: P(suggested | mentioned) from training turns, summed over the
  context movies the seeker feels positive or neutral about, and separately over the ones
  they dislike (ECR's emotion-aware preference: a disliked mention predicts differently);
- ``comention``: cosine similarity of movies co-mentioned in training dialogues (an
  item-item implicit-feedback model), summed over the positive/neutral context movies;
- ``text``: cosine of the dialogue's TF-IDF vector (scikit-learn ``TfidfVectorizer``) with
  each movie's profile, the sum of the TF-IDF vectors of the training turns that suggested it
  (Rocchio's classifier: genres, actors and moods said in the text point at movies);
- ``mentioned`` / ``liked`` / ``disliked`` / ``seen``: whether the candidate itself was
  mentioned before and how the seeker feels about it.

The blend's weights are learnt on out-of-fold features (``GroupKFold`` over dialogues), so a
turn's signals never come from counts that include its own dialogue; negatives are each
signal's top candidates. As ECR does, movies the seeker said they disliked or have seen rank
after every fresh candidate (``recommender.demote``).

Sentiment toward a mention (:func:`preference`): the questionnaire's ``liked`` when the seeker
answered it (1 liked, 0 disliked), else the VADER compound score (Hutto & Gilbert 2014,
``vaderSentiment``: a maintained lexicon model made for short informal text) of the seeker's
words around it; neutral when they said nothing.

Baselines (same turns, same catalogue): :class:`Popularity` (most-suggested first) and
:class:`CoOccurrence` (count of training turns where a context movie was mentioned and the
candidate suggested, summed over the context movies; popularity breaks ties).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy import sparse

from rlhf_lab.config import RecommenderConfig
from rlhf_lab.errors import DataError

MODEL_FILE = "recommender.pkl"
"""The fitted :class:`Recommender` inside ``models/recommender/``."""
FEATURES = (
    "pop",
    "cooc_pos",
    "cooc_neg",
    "comention",
    "text",
    "mentioned",
    "liked",
    "disliked",
    "seen",
)
"""The blend's inputs, in column order (module docstring)."""


@dataclass(frozen=True)
class Mention:
    """A movie mentioned before the turn and what the seeker said or answered about it."""

    id: str
    liked: int | None = None
    """Questionnaire: 1 liked, 0 disliked, 2 did not say; None when there is none."""
    seen: int | None = None
    """Questionnaire: 1 seen, 0 not seen, 2 did not say; None when there is none."""
    said: str = ""
    """The seeker's utterances that mention it."""


@dataclass(frozen=True)
class RecTurn:
    """One recommender turn: what the recommender knows, and what it suggested."""

    id: str
    group: str
    text: str
    context: tuple[Mention, ...]
    gold: tuple[str, ...]


def _as_answer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def turn_from_row(row: Mapping[str, Any]) -> RecTurn:
    """A :class:`RecTurn` from a crs prompt row (ReDial or crs_turns, see ``data.sources``)."""
    meta = row.get("meta") or {}
    text = "\n".join(str(m.get("content", "")) for m in row.get("prompt") or [])
    context = tuple(
        Mention(
            id=str(m["id"]),
            liked=_as_answer(m.get("liked")),
            seen=_as_answer(m.get("seen")),
            said=str(m.get("said") or ""),
        )
        for m in meta.get("context_movies") or ()
        if isinstance(m, Mapping) and m.get("id") is not None
    )
    # crs_turns name their gold by entity name and keep the ids in gold_ids; ReDial's are ids.
    gold = meta.get("gold_ids", meta.get("gold_movies")) or ()
    group = str(meta.get("conversation_id", row.get("id", "")))
    return RecTurn(str(row.get("id", "")), group, text, context, tuple(str(g) for g in gold))


def turns_from_rows(rows: Iterable[Mapping[str, Any]], where: str = "rows") -> list[RecTurn]:
    """Every row's :class:`RecTurn`; a row without crs meta is a DataError naming ``where``."""
    out = []
    for i, row in enumerate(rows, start=1):
        if "context_movies" not in (row.get("meta") or {}):
            raise DataError(
                f"{where}:{i}: meta.context_movies missing: not a crs prompt row "
                "(prepare it from ReDial or crs_turns data with task.name: crs)"
            )
        out.append(turn_from_row(row))
    return out


def recommendation_turns(turns: Iterable[RecTurn]) -> list[RecTurn]:
    """The turns that suggest a movie: the ones the CRSLab protocol evaluates."""
    return [t for t in turns if t.gold]


class Sentiment:
    """The seeker's feeling toward a mention, in [-1, 1] (module docstring)."""

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._vader = SentimentIntensityAnalyzer()

    def __call__(self, m: Mention) -> float:
        if m.liked in (0, 1):
            return 1.0 if m.liked == 1 else -1.0
        if not m.said.strip():
            return 0.0
        return float(self._vader.polarity_scores(m.said)["compound"])


def is_demoted(m: Mention, feeling: float) -> bool:
    """Has the seeker seen or disliked it? (ECR recommends neither.)"""
    return m.seen == 1 or feeling < 0


class Ranker(Protocol):
    """Anything that scores the movies of :attr:`items` for a turn (higher is better)."""

    items: list[str]

    def scores(self, turn: RecTurn) -> np.ndarray: ...


def top_k(ranker: Ranker, turn: RecTurn, k: int) -> list[str]:
    """The ``k`` best movie ids for ``turn``, best first (ties: lower item index first)."""
    s = ranker.scores(turn)
    k = min(k, s.size)
    part = np.argpartition(-s, k - 1)[:k] if k < s.size else np.arange(s.size)
    order = part[np.lexsort((part, -s[part]))]
    return [ranker.items[i] for i in order]


class _Vocab:
    """Movie ids <-> columns: the catalogue's movies, then any other id the training turns use."""

    def __init__(self, turns: Sequence[RecTurn], catalogue: Iterable[str]) -> None:
        ids = dict.fromkeys(str(c) for c in catalogue)
        for t in turns:
            ids.update(dict.fromkeys(t.gold))
            ids.update(dict.fromkeys(m.id for m in t.context))
        self.items = list(ids)
        self.index = {m: i for i, m in enumerate(self.items)}

    def cols(self, ids: Iterable[str]) -> list[int]:
        return [self.index[i] for i in ids if i in self.index]


def _gold_counts(turns: Sequence[RecTurn], vocab: _Vocab) -> np.ndarray:
    counts = np.zeros(len(vocab.items))
    for t in turns:
        for c in vocab.cols(dict.fromkeys(t.gold)):
            counts[c] += 1
    return counts


def _pair_counts(turns: Sequence[RecTurn], vocab: _Vocab, keep: Any = None) -> sparse.csr_matrix:
    """``C[c, g]``: training turns where context movie c (kept by ``keep``) preceded gold g."""
    rows, cols = [], []
    for t in turns:
        gold = vocab.cols(dict.fromkeys(t.gold))
        for m in t.context:
            if m.id in vocab.index and (keep is None or keep(m)):
                rows += [vocab.index[m.id]] * len(gold)
                cols += gold
    n = len(vocab.items)
    data = np.ones(len(rows))
    return sparse.csr_matrix((data, (rows, cols)), shape=(n, n))


class Popularity:
    """Baseline: the movies suggested most often in training, the same list for every turn."""

    def __init__(self, turns: Sequence[RecTurn], catalogue: Iterable[str] = ()) -> None:
        vocab = _Vocab(turns, catalogue)
        self.items = vocab.items
        self._scores = _gold_counts(turns, vocab)

    def scores(self, turn: RecTurn) -> np.ndarray:
        return self._scores


class CoOccurrence:
    """Baseline: count of training turns where a context movie was mentioned and the candidate
    suggested, summed over the turn's context movies; popularity breaks ties."""

    def __init__(self, turns: Sequence[RecTurn], catalogue: Iterable[str] = ()) -> None:
        self._vocab = vocab = _Vocab(turns, catalogue)
        self.items = vocab.items
        self._pairs = _pair_counts(turns, vocab)
        pop = _gold_counts(turns, vocab)
        # below one co-occurrence: a tie-break, never a reason to outrank one
        self._tie = pop / (pop.max() + 1.0)

    def scores(self, turn: RecTurn) -> np.ndarray:
        cols = self._vocab.cols(m.id for m in turn.context)
        co = np.asarray(self._pairs[cols].sum(axis=0)).ravel() if cols else 0.0
        return co + self._tie


class _Signals:
    """Every signal of the module docstring, fitted on some training turns."""

    def __init__(
        self,
        turns: Sequence[RecTurn],
        vocab: _Vocab,
        sentiment: Sentiment,
        settings: RecommenderConfig,
    ) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.preprocessing import normalize

        self.vocab, self.sentiment = vocab, sentiment
        n = len(vocab.items)
        self.pop = np.log1p(_gold_counts(turns, vocab))
        mentioned = np.zeros(n)
        for t in turns:
            for c in vocab.cols(m.id for m in t.context):
                mentioned[c] += 1
        inv = sparse.diags(1.0 / (mentioned + 1.0))  # P(gold | mentioned), add-one smoothed
        self.cooc_pos = (inv @ _pair_counts(turns, vocab, lambda m: sentiment(m) >= 0)).tocsr()
        self.cooc_neg = (inv @ _pair_counts(turns, vocab, lambda m: sentiment(m) < 0)).tocsr()
        # item-item cosine over dialogues (every movie a dialogue mentions or suggests)
        groups = {g: i for i, g in enumerate(dict.fromkeys(t.group for t in turns))}
        r, c = [], []
        for t in turns:
            for col in vocab.cols([*t.gold, *(m.id for m in t.context)]):
                r.append(groups[t.group])
                c.append(col)
        inc = sparse.csr_matrix((np.ones(len(r)), (r, c)), shape=(max(len(groups), 1), n))
        inc.data[:] = 1.0  # a dialogue counts once per movie
        inc_n = normalize(inc.T.tocsr())
        self.comention = (inc_n @ inc_n.T).tocsr()
        self.comention.setdiag(0.0)
        self.comention.eliminate_zeros()
        # text: Rocchio profiles over TF-IDF
        self.tfidf = TfidfVectorizer(
            sublinear_tf=True,
            ngram_range=(1, settings.ngram_max),
            min_df=settings.min_df,
            stop_words="english",
        )
        with_gold = [t for t in turns if t.gold]
        x = self.tfidf.fit_transform([t.text for t in with_gold] or [""])
        rr, cc = [], []
        for i, t in enumerate(with_gold):
            for col in vocab.cols(dict.fromkeys(t.gold)):
                rr.append(col)
                cc.append(i)
        y = sparse.csr_matrix((np.ones(len(rr)), (rr, cc)), shape=(n, x.shape[0]))
        self.profiles = normalize((y @ x).tocsr())

    def features(self, turn: RecTurn) -> np.ndarray:
        """The ``len(items) x len(FEATURES)`` matrix of ``turn``'s signals."""
        n = len(self.vocab.items)
        feelings = [(m, self.sentiment(m)) for m in turn.context if m.id in self.vocab.index]
        pos = [self.vocab.index[m.id] for m, f in feelings if f >= 0]
        neg = [self.vocab.index[m.id] for m, f in feelings if f < 0]

        def summed(mat: sparse.csr_matrix, cols: list[int]) -> np.ndarray:
            return np.asarray(mat[cols].sum(axis=0)).ravel() if cols else np.zeros(n)

        q = self.tfidf.transform([turn.text])
        text = np.asarray((self.profiles @ q.T).todense()).ravel()
        flags = np.zeros((n, 4))
        for m, f in feelings:
            i = self.vocab.index[m.id]
            flags[i] = (1.0, float(f > 0), float(f < 0), float(m.seen == 1))
        cols = [
            self.pop,
            np.log1p(summed(self.cooc_pos, pos)),
            np.log1p(summed(self.cooc_neg, neg)),
            np.log1p(summed(self.comention, pos)),
            text,
        ]
        return np.column_stack([*cols, flags])

    def demoted(self, turn: RecTurn) -> np.ndarray:
        out = np.zeros(len(self.vocab.items), dtype=bool)
        for m in turn.context:
            if m.id in self.vocab.index and is_demoted(m, self.sentiment(m)):
                out[self.vocab.index[m.id]] = True
        return out


def _candidates(
    feats: np.ndarray, gold: list[int], k: int, n_random: int, rng: np.random.Generator
) -> list[int]:
    """Rows to train the blend on for one turn: gold, each signal's top ``k`` (the hard
    negatives the ranking must get past) and ``n_random`` uniform ones. Hard negatives alone
    would teach that popularity does not matter (every candidate is popular); the uniform
    ones keep the sample close to the full catalogue the ranking is over."""
    n = feats.shape[0]
    rows = set(gold)
    for j in range(5):  # the ranking signals; the flags pick the mentioned movies
        col = feats[:, j]
        if k < n:
            rows.update(np.argpartition(-col, k - 1)[:k].tolist())
    rows.update(np.flatnonzero(feats[:, 5]).tolist())
    rows.update(rng.choice(n, size=min(n_random, n), replace=False).tolist())
    return sorted(rows)


class Recommender:
    """The learnt blend of :class:`_Signals` (module docstring)."""

    def __init__(
        self,
        turns: Sequence[RecTurn],
        catalogue: Iterable[str] = (),
        settings: RecommenderConfig | None = None,
    ) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GroupKFold
        from sklearn.preprocessing import StandardScaler

        self.settings = settings = settings or RecommenderConfig()
        turns = list(turns)
        if not recommendation_turns(turns):
            raise DataError("recommender: no training turn suggests a movie (meta.gold_movies)")
        self._vocab = vocab = _Vocab(turns, catalogue)
        self.items = vocab.items
        sentiment = Sentiment()
        rng = np.random.default_rng(settings.seed)
        groups = [t.group for t in turns]
        n_folds = min(settings.folds, len(set(groups)))
        xs, ys = [], []
        if n_folds >= 2:
            for fit_idx, held_idx in GroupKFold(n_splits=n_folds).split(turns, groups=groups):
                signals = _Signals([turns[i] for i in fit_idx], vocab, sentiment, settings)
                for i in held_idx:
                    t = turns[i]
                    gold = vocab.cols(t.gold)
                    if not gold:
                        continue
                    feats = signals.features(t)
                    rows = _candidates(
                        feats, gold, settings.hard_negatives, settings.random_negatives, rng
                    )
                    xs.append(feats[rows])
                    ys.append(np.isin(rows, gold).astype(int))
        self._signals = _Signals(turns, vocab, sentiment, settings)
        self._scaler = StandardScaler()
        self._blend = LogisticRegression(C=settings.c, max_iter=1000)
        if xs and len({int(v) for y in ys for v in y}) == 2:
            x = np.vstack(xs)
            self._blend.fit(self._scaler.fit_transform(x), np.concatenate(ys))
            self.weights = dict(zip(FEATURES, self._blend.coef_[0].tolist(), strict=True))
        else:  # too few dialogues to hold any out: an even blend of the standardised signals
            self._scaler.fit(np.vstack([self._signals.features(t) for t in turns[:50]]))
            self.weights = dict.fromkeys(FEATURES, 1.0)
            self._blend = None

    def scores(self, turn: RecTurn) -> np.ndarray:
        return self._scores(self._signals, turn)

    def _scores(self, signals: _Signals, turn: RecTurn) -> np.ndarray:
        x = self._scaler.transform(signals.features(turn))
        if self._blend is not None:
            s = self._blend.decision_function(x)
        else:
            s = x @ np.array([self.weights[f] for f in FEATURES])
        if self.settings.demote:
            # below the lowest fresh score, in the same order among themselves
            demoted = signals.demoted(turn)
            s[demoted] -= s.max() - s.min() + 1.0
        return s

    def cross_fitted_top_k(self, turns: Sequence[RecTurn], k: int) -> list[list[str]]:
        """The top ``k`` ids for each of ``turns`` (the ones it was fitted on), each ranked by
        signals fitted without that turn's dialogue: ``GroupKFold`` over dialogues
        (``recommender.folds``), the blend's weights kept (they were learnt on out-of-fold
        signals already). A model ranks its own training turns' gold near the top; candidates
        for training prompts must be as noisy as the ones a test prompt gets. With fewer than
        two dialogues (nothing to hold out) the full model ranks them."""
        from sklearn.model_selection import GroupKFold

        turns = list(turns)
        groups = [t.group for t in turns]
        n_folds = min(self.settings.folds, len(set(groups)))
        if n_folds < 2:
            return [top_k(self, t, k) for t in turns]
        out: list[list[str]] = [[] for _ in turns]
        sentiment = Sentiment()
        for fit_idx, held_idx in GroupKFold(n_splits=n_folds).split(turns, groups=groups):
            fit = [turns[i] for i in fit_idx]
            ranker: Ranker = self
            if recommendation_turns(fit):
                ranker = _FoldRanker(self, _Signals(fit, self._vocab, sentiment, self.settings))
            for i in held_idx:
                out[i] = top_k(ranker, turns[i], k)
        return out

    def save(self, directory: str | Path) -> Path:
        """Write the fitted model to ``directory/recommender.pkl`` (pickle, as scikit-learn
        documents for its estimators; only ever read back from our own ``models/``)."""
        path = Path(directory) / MODEL_FILE
        path.write_bytes(pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL))
        return path


@dataclass(frozen=True)
class _FoldRanker:
    """A :class:`Recommender`'s blend over signals fitted on part of its training turns."""

    model: Recommender
    signals: _Signals

    @property
    def items(self) -> list[str]:
        return self.model.items

    def scores(self, turn: RecTurn) -> np.ndarray:
        return self.model._scores(self.signals, turn)


def candidate_hit_rate(turns: Sequence[RecTurn], candidates: Sequence[Sequence[str]]) -> float:
    """Fraction of the turns that suggest a movie whose candidates hold one of their gold
    movies (the best hit rate a reply grounded in them can reach); NaN when none suggests."""
    hits = [bool(set(t.gold) & set(c)) for t, c in zip(turns, candidates, strict=True) if t.gold]
    return float(np.mean(hits)) if hits else float("nan")


def load(directory: str | Path) -> Recommender:
    """The :class:`Recommender` a stage saved in ``directory``."""
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise DataError(f"{path}: no recommender (run `rlhf-lab train_recommender` first)")
    model = pickle.loads(path.read_bytes())  # only our own stage writes models/recommender
    if not isinstance(model, Recommender):
        raise DataError(f"{path}: not a recommender")
    return model


def fit_with_baselines(
    turns: Sequence[RecTurn], catalogue: Iterable[str], settings: RecommenderConfig
) -> tuple[Recommender, dict[str, Ranker], float]:
    """Ours, then ours and both baselines fitted on ``turns`` by their metric names (ours first,
    so :func:`rlhf_lab.evaluation.recommender.compare` tests it against each), and our fit's
    seconds."""
    ids = list(catalogue)
    start = time.perf_counter()
    model = Recommender(turns, ids, settings)
    seconds = time.perf_counter() - start
    systems: dict[str, Ranker] = {
        "recommender": model,
        "baseline_popularity": Popularity(turns, ids),
        "baseline_cooccurrence": CoOccurrence(turns, ids),
    }
    return model, systems, seconds


def candidates(ranker: Ranker, row: Mapping[str, Any], k: int) -> list[str]:
    """The top ``k`` movie ids ``ranker`` gives the crs prompt ``row``, best first."""
    return top_k(ranker, turn_from_row(row), k)
