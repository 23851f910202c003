"""An independent client check of the simulator: boto3/botocore, which build requests and
parse answers from the published service model, against `roster-sync sim`.

Run:
    python3 tests/boto3/test_sim.py target/debug/roster-sync
or  ROSTER_SYNC_BIN=target/debug/roster-sync python3 tests/boto3/test_sim.py

It starts the simulator itself (`<bin> sim --listen 127.0.0.1:0 --exempt-control`), reads
the endpoint URL from the first stdout line, and stops it with SIGTERM at the end (checking it
exits cleanly). Exits non-zero when a check fails. Needs boto3.
"""

import os
import subprocess
import sys
import threading
import unittest
import uuid

import boto3
import botocore
from botocore.config import Config

BIN = None
SIMS = []


def start_sim(*extra):
    """Starts a simulator process and returns (process, endpoint URL)."""
    proc = subprocess.Popen(
        [BIN, "sim", "--listen", "127.0.0.1:0", "--exempt-control", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    SIMS.append(proc)
    line = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=60)
    if not line or not line[0].strip():
        raise RuntimeError(f"simulator printed no endpoint (exit code {proc.poll()})")
    url = line[0].strip()
    if not url.startswith("http://127.0.0.1:") or url != url.split()[0]:
        raise RuntimeError(f"first stdout line is not just the endpoint URL: {line[0]!r}")
    return proc, url


def client(url, signed=True):
    cfg = Config(retries={"total_max_attempts": 1, "mode": "standard"})
    if not signed:
        cfg = cfg.merge(Config(signature_version=botocore.UNSIGNED))
    return boto3.client(
        "chime-sdk-meetings",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=cfg,
    )


def new_meeting(c):
    return c.create_meeting(
        ClientRequestToken=str(uuid.uuid4()),
        MediaRegion="us-east-1",
        ExternalMeetingId="boto3-check",
    )["Meeting"]


def list_all(c, meeting_id, max_results):
    """Follows NextToken by hand (botocore ships no paginator for ListAttendees)."""
    pages, token = [], None
    while True:
        kwargs = {"MeetingId": meeting_id, "MaxResults": max_results}
        if token:
            kwargs["NextToken"] = token
        out = c.list_attendees(**kwargs)
        pages.append(out["Attendees"])
        token = out.get("NextToken")
        if not token:
            return pages


def setUpModule():
    global URL
    # A generous read quota so the checks never trip it; the quota has its own test below.
    _, URL = start_sim("--rate", "1000", "--burst", "1000")


def tearDownModule():
    for proc in SIMS:
        proc.terminate()
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("the simulator did not stop on SIGTERM")
        if code != 0:
            raise AssertionError(f"the simulator exited with {code} on SIGTERM")


class SimulatorSpeaksChimeSdkMeetings(unittest.TestCase):
    def setUp(self):
        self.c = client(URL)

    def test_meeting_round_trips(self):
        m = new_meeting(self.c)
        self.assertEqual(m["MediaRegion"], "us-east-1")
        self.assertEqual(m["ExternalMeetingId"], "boto3-check")
        self.assertIn("SignalingUrl", m["MediaPlacement"])
        got = self.c.get_meeting(MeetingId=m["MeetingId"])["Meeting"]
        self.assertEqual(got["MeetingId"], m["MeetingId"])

    def test_created_attendees_come_back_page_by_page(self):
        mid = new_meeting(self.c)["MeetingId"]
        created = {}
        single = self.c.create_attendee(MeetingId=mid, ExternalUserId="Zoë «solo» 'quoted'")["Attendee"]
        created[single["AttendeeId"]] = single["ExternalUserId"]
        for start in (0, 20):
            out = self.c.batch_create_attendee(
                MeetingId=mid,
                Attendees=[{"ExternalUserId": f"user-{i}"} for i in range(start, start + 20)],
            )
            self.assertEqual(out["Errors"], [])
            for a in out["Attendees"]:
                created[a["AttendeeId"]] = a["ExternalUserId"]
                self.assertGreaterEqual(len(a["JoinToken"]), 64)
                self.assertEqual(
                    a["Capabilities"], {"Audio": "SendReceive", "Video": "SendReceive", "Content": "SendReceive"}
                )
        self.assertEqual(len(created), 41)
        pages = list_all(self.c, mid, 7)
        self.assertEqual([len(p) for p in pages], [7] * 5 + [6])
        listed = {a["AttendeeId"]: a["ExternalUserId"] for p in pages for a in p}
        self.assertEqual(sum(len(p) for p in pages), len(listed), "no attendee listed twice")
        self.assertEqual(listed, created)

    def test_capability_update_is_visible_in_get_attendee(self):
        mid = new_meeting(self.c)["MeetingId"]
        aid = self.c.create_attendee(MeetingId=mid, ExternalUserId="caps-user")["Attendee"]["AttendeeId"]
        caps = {"Audio": "Receive", "Video": "None", "Content": "None"}
        out = self.c.update_attendee_capabilities(MeetingId=mid, AttendeeId=aid, Capabilities=caps)
        self.assertEqual(out["Attendee"]["Capabilities"], caps)
        got = self.c.get_attendee(MeetingId=mid, AttendeeId=aid)["Attendee"]
        self.assertEqual(got["Capabilities"], caps)

    def test_deleted_attendee_and_meeting_are_not_found(self):
        mid = new_meeting(self.c)["MeetingId"]
        a, b = (
            self.c.create_attendee(MeetingId=mid, ExternalUserId=u)["Attendee"]["AttendeeId"]
            for u in ("stays", "leaves")
        )
        resp = self.c.delete_attendee(MeetingId=mid, AttendeeId=b)
        self.assertEqual(resp["ResponseMetadata"]["HTTPStatusCode"], 204)
        with self.assertRaises(self.c.exceptions.NotFoundException):
            self.c.get_attendee(MeetingId=mid, AttendeeId=b)
        ids = [x["AttendeeId"] for p in list_all(self.c, mid, 100) for x in p]
        self.assertEqual(ids, [a])
        self.c.delete_meeting(MeetingId=mid)
        with self.assertRaises(self.c.exceptions.NotFoundException):
            self.c.list_attendees(MeetingId=mid)

    def test_unknown_meeting_is_not_found(self):
        with self.assertRaises(self.c.exceptions.NotFoundException) as cm:
            self.c.list_attendees(MeetingId=str(uuid.uuid4()))
        err = cm.exception.response
        self.assertEqual(err["Error"]["Code"], "NotFoundException")
        self.assertEqual(err["ResponseMetadata"]["HTTPStatusCode"], 404)
        self.assertTrue(err["ResponseMetadata"]["RequestId"])

    def test_bad_capability_combination_is_a_bad_request(self):
        mid = new_meeting(self.c)["MeetingId"]
        with self.assertRaises(self.c.exceptions.BadRequestException):
            self.c.create_attendee(
                MeetingId=mid,
                ExternalUserId="bad-caps",
                Capabilities={"Audio": "SendReceive", "Video": "Send", "Content": "Receive"},
            )

    def test_invalid_next_token_is_a_bad_request(self):
        # botocore refuses MaxResults outside 1..=100 before sending; a bad token reaches the server.
        mid = new_meeting(self.c)["MeetingId"]
        with self.assertRaises(self.c.exceptions.BadRequestException):
            self.c.list_attendees(MeetingId=mid, NextToken="garbage")

    def test_unsigned_request_is_forbidden(self):
        unsigned = client(URL, signed=False)
        with self.assertRaises(unsigned.exceptions.ForbiddenException):
            unsigned.list_attendees(MeetingId=str(uuid.uuid4()))

    def test_quota_of_one_per_second_throttles(self):
        _, slow_url = start_sim("--rate", "1", "--burst", "1")
        slow = client(slow_url)
        mid = new_meeting(slow)["MeetingId"]  # exempt: --exempt-control
        with self.assertRaises(slow.exceptions.ThrottlingException) as cm:
            for _ in range(5):
                slow.list_attendees(MeetingId=mid)
        self.assertEqual(cm.exception.response["ResponseMetadata"]["HTTPStatusCode"], 429)


if __name__ == "__main__":
    args = sys.argv[1:]
    BIN = args[0] if args else os.environ.get("ROSTER_SYNC_BIN")
    if not BIN:
        sys.exit(__doc__)
    unittest.main(argv=[sys.argv[0], "-v"])
