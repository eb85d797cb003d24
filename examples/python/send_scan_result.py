"""Publishes a ScanResult the way a Python service with OpenTelemetry would: a CloudEvent made
with the `cloudevents` library, sent with paho-mqtt (QoS 1), carrying a W3C `traceparent`
either as an MQTT 5 user property (`property`, as the W3C MQTT draft puts it) or as the
CloudEvents distributed-tracing extension inside the event (`extension`, over MQTT 3.1.1).

usage: send_scan_result.py HOST PORT EXECUTABLE TRACEPARENT property|extension
"""
import sys
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from cloudevents.conversion import to_json
from cloudevents.http import CloudEvent

host, port, executable, traceparent, where = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
attributes = {
    "id": str(uuid.uuid4()),
    "source": "autopatch.code-property-graph-generator",
    "type": "autopatch.scanresult",
    "subject": executable,
}
if where == "extension":
    attributes["traceparent"] = traceparent
event = CloudEvent(
    attributes,
    {
        "executable_name": executable,
        "vulnerability_severity": 7.5,
        "vulnerable_line_number": 3,
        "vulnerable_function": "main",
        "vulnerability_description": "stack buffer overflow",
    },
)
if where == "property":
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"py-scan-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5)
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = [("traceparent", traceparent)]
else:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"py-scan-{uuid.uuid4().hex[:8]}")
    properties = None
client.connect(host, port)
client.loop_start()
info = client.publish("autopatch/cpg-scan-result", to_json(event), qos=1, properties=properties)
info.wait_for_publish(timeout=30)
if not info.is_published():
    sys.exit("publish was not acknowledged")
client.loop_stop()
client.disconnect()
print(event["id"], flush=True)
