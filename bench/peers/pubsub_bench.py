"""The Python google-cloud-pubsub client, measured like bus-bench measures bus: publishes N
stamped messages (the client's default batching) and receives them with a streaming pull
(`subscribe` with a callback that acks), against the emulator in PUBSUB_EMULATOR_HOST.

usage: pubsub_bench.py --project P --messages N --payload BYTES [--idle 30]
Prints one JSON object like paho_bench.py.
"""
import argparse
import json
import struct
import threading
import time
import uuid

from google.cloud import pubsub_v1

args = argparse.ArgumentParser()
args.add_argument("--project", required=True)
args.add_argument("--messages", type=int, required=True)
args.add_argument("--payload", type=int, required=True)
args.add_argument("--idle", type=float, default=30.0)
a = args.parse_args()

run = uuid.uuid4().hex[:12]
publisher = pubsub_v1.PublisherClient()
subscriber = pubsub_v1.SubscriberClient()
topic = publisher.topic_path(a.project, f"bench-python-{run}")
subscription = subscriber.subscription_path(a.project, f"bench-python-{run}")
publisher.create_topic(name=topic)
subscriber.create_subscription(name=subscription, topic=topic)

counts = bytearray(a.messages)
latencies = []
state = {"distinct": 0, "duplicates": 0, "last": time.monotonic()}
lock = threading.Lock()


def callback(message):
    now = time.time_ns()
    sent, seq = struct.unpack_from("<QQ", message.data)
    with lock:
        state["last"] = time.monotonic()
        if seq < a.messages:
            if counts[seq] == 0:
                state["distinct"] += 1
                latencies.append((now - sent) // 1000)
            else:
                state["duplicates"] += 1
            counts[seq] = min(counts[seq] + 1, 255)
    message.ack()


future = subscriber.subscribe(subscription, callback)
padding = b"\xa5" * max(0, a.payload - 16)
start = time.monotonic()
futures = [
    publisher.publish(topic, struct.pack("<QQ", time.time_ns(), seq) + padding)
    for seq in range(a.messages)
]
for f in futures:
    f.result()
published = time.monotonic() - start
state["last"] = time.monotonic()
while True:
    with lock:
        if state["distinct"] >= a.messages or time.monotonic() - state["last"] > a.idle:
            break
    time.sleep(0.005)
delivered = time.monotonic() - start
future.cancel()

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
