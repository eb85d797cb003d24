"""Publishes a CrashDetail the way the Python fuzzing-service does: a CloudEvent made with the
`cloudevents` library, serialised with `to_json`, sent with paho-mqtt (QoS 1).

usage: send_crash_detail.py HOST PORT EXECUTABLE
Prints the event's id.
"""
import base64
import sys
import uuid

import paho.mqtt.client as mqtt
from cloudevents.conversion import to_json
from cloudevents.http import CloudEvent

host, port, executable = sys.argv[1], int(sys.argv[2]), sys.argv[3]
event = CloudEvent(
    {
        "id": str(uuid.uuid4()),
        "source": "autopatch.fuzzing-service",
        "type": "autopatch.crashdetail",
        "subject": executable,
        "time": "2025-04-30T00:00:00Z",
    },
    {
        "executable_name": executable,
        "crash_detail_base64": base64.b64encode(b"A" * 80 + b"\n").decode(),
        "is_input_from_file": False,
    },
)
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"py-fuzzer-{uuid.uuid4().hex[:8]}")
client.connect(host, port)
client.loop_start()
info = client.publish("autopatch/crash_detail", to_json(event), qos=1)
info.wait_for_publish(timeout=30)
if not info.is_published():
    sys.exit("publish was not acknowledged")
client.loop_stop()
client.disconnect()
print(event["id"], flush=True)
