"""The local ingestion path: bucket notification -> SQS queue (+ DLQ) -> a poller that behaves like Lambda's
event source mapping -> the real ingest handler through the emulated Lambda.

Why a poller rather than moto's own event source mapping: moto delivers S3 -> SQS -> Lambda synchronously
inside the PUT, so a long ingestion would hold the uploading client past its read timeout. Here the PUT only
enqueues (as in AWS) and :class:`EventSourcePoller` consumes the queue in a thread with the mapping's semantics:
batches of up to ``batch_size`` messages, ``batchItemFailures`` leave their messages on the queue until the
visibility timeout expires, and the queue's redrive policy moves a message to the DLQ after
``maxReceiveCount`` receipts.

Sequencers: moto's S3 records carry no ``sequencer``. :func:`install_sequencer_stamp` wraps moto's private
``_send_sqs_message`` so that every record gets one when it is sent, which happens inside the S3 request that
changed the object, i.e. in the order S3 applied the changes. The value is a process-wide counter seeded from
the wall clock (so it also grows across restarts), printed as 20 hex digits — per key it is therefore
monotonic, which is all S3 promises about its own sequencers.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from shardrag import env
from shardrag.ingestion.events import ObjectEvent, notification
from shardrag.ingestion.reconcile import Reconciler, ReconcileReport
from shardrag.ingestion.registry import DynamoDbRegistry, table_definition
from shardrag.ingestion.source import S3ObjectSource
from shardrag.services import DEFAULT_REGISTRY_TABLE

from shardrag_local.emulator import ACCOUNT, REGION, LocalAws

log = logging.getLogger("shardrag.local.ingestion")

QUEUE = "shardrag-ingest"
DEAD_LETTER_QUEUE = "shardrag-ingest-dlq"
FUNCTION_FOLDER = "ingest"
FUNCTION_NAME = "shardrag-ingest"
EVENTS = ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"]


class _Sequencer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> str:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns())
            return f"{self._last:020X}"


_SEQUENCER = _Sequencer()
_original_send: Callable[..., None] | None = None


def install_sequencer_stamp() -> None:
    """Stamp ``s3.object.sequencer`` on every S3 record moto sends to SQS (idempotent)."""
    global _original_send
    from moto.s3 import notifications

    if _original_send is not None:
        return
    _original_send = notifications._send_sqs_message
    original = _original_send

    def _send_sqs_message(account_id: str, event_body: Any, queue_name: str, region_name: str) -> None:
        for record in event_body.get("Records", []) if isinstance(event_body, dict) else []:
            record.get("s3", {}).get("object", {}).setdefault("sequencer", _SEQUENCER.next())
        original(account_id, event_body, queue_name, region_name)

    notifications._send_sqs_message = _send_sqs_message


def uninstall_sequencer_stamp() -> None:
    global _original_send
    from moto.s3 import notifications

    if _original_send is not None:
        notifications._send_sqs_message = _original_send
        _original_send = None


def _lambda_record(message: dict[str, Any], queue_arn: str) -> dict[str, Any]:
    """An SQS message in the shape Lambda's event source mapping hands to the function."""
    attributes = message.get("Attributes", {})
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {
            "ApproximateReceiveCount": attributes.get("ApproximateReceiveCount", "1"),
            "SentTimestamp": attributes.get("SentTimestamp", str(int(time.time() * 1000))),
            "SenderId": attributes.get("SenderId", ACCOUNT),
            "ApproximateFirstReceiveTimestamp": attributes.get(
                "ApproximateFirstReceiveTimestamp", str(int(time.time() * 1000))
            ),
        },
        "messageAttributes": message.get("MessageAttributes", {}),
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": REGION,
    }


class EventSourcePoller:
    """Lambda's SQS event source mapping, locally: poll, invoke with a batch, delete what succeeded."""

    def __init__(
        self,
        aws: LocalAws,
        *,
        queue_url: str,
        queue_arn: str,
        function_name: str,
        batch_size: int = 10,
        idle_sleep_s: float = 0.1,
    ) -> None:
        self._aws = aws
        self._queue_url = queue_url
        self._queue_arn = queue_arn
        self._function = function_name
        self._batch_size = batch_size
        self._idle_sleep_s = idle_sleep_s
        self._stop = threading.Event()
        self._busy = threading.Event()
        self._paused = threading.Event()
        #: Bodies of the messages handed to the function, in delivery order (tests replay them).
        self.journal: list[str] = []
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.failures = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="shardrag-ingest-poller", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def busy(self) -> bool:
        return self._busy.is_set()

    def pause(self) -> None:
        """Stop taking batches (the one in flight finishes): tests use it to control delivery order."""
        self._paused.set()
        while self._busy.is_set():
            time.sleep(0.01)

    def resume(self) -> None:
        self._paused.clear()

    def _loop(self) -> None:
        sqs = self._aws.client("sqs")
        lam = self._aws.client("lambda")
        idle = self._idle_sleep_s
        while not self._stop.is_set():
            if self._paused.is_set():
                self._stop.wait(self._idle_sleep_s)
                continue
            try:
                self._busy.set()
                handled = self._poll_once(sqs, lam)
            except Exception:  # the mapping keeps polling whatever one batch did
                log.exception("ingest poller: batch failed")
                handled = False
            finally:
                self._busy.clear()
            # An idle queue is polled less and less often (up to 5 x the base interval), as a Lambda event source
            # mapping long-polls: each empty poll costs the runtime's process CPU that queries could use.
            idle = self._idle_sleep_s if handled else min(idle * 2, 5 * self._idle_sleep_s)
            if not handled:
                self._stop.wait(idle)

    def _poll_once(self, sqs: Any, lam: Any) -> bool:
        messages = sqs.receive_message(
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=self._batch_size,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
            WaitTimeSeconds=0,
        ).get("Messages", [])
        if not messages:
            return False
        self.journal.extend(m["Body"] for m in messages)
        event = {"Records": [_lambda_record(m, self._queue_arn) for m in messages]}
        response = lam.invoke(FunctionName=self._function, Payload=json.dumps(event).encode())
        raw = response["Payload"].read()
        if response.get("FunctionError"):
            # The whole batch failed (an unhandled error): every message becomes visible again later.
            failed = {m["MessageId"] for m in messages}
            log.warning("ingest function error: %s", raw[:500])
        else:
            payload = json.loads(raw or b"{}") or {}
            failed = {str(f["itemIdentifier"]) for f in payload.get("batchItemFailures", [])}
        self.batches += 1
        self.failures += len(failed)
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            sqs.delete_message_batch(
                QueueUrl=self._queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done[start : start + 10])
                ],
            )
        return True


