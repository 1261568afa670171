"""Free-text questions over the knowledge base: BM25 ranking, offline and deterministic.

Every entry becomes one document: its title and aliases (repeated, so a match there weighs more),
brief, full explanation, misconceptions and paper titles. Words are lower-cased, British
spellings folded to American ones and light suffixes stripped, so "normalisation" and
"normalizations" meet. A small synonym table expands the question with the words the entries
use ("peek" -> "leak", "future", "causal"); expansions count half as much as the question's own
words.

    >>> from dlzoo.agents.ask import ask
    >>> ask("why divide query-key products by the square root of the head size?")[0].id
    'scaled-dot-product-attention'
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from .theory import Entry, Paper, load_knowledge

_STOPWORDS = frozenset("""
a an and are as at be been being but by can could do does doing did for from had has have how i if
in into is it its itself me my no not of on or our so some such than that the their them then there
these they this those to too us very was we were what when where which while who whom why will with
would you your should shall may might must just also about after before over under again more most
other only own same both each few any all get got make makes made one ones use used using""".split())

# Question words -> words the entries use. Keys and values are stems (after _stem).
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "nan": ("non-finite", "overflow", "inf"), "inf": ("overflow", "nan"),
    "blow": ("explod", "diverg"), "explod": ("diverg", "clip"), "unstabl": ("diverg", "spike", "stabl"),
    "instabil": ("diverg", "spike", "stabl"), "fp16": ("half", "precision"), "half": ("fp16", "bf16", "precision"),
    "order": ("position", "permutation"), "word": ("token",), "pad": ("padd", "mask"),
    "padd": ("pad", "mask"), "futur": ("causal", "leak"), "peek": ("causal", "leak", "futur"),
    "cheat": ("leak", "causal"), "memoriz": ("random", "label", "capacit"), "shortcut": ("residual", "skip"),
    "skip": ("residual", "shortcut"), "vanish": ("gradient", "residual"), "deep": ("depth",),
    "depth": ("deep", "layer"), "sparse": ("prun", "lottery"), "prun": ("lottery", "sparse"),
    "robust": ("adversarial",), "attack": ("adversarial", "perturbation"), "fool": ("adversarial", "perturbation"),
    "perturbation": ("adversarial",), "warm": ("warmup",), "ramp": ("warmup",),
    "rate": ("learning",), "lr": ("learning", "rate"), "step": ("learning", "rate"), "curvatur": ("sharpnes", "hessian"),
    "flat": ("sharpnes", "minima"), "shift": ("translation", "equivarianc"), "symmetry": ("equivarianc", "invarianc"),
    "classifier": ("cls", "pool"), "summary": ("cls", "pool"), "image": ("patch", "pixel"),
    "picture": ("image", "patch"), "sentenc": ("sequenc", "cls"), "confidenc": ("calibration", "smooth"),
    "overconfident": ("calibration", "smooth", "label"), "compress": ("bottleneck", "information"),
    "ensembl": ("dropout",), "generaliz": ("generalization", "overfitt"), "overfit": ("overfitt", "generaliz"),
    "param": ("parameter",), "parameter": ("capacit",), "bigger": ("capacit", "size", "larger"),
    "larger": ("capacit", "size"), "scale": ("varianc", "sqrt"), "root": ("sqrt",), "squar": ("sqrt",),
    "head": ("head", "d_k"), "saturat": ("softmax",), "decay": ("weight", "schedul"),
    "regulariz": ("weight", "decay", "dropout"), "share": ("ti", "tied"), "reus": ("ti", "tied"),
    "same": ("ti", "shar"), "downsampl": ("stride",), "resolution": ("stride", "patch"),
    "mean": ("averag", "statistic"), "averag": ("mean",), "statistic": ("running", "mean", "varianc"),
    "precision": ("fp16", "bf16"), "memory": ("precision", "fp16"), "hide": ("mask",), "blank": ("mask",),
    "fill": ("mask", "cloz"), "predict": ("objectiv",), "smooth": ("gelu", "label"),
    "nonlinear": ("activation", "gelu"), "relu": ("gelu", "activation"), "start": ("init", "initialization"),
    "begin": ("init", "initialization"), "random": ("init",), "loss": ("loss",),
}


def _stem(word: str) -> str:
    word = re.sub(r"is(e|ed|es|ing|ation|ations|er|ers)$", r"iz\1", word)  # British -> American
    for suffix, keep in (("ies", "y"), ("sses", "ss"), ("ings", ""), ("ing", ""), ("ations", "ation"),
                         ("ed", ""), ("es", "e"), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                continue
            return word[: len(word) - len(suffix)] + keep
    return word


def tokenize(text: str) -> list[str]:
    """Lower-cased stems of the words of ``text`` without stop words."""
    words = re.findall(r"[a-z0-9]+(?:[-_/.][a-z0-9]+)*", text.lower())
    tokens = []
    for word in words:
        parts = [word] + (re.split(r"[-_/.]", word) if re.search(r"[-_/.]", word) else [])
        tokens.extend(_stem(p) for p in parts if p not in _STOPWORDS and len(p) > 1)
    return tokens


def _document(entry: Entry) -> list[str]:
    names = " ".join([entry.title, entry.id, *entry.aliases])
    text = " ".join([entry.brief, entry.brief, entry.full, *entry.misconceptions,
                     *(p.title for p in entry.papers)])
    return tokenize(names) * 3 + tokenize(text)


@functools.lru_cache(maxsize=1)
def _index():
    from rank_bm25 import BM25Okapi

    entries = list(load_knowledge().values())
    return entries, BM25Okapi([_document(e) for e in entries])


def expand(question: str) -> dict[str, float]:
    """Query terms with weights: the question's own stems 1.0, synonym expansions 0.5."""
    weights: dict[str, float] = {}
    for token in tokenize(question):
        weights[token] = weights.get(token, 0.0) + 1.0
    for token in list(weights):
        for extra in _SYNONYMS.get(token, ()):
            for stem in tokenize(extra):
                weights.setdefault(stem, 0.5)
    return weights


@dataclass(frozen=True)
class Answer:
    id: str
    title: str
    score: float
    brief: str
    passage: str
    papers: tuple[Paper, ...]

    def to_dict(self) -> dict:
        return {"id": self.id, "title": self.title, "score": round(self.score, 4), "brief": self.brief,
                "passage": self.passage,
                "papers": [{"authors": p.authors, "title": p.title, "year": p.year} for p in self.papers]}


def _best_paragraph(entry: Entry, terms: dict[str, float]) -> str:
    paragraphs = [" ".join(p.split()) for p in entry.full.split("\n\n") if p.strip()]
    return max(paragraphs, key=lambda p: sum(terms.get(t, 0.0) for t in set(tokenize(p))))


def ask(question: str, k: int = 3) -> list[Answer]:
    """The ``k`` best entries for ``question``, best first; empty when nothing matches."""
    entries, bm25 = _index()
    terms = expand(question)
    scores = [0.0] * len(entries)
    for term, weight in terms.items():
        for i, s in enumerate(bm25.get_scores([term])):
            scores[i] += weight * float(s)
    ranked = sorted(range(len(entries)), key=lambda i: (-scores[i], entries[i].id))
    return [Answer(entries[i].id, entries[i].title, scores[i], entries[i].brief,
                   _best_paragraph(entries[i], terms), entries[i].papers)
            for i in ranked[:k] if scores[i] > 0]
