"""The seed's own stack, measured like bus-bench measures bus: paho-mqtt publishes N stamped
messages at QoS 1 on one connection and receives them on another (automatic acks).

usage: paho_bench.py --port PORT --messages N --payload BYTES [--qos 1] [--idle 10]
Prints one JSON object: publish_msgs_per_s, e2e_msgs_per_s, p50_us, p99_us, p999_us, lost,
duplicates.
"""
import argparse
import threading
import time
import uuid

import paho.mqtt.client as mqtt

from measure import Tracker, stamp

args = argparse.ArgumentParser()
args.add_argument("--host", default="127.0.0.1")
args.add_argument("--port", type=int, required=True)
args.add_argument("--messages", type=int, required=True)
args.add_argument("--payload", type=int, required=True)
args.add_argument("--qos", type=int, default=1)
args.add_argument("--idle", type=float, default=10.0)
a = args.parse_args()

topic = f"bench/paho/{uuid.uuid4().hex[:12]}"
tracker = Tracker(a.messages)
subscribed = threading.Event()
all_confirmed = threading.Event()
confirmed = [0]
# At most this many publishes unconfirmed: paho's own queue beyond its in-flight window is
# scanned on every acknowledgement, which makes a 100,000-message burst quadratic.
WINDOW = 1000
window = threading.BoundedSemaphore(WINDOW)


def on_subscribe(client, userdata, mid, reason_codes, properties):
    subscribed.set()


def on_message(client, userdata, message):
    tracker.record(message.payload)


def on_publish(client, userdata, mid, reason_code, properties):
    window.release()
    confirmed[0] += 1
    if confirmed[0] >= a.messages:
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
pub.connect(a.host, a.port)
pub.loop_start()

padding = b"\xa5" * max(0, a.payload - 16)
start = time.monotonic()
for seq in range(a.messages):
    window.acquire()
    pub.publish(topic, stamp(seq, padding), qos=a.qos)
all_confirmed.wait(a.idle * 10)
published = time.monotonic() - start
tracker.wait(a.idle)
delivered = time.monotonic() - start
pub.loop_stop()
sub.loop_stop()
tracker.report(published, delivered)
