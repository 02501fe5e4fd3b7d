"""A BUSY ingest record comes back in seconds, not after the queue's visibility timeout (moto's SQS)."""

from __future__ import annotations

import time

import boto3
import pytest
from moto import mock_aws
from shardrag.ingestion.busy import MAX_DELAY_S, busy_delay_s, retry_busy_soon

pytestmark = pytest.mark.integration


def test_the_delay_doubles_per_receive_up_to_a_minute() -> None:
    assert [busy_delay_s(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert busy_delay_s(0) == 2 and busy_delay_s(50) == MAX_DELAY_S


def test_a_busy_record_is_visible_again_after_its_short_delay() -> None:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="ingest", Attributes={"VisibilityTimeout": "1800"})["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="{}")
        [message] = sqs.receive_message(QueueUrl=url)["Messages"]
        assert retry_busy_soon(sqs, url, message["ReceiptHandle"], 1) == 2
        assert "Messages" not in sqs.receive_message(QueueUrl=url)  # still hidden
        time.sleep(2.2)
        again = sqs.receive_message(QueueUrl=url).get("Messages", [])
        assert [m["MessageId"] for m in again] == [message["MessageId"]]  # not 30 minutes later


def test_a_refused_change_leaves_the_record_to_its_timeout() -> None:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="ingest")["QueueUrl"]
        assert retry_busy_soon(sqs, url, "not-a-receipt-handle", 1) is None
