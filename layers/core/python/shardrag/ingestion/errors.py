"""Why an object could not be indexed, and whether trying again can help.

A *permanent* rejection (the bytes are what they are) is recorded in the registry and the message is
acknowledged: retrying would only fill the dead-letter queue. A *transient* failure (a throttled or unreachable
dependency) is reported as a batch item failure so SQS redelivers it, and after ``maxReceiveCount`` receipts it
lands in the dead-letter queue.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Reason codes stored in the registry's ``reason`` attribute (stable: dashboards and alarms read them)."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    UNSUPPORTED_TYPE = "unsupported_type"
    BINARY_CONTENT = "binary_content"
    INVALID_UTF8 = "invalid_utf8"
    NO_TEXT = "no_text"
    PDF_CORRUPT = "pdf_corrupt"
    PDF_ENCRYPTED = "pdf_encrypted"
    DECOMPRESSION_BOMB = "decompression_bomb"
    CORRUPT_ARCHIVE = "corrupt_archive"
    INVALID_JSONL = "invalid_jsonl"
    PARSER_ERROR = "parser_error"
    #: Tenants are on and the object names no valid tenant (key prefix or ``x-amz-meta-<key>``).
    NO_TENANT = "no_tenant"
    #: Transient: a dependency (S3, DynamoDB, a shard, the model) failed; the message is retried.
    DEPENDENCY = "dependency_unavailable"
    #: Transient: another worker holds the key's lease (an event for the same key is being processed).
    BUSY = "key_busy"


class IngestError(Exception):
    """Base of ingestion failures; ``reason`` is the recorded code."""

    transient: bool = False

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


class Rejected(IngestError):
    """The object can never be indexed as it is (recorded as ``failed``, not retried)."""

    transient = False


class Retryable(IngestError):
    """The object may be indexed on a later attempt (the SQS message is left for redelivery)."""

    transient = True
