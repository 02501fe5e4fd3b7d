"""Stop points inside embedding, the one long CPU step of a write.

Whoever owns the work may install a check for the current context that raises to abandon it; embedders call
:func:`stop_point` between their model runs. Ingestion uses it to stop embedding a version the bucket no longer
holds within a second, rather than at the end of a write batch (128 chunks, about 1.5 s on 2
cores): locally one event-source poller runs one invocation at a time, so the edit that replaced the version
waited for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_CHECK: ContextVar[Callable[[], None] | None] = ContextVar("shardrag_embedding_stop_check", default=None)


def stop_point() -> None:
    """Run the installed check, if any (it raises to stop the work)."""
    check = _CHECK.get()
    if check is not None:
        check()


@contextmanager
def stoppable(check: Callable[[], None]) -> Iterator[None]:
    """Embedding in this block calls ``check`` between model runs."""
    token = _CHECK.set(check)
    try:
        yield
    finally:
        _CHECK.reset(token)
