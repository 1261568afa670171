"""Free-text questions over the knowledge base: BM25 ranking and a decline rule, offline and deterministic.

Every entry becomes one document: its names (title, id, aliases and ``keywords``, the reviewed
words users type that the text may lack), counted three times; its brief, twice; its intro,
practice, full text, derivations, misconceptions and paper titles, once. Words are lower-cased,
accents dropped, British spellings folded to American ones and reduced to their Snowball
(Porter 2) English stem, so "spiked", "spikes" and "spike" meet. A question word that is in no
document is matched to the nearest document word when one is close enough (difflib ratio >= 0.8:
"lerning" -> "learning"; a word common in general English, "summer", is never taken for a typo).
Generic words ("explain", "theory", "paper", "epoch", ...) carry no weight, so they cannot decide
the ranking; every other word weighs by its ``informativeness`` in general English (wordfreq's
Zipf frequency: "before", "middle", "big" weigh little, "gradient", "softmax" fully, numbers
nothing), so an everyday word that happens to be rare in the knowledge base does not count as
much as the topic.

The best entry is returned only when a small logistic regression over the ranking
(``decline_features``: the share of the question's weight the entry contains, its BM25 score, its
lead over the second, the share of the question in words no entry contains, the strongest word the
entry lacks and the strongest it has) does not call the question out of scope; otherwise the answer
is declined and the nearest entries are offered as related. The rule was fitted on the tuning
material only (agents/ask_fit.py); the held-out numbers are in docs/ask.md.

    >>> from dlzoo.agents.ask import answer
    >>> answer("why divide query-key products by the square root of the head size?").answers[0].id
    'scaled-dot-product-attention'
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import unicodedata
from dataclasses import dataclass, field

from .theory import Entry, Paper, load_knowledge

# The decline rule: a logistic regression over six features of the ranking (``decline_features``),
# fitted on the tuning material only by ``python -m dlzoo.agents.ask_fit`` (which prints these
# lines); a question is declined when its out-of-scope log-odds exceed DECLINE_LOGIT.
DECLINE_FEATURES = ("coverage", "log_score", "lead", "unknown_share", "max_uncovered", "max_covered")
DECLINE_WEIGHTS = (-5.5031, -3.4889, -0.3507, -2.5821, 0.804, 1.3676)
DECLINE_BIAS = 4.6075
DECLINE_LOGIT = 0.3628
K1, B = 1.5, 0.75  # BM25 (Okapi) term saturation and length normalisation
UNKNOWN_IDF = 1.0  # weight of a word no entry contains, as a fraction of the largest IDF
NAME_REPEAT, BRIEF_REPEAT = 3, 2  # an entry's names and brief count this many times in its document
PHRASE_BONUS = 1.0  # added to the BM25 score per word of a multi-word name found as a phrase
_TYPO_CUTOFF = 0.8  # difflib ratio for an unknown word to count as a misspelling of a known one
# General-English informativeness (wordfreq Zipf scale: log10 of occurrences per billion words).
# A word at least as common as ZIPF_NONE ("before" 5.9, "big" 5.7) weighs nothing, one at most as
# common as ZIPF_FULL ("gradient" 3.5, "softmax" 1.3) weighs fully, linear in between.
ZIPF_NONE = 7.0
ZIPF_FULL = 3.0
TYPO_ZIPF = 2.0  # a word commoner than this ("summer", "tanks") is a word, not a misspelling

_STOPWORDS = frozenset(
    """
a an and are as at be been being but by can could do does doing did for from had has have how i if
in into is it its itself me my no not of on or our so some such than that the their them then there
these they this those to too us very was we were what whats when where which while who whom why will
with would you your should shall may might must just also about over under again more
most other only own same both each few any all get gets got make makes made one ones use used using
im ive dont doesnt isnt arent wont cant vs versus really actually please thanks hi hey ok okay
""".split()
)

# Words that say what kind of answer is wanted, not what it is about. Their stems get no weight:
# otherwise a rare one ("theory" appears in few entries) decides the ranking.
_GENERIC = frozenset(
    """
