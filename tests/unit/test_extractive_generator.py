"""ExtractiveGenerator: quotes the best passages, cites what it quotes, never invents."""

from __future__ import annotations

import re

import pytest
from shardrag.generation import NOT_FOUND_ANSWER, ExtractiveGenerator, Generator
from shardrag.records import Hit


def _hit(i: int, text: str) -> Hit:
    return Hit(chunk_id=f"c{i}", doc_id=f"d{i}", score=1.0 - i / 10, text=text, source=f"s3://docs/{i}.md")


HITS = [
    _hit(
        1,
        "ShardRAG splits the corpus into shards. Each shard is a Milvus Lite file. "
        "The router hashes the document id to choose a shard.",
    ),
    _hit(2, "Bananas are yellow. They grow in tropical climates."),
    _hit(3, "A query visits every shard in parallel. Results are fused with reciprocal rank fusion."),
    _hit(4, "The fuser merges shard results. It keeps the payload under 256 KiB."),
]


def _quoted_sentences(text: str) -> list[tuple[str, int]]:
    return [(s.strip(), int(n)) for s, n in re.findall(r"(.+?) \[(\d+)\]", text)]


def test_is_a_generator() -> None:
    assert isinstance(ExtractiveGenerator(), Generator)
    assert ExtractiveGenerator().name == "extractive"


def test_quotes_the_most_relevant_sentences_and_cites_each() -> None:
    # GIVEN ranked hits, one of which answers the question
    generator = ExtractiveGenerator(passages=3)

    # WHEN asked how the router chooses a shard
    answer = generator.run("How does the router choose a shard?", HITS)

    # THEN the answer quotes the sentence that answers, followed by its citation marker
    assert "The router hashes the document id to choose a shard. [1]" in answer.text
    # AND nothing about bananas
    assert "Bananas" not in answer.text
    assert answer.model == "extractive"


def test_cites_exactly_the_passages_it_quotes() -> None:
    # GIVEN a question answered by a lower-ranked passage
    answer = ExtractiveGenerator(passages=3).run("How are shard results fused in parallel?", HITS)

    # THEN every quoted sentence is verbatim text of the passage its marker cites
    by_ref = {c.ref: c for c in answer.citations}
    quoted = _quoted_sentences(answer.text)
    assert quoted
    for sentence, ref in quoted:
        assert sentence in by_ref[ref].text
    # AND every citation is quoted at least once (no padding with unquoted sources)
    assert {ref for _, ref in quoted} == set(by_ref)
    # AND refs are numbered 1..n in order of appearance, whatever the passage's rank
    assert [c.ref for c in answer.citations] == list(range(1, len(answer.citations) + 1))
    assert by_ref[1].chunk_id == "c3" and by_ref[1].source == "s3://docs/3.md"


def test_reads_only_the_top_passages() -> None:
    # GIVEN a question answered only by the 4th-ranked hit
    answer = ExtractiveGenerator(passages=3).run("What keeps the payload under 256 KiB?", HITS)

    # THEN the generator does not reach past the 3 best, yet still cites what it quotes
    assert all(c.chunk_id != "c4" for c in answer.citations)
    assert answer.citations


def test_no_lexical_match_quotes_the_best_passage_opening_with_its_citation() -> None:
    # GIVEN a question sharing no word with the passages
    answer = ExtractiveGenerator().run("Wie funktioniert das?", HITS)

    # THEN the best-ranked passage's first sentence is quoted and cited
    assert answer.text == "ShardRAG splits the corpus into shards. [1]"
    assert [c.chunk_id for c in answer.citations] == ["c1"]


@pytest.mark.parametrize("hits", [[], [_hit(1, "   "), _hit(2, "... !!")]])
def test_no_hits_means_not_found_and_no_citations(hits: list[Hit]) -> None:
    # GIVEN nothing (or nothing with words) retrieved
    # WHEN asked
    answer = ExtractiveGenerator().run("What is a shard?", hits)

    # THEN the answer says nothing relevant was found and cites nothing
    assert answer.text == NOT_FOUND_ANSWER
    assert "not find" in answer.text
    assert answer.citations == []


def test_answer_is_bounded() -> None:
    # GIVEN many matching sentences and a very long one
    long_text = "shard " * 300
    hits = [_hit(1, ". ".join(f"Shard fact {i}" for i in range(20))), _hit(2, long_text)]

    # WHEN asked with a small sentence budget
    answer = ExtractiveGenerator(max_sentences=2, max_sentence_chars=80).run("shard fact", hits)

    # THEN at most two sentences are quoted, each at most the configured length (plus the ellipsis)
    quoted = _quoted_sentences(answer.text)
    assert 1 <= len(quoted) <= 2
    assert all(len(s) <= 82 for s, _ in quoted)


def test_is_deterministic() -> None:
    generator = ExtractiveGenerator()
    assert generator.run("shard router", HITS) == generator.run("shard router", list(HITS))


@pytest.mark.parametrize("kwargs", [{"passages": 0}, {"max_sentences": 0}, {"max_sentence_chars": 10}])
def test_constructor_rejects_invalid_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ExtractiveGenerator(**kwargs)


def test_factory_builds_the_extractive_default() -> None:
    from shardrag.config import GeneratorSettings
    from shardrag.generation import build_generator

    generator = build_generator(GeneratorSettings(extractive_passages=2))
    assert isinstance(generator, ExtractiveGenerator)
    assert generator.passages == 2
