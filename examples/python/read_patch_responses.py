"""Reads patch responses the way the Python patch-evaluation service does: paho-mqtt, then
`json.loads(payload).get("data", {})` and the keys it uses; also decodes each with the
`cloudevents` library's `from_json`, and reports the MQTT 5 Content Type property (where the
CloudEvents MQTT binding puts `application/cloudevents+json`). Prints one JSON line per message.

usage: read_patch_responses.py HOST PORT COUNT
Prints "subscribed" once the broker granted the subscription.
"""
import base64
import json
import sys
import uuid

import paho.mqtt.client as mqtt
from cloudevents.http import from_json

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
received = []


def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe("autopatch/patch_response", qos=1)


def on_subscribe(client, userdata, mid, reason_codes, properties):
    print("subscribed", flush=True)


def on_message(client, userdata, message):
    data = json.loads(message.payload.decode()).get("data", {})
    # The same bytes through the cloudevents library: the attributes and data must agree.
    event = from_json(message.payload)
    assert event.data == data, (event.data, data)
    patched = base64.b64decode(data["patch_snippet_base64"]).decode()
    print(
        json.dumps(
            {
                "executable_name": data["executable_name"],
                "status": data["status"],
                "llm_name": data["TransformerMetadata"]["llm_name"],
                "llm_version": data["TransformerMetadata"]["llm_version"],
                "llm_flavor": data["TransformerMetadata"]["llm_flavor"],
                "patched_lines": len(patched.splitlines()),
                "specversion": event["specversion"],
                "type": event["type"],
                "source": event["source"],
                "subject": event["subject"],
                "id": event["id"],
                "content_type": getattr(message.properties, "ContentType", None),
            }
        ),
        flush=True,
    )
    received.append(data)
    if len(received) >= count:
        client.disconnect()


client = mqtt.Client(
    mqtt.CallbackAPIVersion.VERSION2,
    client_id=f"py-evaluator-{uuid.uuid4().hex[:8]}",
    protocol=mqtt.MQTTv5,
)
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect(host, port)
client.loop_forever(timeout=1.0)
