"""The Python google-cloud-pubsub client, measured like bus-bench measures bus: publishes N
stamped messages (the client's default batching) and receives them with a streaming pull
(`subscribe` with a callback that acks), against the emulator in PUBSUB_EMULATOR_HOST.

usage: pubsub_bench.py --project P --messages N --payload BYTES [--idle 30]
Prints one JSON object like paho_bench.py.
"""
import argparse
import time
import uuid

from google.cloud import pubsub_v1

from measure import Tracker, stamp

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
tracker = Tracker(a.messages)


def callback(message):
    tracker.record(message.data)
    message.ack()


future = subscriber.subscribe(subscription, callback)
padding = b"\xa5" * max(0, a.payload - 16)
start = time.monotonic()
futures = [publisher.publish(topic, stamp(seq, padding)) for seq in range(a.messages)]
for f in futures:
    f.result()
published = time.monotonic() - start
tracker.wait(a.idle)
delivered = time.monotonic() - start
future.cancel()
tracker.report(published, delivered)
