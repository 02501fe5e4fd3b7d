"""Server-sent events on the wire, and the pump that writes a turn's events with keep-alive comments between them.

Both runtimes write through :func:`pump`: the local HTTP server to its socket, the deployed answer function to
Lambda's response stream. While nothing is ready (the retrieval workflow, a slow model) a comment line goes out
every ``keepalive_s``, so no idle timeout on the way (API Gateway's 5 minutes on a regional endpoint, a proxy's
shorter one) cuts an answer that is merely slow. A write that fails means the client went away: the turn is
closed, which stops the model and stores what was said as ``stopped``.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator

from shardrag.chat.records import ChatEvent

KEEPALIVE = b": keep-alive\n\n"
#: Seconds between keep-alive comments while no event is ready.
DEFAULT_KEEPALIVE_S = 10.0
_END = object()


def format_event(event: ChatEvent) -> bytes:
    """One event in the text/event-stream format: a name line, one data line of JSON, a blank line."""
    return f"event: {event.event}\ndata: {json.dumps(event.data, ensure_ascii=False)}\n\n".encode()


class ClientGone(Exception):
    """The client closed the connection while events were being written."""


def pump(
    events: Iterator[ChatEvent],
    write: Callable[[bytes], None],
    *,
    keepalive_s: float = DEFAULT_KEEPALIVE_S,
) -> bool:
    """Write every event of ``events`` with ``write``; returns ``False`` when the client went away first.

    The events are produced in a thread of their own so that keep-alives can be written while it waits; when a
    write fails, the producer closes ``events`` at its next step (a generator cannot be closed from another
    thread while it runs), which stops generation there.
    """
    ready: queue.Queue[object] = queue.Queue(maxsize=64)
    cancelled = threading.Event()

    def produce() -> None:
        try:
            for event in events:
                if cancelled.is_set():
                    break
                ready.put(event)
                if cancelled.is_set():
                    break
        finally:
            close = getattr(events, "close", None)
            if cancelled.is_set() and close is not None:
                close()
            ready.put(_END)

    producer = threading.Thread(target=produce, daemon=True, name="chat-events")
    producer.start()
    delivered = True
    while True:
        try:
            item = ready.get(timeout=keepalive_s)
        except queue.Empty:
            item = None
        if item is _END:
            break
        try:
            write(KEEPALIVE if item is None else format_event(item))  # type: ignore[arg-type]
        except (OSError, ClientGone):
            delivered = False
            cancelled.set()
            # Drain so the producer is never blocked on a full queue; it ends at its next step.
            while ready.get() is not _END:
                pass
            break
    producer.join()
    return delivered
