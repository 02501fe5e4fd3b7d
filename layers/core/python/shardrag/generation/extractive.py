"""An answer built from the retrieved passages themselves: no model, no invented content.

The local default and the fallback when no model is configured. It quotes the sentences of the best passages
that share the most words with the question, each followed by the ``[n]`` of the passage it comes from.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from shardrag.generation.prompt import NOT_FOUND_ANSWER, make_citation
from shardrag.generation.stream import AnswerStream, fixed_stream
from shardrag.records import Answer, Citation, Hit

# A sentence ends at . ! ? (optionally followed by a closing quote or bracket) before whitespace, or at a
# blank line; good enough for prose and bullet lists without a language model.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*\n")
_WORD = re.compile(r"\w+", re.UNICODE)
_SPACES = re.compile(r"\s+")

# Words that carry no topic: matching them says nothing about relevance.
_STOPWORD_TEXT = """
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
him his how i if in into is it its itself just me more most my no nor not now of off on once only or other our
ours out over own same she should so some such than that the their theirs them then there these they this
those through to too under until up very was we were what when where which while who whom why will with would
you your yours
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def _terms(text: str) -> set[str]:
    """Content words of ``text``, lower-cased, with a crude plural strip so that 'shards' matches 'shard'."""
    terms = set()
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        terms.add(word)
    return terms


@dataclass(frozen=True, slots=True)
class _Sentence:
    rank: int  # the passage's rank among the quoted candidates, 0 = best
    position: int  # index of the sentence within its passage
    text: str
    terms: frozenset[str]


class ExtractiveGenerator:
    """Answers with the sentences of the top passages most relevant to the question, always cited.

    ``passages`` bounds how many of the best hits are read; ``max_sentences`` bounds the answer. A sentence
    scores by the question words it contains, each weighted by how rare it is among the candidate sentences
    (a word every passage repeats tells sentences apart no better than a stopword); sentences scoring at least
    half the best score are quoted, ties going to the better-ranked passage and the earlier sentence. When no
    sentence shares a word with the question, the opening sentence of the best passage is quoted: retrieval
    ranked it first by meaning, and a cited quote is still no invention.
    """

    def __init__(self, *, passages: int = 3, max_sentences: int = 3, max_sentence_chars: int = 400) -> None:
        if passages < 1:
            raise ValueError("passages must be at least 1")
        if max_sentences < 1:
            raise ValueError("max_sentences must be at least 1")
        if max_sentence_chars < 40:
            raise ValueError("max_sentence_chars must be at least 40")
        self.passages = passages
        self.max_sentences = max_sentences
        self.max_sentence_chars = max_sentence_chars

    @property
    def name(self) -> str:
        return "extractive"

    def run(self, question: str, hits: Sequence[Hit]) -> Answer:
        """Quote the most relevant sentences of the best ``passages`` hits, each with its citation."""
        answer, _ = self._compose(question, hits)
        return answer

    def stream(self, question: str, hits: Sequence[Hit]) -> AnswerStream:
        """The same answer as :meth:`run`, one cited sentence at a time (there is no model to wait for, so the
        stream's pace is the client's)."""
        answer, parts = self._compose(question, hits)
        pieces: list[str] = []
        for i, part in enumerate(parts):
            # A quoted sentence, then the marker that cites it: the marker arrives once its sentence is complete.
            sentence, space, marker = part.rpartition(" [")
            tail = " " if i < len(parts) - 1 else ""
            pieces += [sentence, f"{space}{marker}{tail}"] if space else [part + tail]
        return fixed_stream(answer, pieces)

    def _compose(self, question: str, hits: Sequence[Hit]) -> tuple[Answer, list[str]]:
        candidates = self._candidates(hits)
        sentences = [sentence for rank, hit in enumerate(candidates) for sentence in self._sentences(rank, hit.text)]
        if not sentences:
            return Answer(text=NOT_FOUND_ANSWER, citations=[], model=self.name), [NOT_FOUND_ANSWER]
        chosen = self._select(_terms(question), sentences)

        # Number only the passages actually quoted, in the order they appear in the answer.
        refs: dict[int, int] = {}
        parts: list[str] = []
        for sentence in chosen:
            ref = refs.setdefault(sentence.rank, len(refs) + 1)
            parts.append(f"{sentence.text} [{ref}]")
        citations: list[Citation] = [make_citation(ref, candidates[rank]) for rank, ref in refs.items()]
        return Answer(text=" ".join(parts), citations=citations, model=self.name), parts

    def _candidates(self, hits: Sequence[Hit]) -> list[Hit]:
        """The best ``passages`` hits with text, one per chunk (a chunk may come back from two shards)."""
        chosen: list[Hit] = []
        seen: set[str] = set()
        for hit in hits:
            if _WORD.search(hit.text) and hit.chunk_id not in seen:
                seen.add(hit.chunk_id)
                chosen.append(hit)
                if len(chosen) == self.passages:
                    break
        return chosen

    def _select(self, wanted: set[str], sentences: list[_Sentence]) -> list[_Sentence]:
        """The sentences to quote, in reading order: best passage first, its sentences as they appear."""
        frequency = Counter(term for sentence in sentences for term in sentence.terms & wanted)
        weight = {term: math.log(1 + len(sentences) / count) for term, count in frequency.items()}
        # Summed in sorted order: set order varies between processes, and float sums with it.
        scored = [(sum(weight[t] for t in sorted(s.terms & wanted)), s) for s in sentences]
        best = max(score for score, _ in scored)
        if best == 0:
            chosen = [min(sentences, key=lambda s: (s.rank, s.position))]
        else:
            ranked = sorted(scored, key=lambda item: (-item[0], item[1].rank, item[1].position))
            chosen = [s for score, s in ranked[: self.max_sentences] if score >= best / 2]
        return sorted(chosen, key=lambda s: (s.rank, s.position))

    def _sentences(self, rank: int, text: str) -> list[_Sentence]:
        sentences = []
        for position, raw in enumerate(_SENTENCE_END.split(text)):
            sentence = _SPACES.sub(" ", raw).strip()
            if not _WORD.search(sentence):
                continue
            if len(sentence) > self.max_sentence_chars:
                cut = sentence[: self.max_sentence_chars].rsplit(" ", 1)[0]
                sentence = f"{cut} …"
            terms = frozenset(_terms(sentence))
            sentences.append(_Sentence(rank=rank, position=position, text=sentence, terms=terms))
        return sentences