explain explained theory theories theoretical paper papers epoch epochs question questions
understand understanding intuition intuitive concept concepts idea ideas detail details
basic basics overview summary tell know help happen happens happening thing things way work works
working mean means meaning difference different differ point purpose reason reasons good better best
bad worse problem problems issue issues anyone someone something somebody guys eli5 example examples
inference
""".split()
)


# Abbreviations users type, spelled out before stemming. Topic vocabulary lives in each entry's
# ``keywords``; this table only holds general shorthand that belongs to no single entry.
_SHORTHAND = {
    "net": "network",
    "nets": "networks",
    "nn": "neural network",
    "nns": "neural networks",
    "lr": "learning rate",
    "lrs": "learning rates",
    "val": "validation",
    "llm": "large language model",
    "llms": "large language models",
    "lm": "language model",
    "convnet": "convolutional network",
    "convnets": "convolutional networks",
    "dl": "deep learning",
    "ml": "machine learning",
    "param": "parameter",
    "params": "parameters",
    "hparams": "hyperparameters",
    "grad": "gradient",
    "grads": "gradients",
    "info": "information",
    "init": "initialization",
    "attn": "attention",
    "emb": "embedding",
    "embs": "embeddings",
    "seq": "sequence",
    "seqs": "sequences",
    "dim": "dimension",
    "dims": "dimensions",
    "bs": "batch size",
    "wd": "weight decay",
    "ckpt": "checkpoint",
    "acc": "accuracy",
    "prob": "probability",
    "probs": "probabilities",
    "gd": "gradient descent",
    "autodiff": "automatic differentiation",
    "ood": "out of distribution",
    "nlp": "natural language processing",
    "layernorm": "layer norm",
    "batchnorm": "batch norm",
    "groupnorm": "group norm",
    "chatgpt": "chatgpt large language model",
    "gpt4": "gpt4 large language model",
    "llama": "llama large language model",
    "claude": "claude large language model",
}


# "1b", "125m", "7B" parameters or tokens: the magnitude is the informative part.
_MAGNITUDES = {"k": "thousand", "m": "million", "b": "billion", "t": "trillion"}
_MAGNITUDE = re.compile(r"^[0-9]+(?:\.[0-9]+)?([kmbt])$")


def _fold(word: str) -> str:
    """British -> American spelling for the -ise/-isation family (normalise -> normalize)."""
    return re.sub(r"is(e|ed|es|ing|ation|ations|er|ers)$", r"iz\1", word)


@functools.lru_cache(maxsize=1)
def _stemmer():
    import snowballstemmer

    return snowballstemmer.stemmer("english")


def _words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    out = []
    for word in re.findall(r"[a-z0-9]+(?:['\-_/.][a-z0-9]+)*", text):
        word = word.replace("'", "")
        word = _MAGNITUDE.sub(lambda m: _MAGNITUDES[m.group(1)], word)
        if word in _SHORTHAND:
            out.extend(_fold(w) for w in _SHORTHAND[word].split() if w not in _STOPWORDS)
            continue
        parts = re.split(r"[-_/.]", word) if re.search(r"[-_/.]", word) else []
        for w in [word.replace("-", "").replace("_", "")] + parts if parts else [word]:
            if len(w) > 1 and w not in _STOPWORDS:
                out.append(_fold(w))
    return out


@functools.lru_cache(maxsize=8192)
def stem(word: str) -> str:
    return _stemmer().stemWord(word)


def tokenize(text: str) -> list[str]:
    """Stems of the words of ``text``: lower-cased, accents dropped, stop words removed,
    British spellings folded, Snowball English stemmer; a hyphenated word also counts as its parts."""
    return [stem(w) for w in _words(text)]


def _document(entry: Entry) -> list[str]:
    names = " ".join([entry.title, entry.id, *entry.aliases, *entry.keywords])
    text = " ".join(
        [
            *[entry.brief] * BRIEF_REPEAT,
            entry.intro,
            entry.practice,
            entry.full,
            entry.deep,
            *entry.misconceptions,
            # Users name papers by their authors ("kirkpatrick 2017", "frankle and carbin").
            *(f"{p.title} {p.authors}" for p in entry.papers),
        ]
    )
    return tokenize(names) * NAME_REPEAT + tokenize(text)


@dataclass(frozen=True)
class _Index:
    entries: list[Entry]
    bm25: object
    docs: list[frozenset]
    idf: dict[str, float]
    words: dict[str, str]  # surface word (folded) -> stem, over all documents
    max_idf: float
    phrases: list[tuple[tuple[str, ...], ...]]  # per entry: stem sequences of multi-word names


@functools.lru_cache(maxsize=1)
def _index() -> _Index:
    from rank_bm25 import BM25Okapi

    entries = list(load_knowledge().values())
    tokens = [_document(e) for e in entries]
    docs = [frozenset(t) for t in tokens]
    n = len(entries)
    df: dict[str, int] = {}
    for d in docs:
        for t in d:
            df[t] = df.get(t, 0) + 1
    # Lucene's non-negative BM25 IDF; a word in every document still weighs a little.
    idf = {t: math.log(1 + (n - k + 0.5) / (k + 0.5)) for t, k in df.items()}
    words: dict[str, str] = {}
    for e in entries:
        for w in _words(" ".join([e.title, *e.aliases, *e.keywords, e.brief, e.intro, e.practice, e.full])):
            words.setdefault(w, stem(w))
    phrases = [
        tuple(sorted({p for p in (tuple(tokenize(name)) for name in (e.title, *e.aliases, *e.keywords)) if len(p) >= 2})) for e in entries
    ]
    return _Index(entries, BM25Okapi(tokens, k1=K1, b=B), docs, idf, words, UNKNOWN_IDF * math.log(1 + (n + 0.5) / 0.5), phrases)


def _contains(seq: list[str], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(tuple(seq[i : i + n]) == phrase for i in range(len(seq) - n + 1))


@functools.lru_cache(maxsize=1)
def _zipf():
    from wordfreq import zipf_frequency

    return zipf_frequency


@functools.lru_cache(maxsize=8192)
def informativeness(word: str) -> float:
    """How much ``word`` says about a topic, from its general-English frequency, in [0, 1].

    0 for a number and for a word as common as ``ZIPF_NONE`` or more, 1 for one as rare as
    ``ZIPF_FULL`` or rarer (or unknown to wordfreq), linear in the Zipf value in between.
    Source: wordfreq's ``zipf_frequency(word, "en")`` (Speer et al., wordfreq 3).
    """
    if re.fullmatch(r"[0-9]+(?:[.,][0-9]+)*(?:e-?[0-9]*)?", word):  # 2.3, 1e-8, 1e4
        return 0.0
    z = _zipf()(word, "en")
    return min(1.0, max(0.0, (ZIPF_NONE - z) / (ZIPF_NONE - ZIPF_FULL)))


def expand(question: str) -> dict[str, float]:
    """Query stems with weights: the word's general-English ``informativeness`` for each
    occurrence, 0 for generic words, times 0.8 for a misspelling matched to the nearest word of
    the knowledge base."""
    index = _index()
    generic = {stem(_fold(w)) for w in _GENERIC}
    weights: dict[str, float] = {}
    for word in _words(question):
        token = stem(word)
        weight = informativeness(word)
        if token in generic:
            weight = 0.0
        elif token not in index.idf and len(word) >= 5 and word.isalpha() and _zipf()(word, "en") < TYPO_ZIPF:
            # Only same-initial matches: users rarely mistype the first letter, and short or
            # differently-starting words ("tree" vs "three") are other words, not typos.
            close = difflib.get_close_matches(word, [w for w in index.words if w[0] == word[0]], n=1, cutoff=_TYPO_CUTOFF)
            if close:
                token, weight = index.words[close[0]], 0.8 * informativeness(close[0])
        weights[token] = weights.get(token, 0.0) + weight
    return weights


@dataclass(frozen=True)
class Answer:
    id: str
    title: str
    score: float
    coverage: float
    brief: str
    passage: str
    papers: tuple[Paper, ...]

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "title": self.title,
            "score": round(self.score, 4),
            "coverage": round(self.coverage, 4),
            "brief": self.brief,
            "passage": self.passage,
            "papers": [{"authors": p.authors, "title": p.title, "year": p.year} for p in self.papers],
        }


@dataclass(frozen=True)
class Response:
    """``answers``: the ranked entries (empty when declined); ``related``: the nearest entries
    offered when declined (empty otherwise); ``declined``: whether the question was declined."""

    question: str
    declined: bool
    answers: tuple[Answer, ...] = ()
    related: tuple[Answer, ...] = ()
    reason: str = ""
    terms: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "question": self.question,
            "declined": self.declined,
            "reason": self.reason,
            "answers": [a.to_dict() for a in self.answers],
            "sources": [a.id for a in self.answers],
            "related": [{"id": a.id, "title": a.title, "score": round(a.score, 4)} for a in self.related],
        }


def _best_paragraph(entry: Entry, terms: dict[str, float]) -> str:
    paragraphs = [" ".join(p.split()) for p in entry.full.split("\n\n") if p.strip()]
    return max(paragraphs, key=lambda p: sum(terms.get(t, 0.0) for t in set(tokenize(p))))


def _coverage(terms: dict[str, float], doc: frozenset, index: _Index) -> float:
    total = sum(w * index.idf.get(t, index.max_idf) for t, w in terms.items())
    if total <= 0:
        return 0.0
    return sum(w * index.idf[t] for t, w in terms.items() if t in doc) / total


def rank(question: str, k: int = 3) -> list[Answer]:
    """The ``k`` best entries for ``question`` by BM25, best first, whatever their coverage; empty
    when no informative word of the question occurs in any entry."""
    index = _index()
    terms = expand(question)
    scores = [0.0] * len(index.entries)
    for term, weight in terms.items():
        if weight and term in index.idf:
            for i, s in enumerate(index.bm25.get_scores([term])):
                scores[i] += weight * float(s)
    # A multi-word name of an entry said as a phrase ("weight decay", "computational graph") is
    # stronger evidence than its words scattered: each such phrase adds PHRASE_BONUS per word.
    sequence = tokenize(question)
    for i, phrases in enumerate(index.phrases):
        if scores[i] > 0:
            scores[i] += PHRASE_BONUS * sum(len(p) for p in phrases if _contains(sequence, p))
    order = sorted(range(len(index.entries)), key=lambda i: (-scores[i], index.entries[i].id))
    out = []
    for i in order[:k]:
        if scores[i] <= 0:
            break
        e = index.entries[i]
        out.append(Answer(e.id, e.title, scores[i], _coverage(terms, index.docs[i], index), e.brief, _best_paragraph(e, terms), e.papers))
    return out


def decline_features(terms: dict[str, float], ranked: list[Answer]) -> dict[str, float]:
    """What the decline rule reads, for the best entry of ``ranked`` (non-empty) and the weighted
    question ``terms`` of ``expand``. A word's weight here is its ``expand`` weight times its IDF
    (a word no entry contains: the largest IDF).

    - ``coverage``: the share of the question's weight the best entry contains;
    - ``log_score``: natural log of the best entry's BM25 score;
    - ``lead``: 1 - (second score / best score), 1 when there is no second entry;
    - ``unknown_share``: the share of the question's weight in words no entry contains;
    - ``max_uncovered``: the largest weight of a question word the best entry lacks ("gan" in a
      question about GANs), 0 when it lacks none;
    - ``max_covered``: the largest weight of a question word the best entry contains.
    """
    index = _index()
    doc = index.docs[[e.id for e in index.entries].index(ranked[0].id)]
    weighted = {t: w * index.idf.get(t, index.max_idf) for t, w in terms.items()}
    total = sum(weighted.values())
    return {
        "coverage": ranked[0].coverage,
        "log_score": math.log(ranked[0].score),
        "lead": 1 - ranked[1].score / ranked[0].score if len(ranked) > 1 else 1.0,
        "unknown_share": sum(v for t, v in weighted.items() if t not in index.idf) / total if total > 0 else 0.0,
        "max_uncovered": max([v for t, v in weighted.items() if t not in doc], default=0.0),
        "max_covered": max([v for t, v in weighted.items() if t in doc], default=0.0),
    }


def decline_logit(features: dict[str, float]) -> float:
    """Log-odds that the question is out of scope, from ``decline_features``."""
    return DECLINE_BIAS + sum(w * features[name] for name, w in zip(DECLINE_FEATURES, DECLINE_WEIGHTS))


def answer(question: str, k: int = 3) -> Response:
    """Rank the entries for ``question`` and decline when the best one does not answer it.

    Declined when no informative word matches, or when ``decline_logit`` of the best entry's
    ``decline_features`` exceeds ``DECLINE_LOGIT``; the ranked entries are then offered as
    ``related``.
    """
    terms = expand(question)
    ranked = rank(question, k=max(k, 3))
    if not ranked:
        return Response(question, True, reason="no word of the question occurs in the knowledge base", terms=terms)
    best = ranked[0]
    features = decline_features(terms, ranked)
    logit = decline_logit(features)
    if logit > DECLINE_LOGIT:
        return Response(
            question,
            True,
            related=tuple(ranked[:3]),
            terms=terms,
            reason=f"the closest entry ({best.id}) covers {best.coverage:.0%} of the question "
            f"(score {best.score:.1f}, {features['lead']:.0%} ahead of the next); "
            f"out-of-scope log-odds {logit:.1f} > {DECLINE_LOGIT:.1f}",
        )
    return Response(question, False, answers=tuple(ranked[:k]), terms=terms)


def ask(question: str, k: int = 3) -> list[Answer]:
    """The ``k`` best entries for ``question`` when it is answered; empty when declined."""
    return list(answer(question, k).answers)


def evaluate(path: str) -> dict:
    """Top-1 / top-3 accuracy and decline rates on a question file (tests/data/ask_*.toml):
    ``[[in_scope]]`` tables with ``q`` and ``expect`` (accepted ids), ``[[out_of_scope]]`` with ``q``.
    A declined in-scope question counts as wrong at top-1 and top-3."""
    import tomllib

    with open(path, "rb") as f:
        data = tomllib.load(f)
    inside, outside = data.get("in_scope", []), data.get("out_of_scope", [])
    misses, top1, top3, declined_in = [], 0, 0, 0
    for item in inside:
        r = answer(item["q"])
        ids = [a.id for a in r.answers]
        declined_in += r.declined
        top1 += bool(ids) and ids[0] in item["expect"]
        top3 += any(i in item["expect"] for i in ids[:3])
        if not ids or ids[0] not in item["expect"]:
            misses.append({"q": item["q"], "expect": item["expect"], "got": ids[:3] or ["declined: " + ",".join(a.id for a in r.related)]})
    answered_out = [item["q"] for item in outside if not answer(item["q"]).declined]
    return {
        "in_scope": len(inside),
        "top1": top1 / max(1, len(inside)),
        "top3": top3 / max(1, len(inside)),
        "in_scope_declined": declined_in / max(1, len(inside)),
        "out_of_scope": len(outside),
        "out_of_scope_declined": 1 - len(answered_out) / max(1, len(outside)),
        "misses": misses,
        "answered_out_of_scope": answered_out,
    }
