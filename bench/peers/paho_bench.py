"""The seed's own stack, measured like bus-bench measures bus: paho-mqtt publishes N stamped
messages at QoS 1 on one connection and receives them on another (automatic acks).

usage: paho_bench.py --port PORT --messages N --payload BYTES [--qos 1] [--idle 10]
Prints one JSON object: publish_msgs_per_s, e2e_msgs_per_s, p50_us, p99_us, p999_us, lost,
duplicates.
"""
import argparse
import json
import struct
import threading
import time
import uuid

import paho.mqtt.client as mqtt

args = argparse.ArgumentParser()
args.add_argument("--host", default="127.0.0.1")
args.add_argument("--port", type=int, required=True)
args.add_argument("--messages", type=int, required=True)
args.add_argument("--payload", type=int, required=True)
args.add_argument("--qos", type=int, default=1)
args.add_argument("--idle", type=float, default=10.0)
a = args.parse_args()

topic = f"bench/paho/{uuid.uuid4().hex[:12]}"
counts = bytearray(a.messages)
latencies = []
state = {"distinct": 0, "duplicates": 0, "confirmed": 0, "last": time.monotonic()}
subscribed = threading.Event()
# At most this many publishes unconfirmed: paho's own queue beyond its in-flight window is
# scanned on every acknowledgement, which makes a 100,000-message burst quadratic.
WINDOW = 1000
window = threading.BoundedSemaphore(WINDOW)
all_confirmed = threading.Event()
lock = threading.Lock()


def on_subscribe(client, userdata, mid, reason_codes, properties):
    subscribed.set()


def on_message(client, userdata, message):
    now = time.time_ns()
    sent, seq = struct.unpack_from("<QQ", message.payload)
    with lock:
        state["last"] = time.monotonic()
        if seq < a.messages:
            if counts[seq] == 0:
                state["distinct"] += 1
                latencies.append((now - sent) // 1000)
            else:
                state["duplicates"] += 1
            counts[seq] = min(counts[seq] + 1, 255)


def on_publish(client, userdata, mid, reason_code, properties):
    window.release()
    state["confirmed"] += 1
    if state["confirmed"] >= a.messages:
        all_confirmed.set()


sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"paho-sub-{topic[-12:]}")
sub.on_subscribe = on_subscribe
sub.on_message = on_message
sub.connect(a.host, a.port)
sub.subscribe(topic, qos=a.qos)
sub.loop_start()
subscribed.wait(30)

pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"paho-pub-{topic[-12:]}")
pub.on_publish = on_publish
pub.max_inflight_messages_set(WINDOW)
pub.max_queued_messages_set(0)
pub.connect(a.host, a.port)
pub.loop_start()

padding = b"\xa5" * max(0, a.payload - 16)
start = time.monotonic()
for seq in range(a.messages):
    window.acquire()
    pub.publish(topic, struct.pack("<QQ", time.time_ns(), seq) + padding, qos=a.qos)
all_confirmed.wait(a.idle * 10)
published = time.monotonic() - start
state["last"] = time.monotonic()
while True:
    with lock:
        if state["distinct"] >= a.messages or time.monotonic() - state["last"] > a.idle:
            break
    time.sleep(0.002)
delivered = time.monotonic() - start
pub.loop_stop()
sub.loop_stop()

latencies.sort()


def percentile(p):
    if not latencies:
        return 0
    index = min(len(latencies), max(1, int(-(-len(latencies) * p // 1))))
    return latencies[index - 1]


print(
    json.dumps(
        {
            "publish_msgs_per_s": a.messages / published,
            "e2e_msgs_per_s": state["distinct"] / delivered,
            "p50_us": percentile(0.50),
            "p99_us": percentile(0.99),
            "p999_us": percentile(0.999),
            "lost": a.messages - state["distinct"],
            "duplicates": state["duplicates"],
        }
    )
)
