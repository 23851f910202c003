"""An independent client check of the simulator's SQS side and its meeting events: boto3's
SQS client (awsJson1_0 from the published model, and botocore's MD5 checks of every message
body) against `roster-sync sim --events-queue ...`.

Run:
    python3 tests/boto3/test_sqs.py target/debug/roster-sync
or  ROSTER_SYNC_BIN=target/debug/roster-sync python3 tests/boto3/test_sqs.py

It starts the simulator itself, reads the endpoint URL from the first stdout line, and stops
it with SIGTERM at the end (checking it exits cleanly). Exits non-zero when a check fails.
Needs boto3.
"""

import json
import os
import subprocess
import sys
import threading
import time
import unittest
import urllib.request
import uuid

import boto3
from botocore.config import Config

BIN = None
SIM = None
URL = None


def setUpModule():
    global SIM, URL
    SIM = subprocess.Popen(
        [BIN, "sim", "--listen", "127.0.0.1:0", "--exempt-control",
         "--events-queue", "chime-events", "--events-format", "sns"],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = []
    reader = threading.Thread(target=lambda: line.append(SIM.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=60)
    if not line or not line[0].strip():
        raise RuntimeError(f"simulator printed no endpoint (exit code {SIM.poll()})")
    URL = line[0].strip()


def tearDownModule():
    SIM.terminate()
    try:
        code = SIM.wait(timeout=10)
    except subprocess.TimeoutExpired:
        SIM.kill()
        SIM.wait()
        raise AssertionError("the simulator did not stop on SIGTERM")
    if code != 0:
        raise AssertionError(f"the simulator exited with {code} on SIGTERM")


def sqs():
    return boto3.client(
        "sqs",
        region_name="us-east-1",
        endpoint_url=URL,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def chime():
    return boto3.client(
        "chime-sdk-meetings",
        region_name="eu-west-1",
        endpoint_url=URL,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def control(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(URL + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


def fresh_queue(c):
    return c.create_queue(QueueName="q-" + uuid.uuid4().hex[:12])["QueueUrl"]


class Queue(unittest.TestCase):
    def test_create_and_get_queue_url(self):
        c = sqs()
        url = c.create_queue(QueueName="named", Attributes={"VisibilityTimeout": "45"})["QueueUrl"]
        self.assertEqual(url, URL + "/123456789012/named")
        self.assertEqual(c.get_queue_url(QueueName="named")["QueueUrl"], url)
        attrs = c.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        self.assertEqual(attrs["VisibilityTimeout"], "45")
        self.assertEqual(attrs["QueueArn"], "arn:aws:sqs:us-east-1:123456789012:named")

    def test_send_receive_delete_with_md5_checked_by_botocore(self):
        c = sqs()
        url = fresh_queue(c)
        sent = c.send_message(QueueUrl=url, MessageBody="héllo ✓")
        got = c.receive_message(QueueUrl=url, MessageSystemAttributeNames=["All"])["Messages"]
        self.assertEqual(len(got), 1)
        m = got[0]
        self.assertEqual(m["MessageId"], sent["MessageId"])
        self.assertEqual(m["Body"], "héllo ✓")
        self.assertEqual(m["Attributes"]["ApproximateReceiveCount"], "1")
        c.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        self.assertNotIn("Messages", c.receive_message(QueueUrl=url))

    def test_batches(self):
        c = sqs()
        url = fresh_queue(c)
        out = c.send_message_batch(QueueUrl=url, Entries=[
            {"Id": f"m{i}", "MessageBody": f"body {i}"} for i in range(10)])
        self.assertEqual(len(out["Successful"]), 10)
        got = c.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600)["Messages"]
        self.assertEqual(len(got), 10)
        vis = c.change_message_visibility_batch(QueueUrl=url, Entries=[
            {"Id": "v0", "ReceiptHandle": got[0]["ReceiptHandle"], "VisibilityTimeout": 0},
            {"Id": "bad", "ReceiptHandle": "nope", "VisibilityTimeout": 0}])
        self.assertEqual([s["Id"] for s in vis["Successful"]], ["v0"])
        self.assertEqual(vis["Failed"][0]["Code"], "ReceiptHandleIsInvalid")
        again = c.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
        self.assertEqual(len(again), 1)
        handles = [m["ReceiptHandle"] for m in got[1:]] + [again[0]["ReceiptHandle"]]
        out = c.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": f"d{i}", "ReceiptHandle": h} for i, h in enumerate(handles)])
        self.assertEqual(len(out["Successful"]), 10)
        attrs = c.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        self.assertEqual(attrs, {"ApproximateNumberOfMessages": "0",
                                 "ApproximateNumberOfMessagesNotVisible": "0"})

    def test_long_poll_wakes_on_send_and_redelivers_after_visibility_timeout(self):
        c = sqs()
        url = fresh_queue(c)
        threading.Timer(0.5, lambda: sqs().send_message(QueueUrl=url, MessageBody="late")).start()
        # Without the wake-up the 20 s poll would answer no Messages at all.
        got = c.receive_message(QueueUrl=url, WaitTimeSeconds=20, VisibilityTimeout=1)["Messages"]
        self.assertEqual(got[0]["Body"], "late")
        back = c.receive_message(QueueUrl=url, WaitTimeSeconds=20,
                                 MessageSystemAttributeNames=["ApproximateReceiveCount"])["Messages"]
        self.assertEqual(back[0]["MessageId"], got[0]["MessageId"])
        self.assertEqual(back[0]["Attributes"]["ApproximateReceiveCount"], "2")
        c.change_message_visibility(QueueUrl=url, ReceiptHandle=back[0]["ReceiptHandle"],
                                    VisibilityTimeout=0)
        c.purge_queue(QueueUrl=url)
        self.assertNotIn("Messages", c.receive_message(QueueUrl=url))

    def test_errors(self):
        c = sqs()
        with self.assertRaises(c.exceptions.QueueDoesNotExist):
            c.get_queue_url(QueueName="missing")
        missing = URL + "/123456789012/missing"
        with self.assertRaises(c.exceptions.QueueDoesNotExist) as e:
            c.receive_message(QueueUrl=missing)
        self.assertEqual(e.exception.response["Error"]["Code"],
                         "AWS.SimpleQueueService.NonExistentQueue")
        url = fresh_queue(c)
        with self.assertRaises(c.exceptions.ReceiptHandleIsInvalid):
            c.delete_message(QueueUrl=url, ReceiptHandle="garbage")
        with self.assertRaises(c.exceptions.EmptyBatchRequest):
            c.delete_message_batch(QueueUrl=url, Entries=[])
        with self.assertRaises(c.exceptions.BatchEntryIdsNotDistinct):
            c.send_message_batch(QueueUrl=url, Entries=[
                {"Id": "x", "MessageBody": "a"}, {"Id": "x", "MessageBody": "b"}])
        with self.assertRaises(c.exceptions.ClientError) as e:
            c.receive_message(QueueUrl=url, MaxNumberOfMessages=11)
        self.assertEqual(e.exception.response["Error"]["Code"], "InvalidParameterValue")


def receive_events(c, url, n):
    """Receives and deletes messages until n arrived; answers the inner event JSON of each."""
    events = []
    deadline = time.monotonic() + 30
    while len(events) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(events)} of {n} events arrived")
        for m in c.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                   WaitTimeSeconds=1).get("Messages", []):
            body = json.loads(m["Body"])
            assert body["Type"] == "Notification", body
            events.append(json.loads(body["Message"]))
            c.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return events


class Events(unittest.TestCase):
    def test_meeting_events_and_presence_reach_the_queue(self):
        c, ch = sqs(), chime()
        url = c.get_queue_url(QueueName="chime-events")["QueueUrl"]
        c.purge_queue(QueueUrl=url)
        m = ch.create_meeting(ClientRequestToken=str(uuid.uuid4()), MediaRegion="us-east-1",
                              ExternalMeetingId="boto3-events")["Meeting"]
        a = ch.create_attendee(MeetingId=m["MeetingId"], ExternalUserId="alice")["Attendee"]
        control("POST", "/_sim/presence", {"meeting_id": m["MeetingId"],
                                           "attendee_id": a["AttendeeId"], "action": "join"})
        events = receive_events(c, url, 3)
        by_type = {e["detail"]["eventType"]: e for e in events}
        self.assertEqual(set(by_type), {"chime:MeetingStarted", "chime:AttendeeAdded",
                                        "chime:AttendeeJoined"})
        started = by_type["chime:MeetingStarted"]
        self.assertEqual(started["source"], "aws.chime")
        self.assertEqual(started["detail-type"], "Chime Meeting State Change")
        self.assertEqual(started["region"], "eu-west-1")
        self.assertEqual(started["detail"]["externalMeetingId"], "boto3-events")
        self.assertEqual(by_type["chime:AttendeeJoined"]["detail"]["networkType"], "Voip")
        self.assertEqual(by_type["chime:AttendeeAdded"]["detail"]["attendeeId"], a["AttendeeId"])
        truth = control("GET", f"/_sim/presence/{m['MeetingId']}")
        self.assertEqual(len(truth["attendees"][0]["sessions"]), 1)
        self.assertIsNone(truth["attendees"][0]["sessions"][0]["end"])

        control("PUT", "/_sim/events/faults", {"loss": 1.0})
        before = control("GET", "/_sim/events")["stats"]
        ch.delete_meeting(MeetingId=m["MeetingId"])
        after = control("GET", "/_sim/events")["stats"]
        self.assertEqual(after["lost"], before["lost"] + 1)
        control("PUT", "/_sim/events/faults", {})
        control("POST", "/_sim/events/poison", {"kind": "not_json"})
        got = c.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"]
        self.assertEqual(got[0]["Body"], "this is not JSON {")
        truth = control("GET", f"/_sim/presence/{m['MeetingId']}")
        self.assertEqual(truth["attendees"][0]["sessions"][0]["end_reason"], "meeting_ended")


if __name__ == "__main__":
    args = sys.argv[1:]
    BIN = args[0] if args else os.environ.get("ROSTER_SYNC_BIN")
    if not BIN:
        sys.exit(__doc__)
    unittest.main(argv=[sys.argv[0], "-v"])
