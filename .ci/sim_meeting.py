"""Creates a meeting with three attendees in the simulator at ENDPOINT (with boto3, as any
client of the Chime SDK Meetings API would) and prints its id and a free local port.

Usage: sim_meeting.py ENDPOINT   (used by .ci/deploy-checks for its live /metrics scrape)
"""

import socket
import sys
import uuid

import boto3

chime = boto3.client(
    "chime-sdk-meetings",
    region_name="us-east-1",
    endpoint_url=sys.argv[1],
    aws_access_key_id="ci",
    aws_secret_access_key="ci",
)
meeting = chime.create_meeting(
    ClientRequestToken=str(uuid.uuid4()),
    MediaRegion="us-east-1",
    ExternalMeetingId="deploy-checks",
)["Meeting"]["MeetingId"]
chime.batch_create_attendee(
    MeetingId=meeting, Attendees=[{"ExternalUserId": f"person{i}"} for i in range(3)]
)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(meeting, s.getsockname()[1])