class LocalIngestion:
    """Deploys the ingestion resources in the emulation and runs the poller."""

    def __init__(
        self,
        aws: LocalAws,
        *,
        bucket: str,
        table: str = DEFAULT_REGISTRY_TABLE,
        batch_size: int = 10,
        visibility_timeout_s: int = 30,
        max_receive_count: int = 3,
    ) -> None:
        self.aws = aws
        self.bucket = bucket
        self.table = table
        self.batch_size = batch_size
        self.visibility_timeout_s = visibility_timeout_s
        self.max_receive_count = max_receive_count
        self.queue_url = ""
        self.dlq_url = ""
        self.poller: EventSourcePoller | None = None

    def start(self) -> None:
        # The handler runs in this process and reads its configuration from the environment, as in Lambda.
        os.environ[env.REGISTRY_TABLE] = self.table
        os.environ[env.DOCUMENTS_BUCKET] = self.bucket
        ddb = self.aws.client("dynamodb")
        if self.table not in ddb.list_tables()["TableNames"]:
            ddb.create_table(**table_definition(self.table))
        sqs = self.aws.client("sqs")
        self.dlq_url = sqs.create_queue(QueueName=DEAD_LETTER_QUEUE)["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        self.queue_url = sqs.create_queue(
            QueueName=QUEUE,
            Attributes={
                "VisibilityTimeout": str(self.visibility_timeout_s),
                "RedrivePolicy": json.dumps(
                    {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": self.max_receive_count}
                ),
            },
        )["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        # Where the ingest function hands the rest of a large object to a fresh invocation (as deployed).
        os.environ[env.INGEST_QUEUE_URL] = self.queue_url
        self.aws.deploy_function(FUNCTION_FOLDER, timeout_s=900)
        install_sequencer_stamp()
        self.aws.client("s3").put_bucket_notification_configuration(
            Bucket=self.bucket,
            NotificationConfiguration={
                "QueueConfigurations": [{"Id": "shardrag-ingest", "QueueArn": queue_arn, "Events": EVENTS}]
            },
        )
        self.poller = EventSourcePoller(
            self.aws,
            queue_url=self.queue_url,
            queue_arn=queue_arn,
            function_name=FUNCTION_NAME,
            batch_size=self.batch_size,
        )
        self.poller.start()

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.stop()
            self.poller = None
        uninstall_sequencer_stamp()

    # -- observation (tests, CLI, index_paths) -----------------------------------------------------------
    def _depth(self, url: str) -> int:
        attrs = self.aws.client("sqs").get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def wait_idle(self, timeout_s: float = 120.0) -> bool:
        """Wait until the queue is drained and no batch is in flight (messages that failed count as pending
        until they succeed or are dead-lettered)."""
        deadline = time.monotonic() + timeout_s
        quiet = 0
        while time.monotonic() < deadline:
            if self._depth(self.queue_url) == 0 and not (self.poller and self.poller.busy):
                # Twice in a row: a batch may sit between its receive and the busy flag.
                quiet += 1
                if quiet >= 2:
                    return True
            else:
                quiet = 0
            time.sleep(0.05)
        return False

    def dead_letters(self) -> list[dict[str, Any]]:
        sqs = self.aws.client("sqs")
        out = sqs.receive_message(QueueUrl=self.dlq_url, MaxNumberOfMessages=10, VisibilityTimeout=0)
        return list(out.get("Messages", []))

    @property
    def registry(self) -> DynamoDbRegistry:
        return DynamoDbRegistry(self.aws.client("dynamodb"), self.table)

    def reconcile(self, *, prefix: str = "", retry_failed: bool = False) -> ReconcileReport:
        """Compare the bucket with the registry and enqueue repairs (processed by the poller)."""
        sqs = self.aws.client("sqs")

        def send(events: Sequence[ObjectEvent]) -> None:
            sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(notification(list(events))))

        reconciler = Reconciler(S3ObjectSource(self.aws.client("s3")), self.registry, send)
        return reconciler.run(self.bucket, prefix=prefix, retry_failed=retry_failed)
