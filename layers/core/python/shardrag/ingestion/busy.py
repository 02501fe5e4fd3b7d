"""A key that another worker holds is retried in seconds, not after the queue's visibility timeout.

An event answered BUSY (``Reason.BUSY``: a live lease that is not preemptible, a run's last steps) fails its
SQS record, and SQS shows it again only when its visibility timeout runs out: 30 s locally, and deployed six
times the function's timeout (1,800 s at 300 s, AWS's advice for SQS event sources). The owner is usually done in
seconds, so the record's visibility is set to a short delay that doubles with each receive."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)
BASE_DELAY_S = 2
MAX_DELAY_S = 60


def busy_delay_s(receive_count: int) -> int:
    """2, 4, 8 … seconds for the 1st, 2nd, 3rd … receive, at most a minute."""
    return min(MAX_DELAY_S, BASE_DELAY_S * (1 << min(max(0, receive_count - 1), 10)))


def retry_busy_soon(client: Any, queue_url: str, receipt_handle: str, receive_count: int) -> int | None:
    """Make the record visible again after :func:`busy_delay_s`; the delay set, or ``None`` if SQS refused (the
    record then waits for its visibility timeout, as before: slower, never lost)."""
    delay = busy_delay_s(receive_count)
    try:
        client.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=delay)
    except Exception:
        log.warning("could not shorten a busy record's visibility; it waits for the queue's timeout", exc_info=True)
        return None
    return delay
