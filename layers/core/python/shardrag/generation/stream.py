"""Streamed answers: what a generator hands back when it is asked to stream.

An :class:`AnswerStream` knows, before its first token, which passages the answer may cite (``citations``: the
``[n]`` of the text refer to them), then yields the text in pieces as the model produces it. Closing it early
(the client went away) closes the model's response too, so nothing keeps generating for nobody.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

from shardrag.generation.prompt import cited_refs
from shardrag.records import Answer, Citation, Hit


class AnswerStream:
    """Text deltas of one answer, with the citable passages up front and usage at the end."""

    def __init__(
        self,
        *,
        model: str,
        citations: Sequence[Citation],
        produce: Callable[[AnswerStream], Iterator[str]],
    ) -> None:
        self.model = model
        self.citations = list(citations)
        #: Filled by the producer as the model reports it: input/output tokens, the stop reason.
        self.usage: dict[str, Any] = {}
        self.finish_reason = ""
        self._parts: list[str] = []
        self._iterator = produce(self)
        self.closed = False

    def __iter__(self) -> Iterator[str]:
        for part in self._iterator:
            if part:
                self._parts.append(part)
                yield part

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def close(self) -> None:
        """Stop generating (the producer's ``finally`` closes the model's response)."""
        self.closed = True
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()

    def answer(self) -> Answer:
        """The answer so far: its text and the citations it actually cites (all of them when it cites none)."""
        text = self.text.strip()
        refs = set(cited_refs(text))
        cited = [c for c in self.citations if c.ref in refs] or ([] if not text else list(self.citations))
        return Answer(text=text, citations=cited, model=self.model)


def fixed_stream(answer: Answer, parts: Sequence[str]) -> AnswerStream:
    """A stream of an answer already known in full (no model to wait for): its pieces, one by one."""

    def produce(stream: AnswerStream) -> Iterator[str]:
        yield from parts
        stream.finish_reason = "end_turn"

    return AnswerStream(model=answer.model, citations=answer.citations, produce=produce)


@runtime_checkable
class StreamingGenerator(Protocol):
    """A generator that can also stream: ``stream`` starts the answer and returns before the model finishes."""

    @property
    def name(self) -> str: ...

    def run(self, question: str, hits: Sequence[Hit]) -> Answer: ...

    def stream(self, question: str, hits: Sequence[Hit]) -> AnswerStream: ...
