"""The query-embedding cache: a question asked again (by anyone, in any mode) is not embedded again by the
same container."""

from __future__ import annotations

import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable


def normalise_question(question: str) -> str:
    """The form questions are compared in: Unicode NFC (canonically equal texts are equal) and runs of
    whitespace as one space, trimmed. Nothing that could change what the model or a generator reads (case,
    punctuation, compatibility forms) is folded."""
    return " ".join(unicodedata.normalize("NFC", question).split())


class QueryEmbeddingCache:
    """A bounded LRU of query vectors keyed by the model's id and the normalised question; thread-safe (the
    local runtime runs executions in threads). ``max_entries`` 0 turns it off."""

    def __init__(self, embed: Callable[[str], list[float]], *, model_id: str, max_entries: int) -> None:
        self._embed = embed
        self._model_id = model_id
        self._max = max_entries
        self._entries: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, question: str) -> list[float]:
        if self._max <= 0:
            return self._embed(question)
        key = (self._model_id, normalise_question(question))
        with self._lock:
            vector = self._entries.get(key)
            if vector is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return list(vector)
        # Embedded outside the lock: two threads that miss on the same question both embed it (same vector).
        vector = self._embed(key[1])
        with self._lock:
            self.misses += 1
            self._entries[key] = list(vector)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return list(vector)
