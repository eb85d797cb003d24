"""What both Python peers measure, the way bus-bench measures the Rust clients: each payload
starts with its send time (ns, little endian) and a sequence number; the first delivery of each
sequence number gives a latency, later ones are duplicates."""
import json
import struct
import threading
import time


class Tracker:
    def __init__(self, messages):
        self.messages = messages
        self.counts = bytearray(messages)
        self.latencies = []
        self.distinct = 0
        self.duplicates = 0
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def record(self, payload):
        now = time.time_ns()
        sent, seq = struct.unpack_from("<QQ", payload)
        with self.lock:
            self.last = time.monotonic()
            if seq >= self.messages:
                return
            if self.counts[seq] == 0:
                self.distinct += 1
                self.latencies.append((now - sent) // 1000)
            else:
                self.duplicates += 1
            self.counts[seq] = min(self.counts[seq] + 1, 255)

    def wait(self, idle):
        """Until every message arrived, or `idle` seconds passed without a new one."""
        with self.lock:
            self.last = time.monotonic()
        while True:
            with self.lock:
                if self.distinct >= self.messages or time.monotonic() - self.last > idle:
                    return
            time.sleep(0.002)

    def report(self, published_secs, delivered_secs):
        """Prints the JSON object bus-bench reads."""
        latencies = sorted(self.latencies)

        def percentile(p):
            if not latencies:
                return 0
            index = min(len(latencies), max(1, int(-(-len(latencies) * p // 1))))
            return latencies[index - 1]

        print(
            json.dumps(
                {
                    "publish_msgs_per_s": self.messages / published_secs,
                    "e2e_msgs_per_s": self.distinct / delivered_secs,
                    "p50_us": percentile(0.50),
                    "p99_us": percentile(0.99),
                    "p999_us": percentile(0.999),
                    "lost": self.messages - self.distinct,
                    "duplicates": self.duplicates,
                }
            ),
            flush=True,
        )


def stamp(seq, padding):
    return struct.pack("<QQ", time.time_ns(), seq) + padding
