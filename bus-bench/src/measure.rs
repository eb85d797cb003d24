//! What every client is measured with: stamped payloads, a tracker of what arrived, and the
//! result record.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

/// The smallest payload: a send timestamp and a sequence number.
pub const HEADER_BYTES: usize = 16;

/// What one benchmark run is asked to do.
#[derive(Debug, Clone)]
pub struct Params {
    /// Messages to publish.
    pub messages: usize,
    /// Payload size in bytes (at least [`HEADER_BYTES`]).
    pub payload: usize,
    /// Concurrent publishing tasks (publishes in flight).
    pub publishers: usize,
    /// Concurrent consumers (competing on one subscription) where the client has them.
    pub consumers: usize,
    /// MQTT quality of service.
    pub qos: u8,
    /// Streaming pulls per consumer (bus-gcp, raw google-cloud-pubsub).
    pub streams: usize,
    /// Give up waiting after this long without a new message (the rest count as lost).
    pub idle_timeout: Duration,
    /// Messages per `publish_batch` / `receive_batch` call (bus client); 0: one call per
    /// message.
    pub batch: usize,
    /// Subscriptions on the topic, each getting every message (bus client; fan-out).
    pub subscriptions: usize,
    /// Publish only, to a topic without subscriptions (Pub/Sub): the publish path measured
    /// without consumers on the same cores.
    pub publish_only: bool,
}

impl Params {
    /// `messages` of `payload` bytes with `publishers` in flight, to one consumer of one
    /// subscription, QoS 1, one stream, one message per call, giving up after 60 s without
    /// progress.
    pub fn new(messages: usize, payload: usize, publishers: usize) -> Params {
        Params {
            messages,
            payload,
            publishers,
            consumers: 1,
            qos: 1,
            streams: 1,
            idle_timeout: Duration::from_secs(60),
            batch: 0,
            subscriptions: 1,
            publish_only: false,
        }
    }
}

/// Wall-clock nanoseconds: comparable between processes (the Python peers) on one machine.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A payload of `size` bytes: the send time, the sequence number, then padding.
pub fn stamp(seq: u64, size: usize) -> Bytes {
    let mut payload = BytesMut::with_capacity(size.max(HEADER_BYTES));
    payload.put_u64_le(now_nanos());
    payload.put_u64_le(seq);
    payload.resize(size.max(HEADER_BYTES), 0xA5);
    payload.freeze()
}

/// Which messages arrived, how often, and how late; with fan-out, per copy (subscription).
pub struct Tracker {
    /// Messages per copy.
    messages: usize,
    /// Copy `c` of message `seq` is counted at `c * messages + seq`.
    counts: Vec<AtomicU8>,
    distinct: AtomicUsize,
    duplicates: AtomicUsize,
    latencies_us: Mutex<Vec<u32>>,
    progress: ProgressBar,
}

impl Tracker {
    /// A tracker for `messages` messages, with a progress bar on a terminal.
    pub fn new(messages: usize, label: &str) -> Tracker {
        Tracker::fan_out(messages, 1, label)
    }

    /// A tracker for `copies` copies of `messages` messages (one per subscription).
    pub fn fan_out(messages: usize, copies: usize, label: &str) -> Tracker {
        let total = messages * copies.max(1);
        let progress = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>24} {bar:40} {pos}/{len} {per_sec} {eta}")
        {
            progress.set_style(style);
        }
        progress.set_prefix(label.to_string());
        Tracker {
            messages,
            counts: (0..total).map(|_| AtomicU8::new(0)).collect(),
            distinct: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            latencies_us: Mutex::new(Vec::with_capacity(total)),
            progress,
        }
    }

    /// Records a received payload; returns the latencies to add in a batch by the caller.
    pub fn record(&self, payload: &[u8], latencies: &mut Vec<u32>) {
        self.record_copy(0, payload, latencies);
    }

    /// Records a payload received by copy (subscription) `copy`.
    pub fn record_copy(&self, copy: usize, payload: &[u8], latencies: &mut Vec<u32>) {
        if payload.len() < HEADER_BYTES {
            return;
        }
        let sent = u64::from_le_bytes(payload[0..8].try_into().unwrap_or([0; 8]));
        let seq = u64::from_le_bytes(payload[8..16].try_into().unwrap_or([0; 8])) as usize;
        if seq >= self.messages {
            return;
        }
        let Some(count) = self.counts.get(copy * self.messages + seq) else {
            return;
        };
        if count.fetch_add(1, Ordering::Relaxed) == 0 {
            self.distinct.fetch_add(1, Ordering::Relaxed);
            let latency = now_nanos().saturating_sub(sent) / 1_000;
            latencies.push(latency.min(u32::MAX as u64) as u32);
            if latencies.len() >= 1024 {
                self.flush(latencies);
            }
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands a consumer's batch of latencies over.
    pub fn flush(&self, latencies: &mut Vec<u32>) {
        self.progress.inc(latencies.len() as u64);
        if let Ok(mut all) = self.latencies_us.lock() {
            all.append(latencies);
        }
    }

    /// Distinct messages seen.
    pub fn distinct(&self) -> usize {
        self.distinct.load(Ordering::Relaxed)
    }

    /// Whether every message arrived.
    pub fn complete(&self) -> bool {
        self.distinct() >= self.counts.len()
    }

    /// The result of a run that published in `publish` and delivered in `e2e` (every copy): the
    /// end-to-end rate counts messages, not copies; losses count copies.
    pub fn finish(
        &self,
        id: (&str, &str),
        params: &Params,
        publish: Duration,
        e2e: Duration,
    ) -> BenchResult {
        self.progress.finish_and_clear();
        let mut latencies = self
            .latencies_us
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        latencies.sort_unstable();
        let percentile = |p: f64| -> u64 {
            if latencies.is_empty() {
                return 0;
            }
            let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len());
            latencies[index - 1] as u64
        };
        let copies = (self.counts.len() / self.messages.max(1)).max(1);
        let delivered = self.distinct();
        BenchResult {
            backend: id.0.to_string(),
            client: id.1.to_string(),
            variant: String::new(),
            payload_bytes: params.payload,
            messages: params.messages,
            in_flight: params.publishers * params.batch.max(1),
            publish_msgs_per_s: rate(params.messages, publish),
            e2e_msgs_per_s: rate(delivered / copies, e2e),
            p50_us: percentile(0.50),
            p99_us: percentile(0.99),
            p999_us: percentile(0.999),
            // A publish-only run receives nothing by design.
            lost: match params.publish_only {
                true => 0,
                false => self.counts.len() - delivered.min(self.counts.len()),
            },
            duplicates: self.duplicates.load(Ordering::Relaxed),
            runs: 1,
            e2e_min_msgs_per_s: None,
            e2e_max_msgs_per_s: None,
        }
    }
}

fn rate(messages: usize, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        return 0.0;
    }
    messages as f64 / elapsed.as_secs_f64()
}

/// One benchmark result: a single run, or the median of several.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// `memory`, `mqtt` or `gcp`.
    pub backend: String,
    /// `bus`, `raw` or `python`.
    pub client: String,
    /// Which raw client or protocol, e.g. `rumqttc MQTT 5`.
    pub variant: String,
    /// Payload size.
    pub payload_bytes: usize,
    /// Messages published.
    pub messages: usize,
    /// Messages the publishers kept in flight at once (tasks × messages per call); 0: the
    /// client's own window (the Python peers).
    #[serde(default)]
    pub in_flight: usize,
    /// Confirmed publishes per second.
    pub publish_msgs_per_s: f64,
    /// Messages received (and acked) per second, first publish to last receive.
    pub e2e_msgs_per_s: f64,
    /// Median latency, publish to receive.
    pub p50_us: u64,
    /// 99th percentile latency.
    pub p99_us: u64,
    /// 99.9th percentile latency.
    pub p999_us: u64,
    /// Messages that never arrived.
    pub lost: usize,
    /// Deliveries beyond the first.
    pub duplicates: usize,
    /// Runs this figure is the median of.
    pub runs: usize,
    /// The slowest of those runs, end to end (with more than one run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_min_msgs_per_s: Option<f64>,
    /// The fastest of those runs, end to end (with more than one run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2e_max_msgs_per_s: Option<f64>,
}

/// The run with the median end-to-end rate, with the spread (slowest and fastest run); losses
/// and duplicates are the worst of all runs.
pub fn median(mut runs: Vec<BenchResult>) -> Option<BenchResult> {
    if runs.is_empty() {
        return None;
    }
    let lost = runs.iter().map(|r| r.lost).max().unwrap_or(0);
    let duplicates = runs.iter().map(|r| r.duplicates).max().unwrap_or(0);
    let count = runs.len();
    runs.sort_by(|a, b| a.e2e_msgs_per_s.total_cmp(&b.e2e_msgs_per_s));
    let (slowest, fastest) = (runs[0].e2e_msgs_per_s, runs[count - 1].e2e_msgs_per_s);
    let mut middle = runs.swap_remove(count / 2);
    middle.lost = lost;
    middle.duplicates = duplicates;
    middle.runs = count;
    if count > 1 {
        middle.e2e_min_msgs_per_s = Some(slowest);
        middle.e2e_max_msgs_per_s = Some(fastest);
    }
    Some(middle)
}

/// The median of `values` with the smallest and the largest (zeros when there are none).
pub fn median_and_spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    match (values.first(), values.last()) {
        (Some(&low), Some(&high)) => (values[values.len() / 2], low, high),
        _ => (0.0, 0.0, 0.0),
    }
}

/// Waits, polling, until `done` or until `idle` passes with no progress in `progress()`.
pub async fn wait_until(done: impl Fn() -> bool, progress: impl Fn() -> usize, idle: Duration) {
    let mut last = (progress(), Instant::now());
    while !done() {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let now = progress();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > idle {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(messages: usize) -> Params {
        Params {
            idle_timeout: Duration::from_secs(1),
            ..Params::new(messages, 32, 1)
        }
    }

    #[test]
    fn the_tracker_counts_losses_and_duplicates() {
        let tracker = Tracker::new(4, "test");
        let mut latencies = Vec::new();
        for seq in [0, 1, 1, 3] {
            tracker.record(&stamp(seq, 32), &mut latencies);
        }
        tracker.flush(&mut latencies);
        let result = tracker.finish(
            ("memory", "bus"),
            &params(4),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert_eq!((result.lost, result.duplicates), (1, 1));
        assert_eq!(result.e2e_msgs_per_s, 3.0);
    }

    #[test]
    fn with_fan_out_every_copy_is_counted_apart() {
        let tracker = Tracker::fan_out(2, 2, "test");
        let mut latencies = Vec::new();
        for (copy, seq) in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 0)] {
            tracker.record_copy(copy, &stamp(seq, 32), &mut latencies);
        }
        tracker.flush(&mut latencies);
        assert!(!tracker.complete());
        let result = tracker.finish(
            ("memory", "bus"),
            &params(2),
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert_eq!((result.lost, result.duplicates), (1, 1));
        assert_eq!(result.e2e_msgs_per_s, 1.0);
    }

    #[test]
    fn the_median_keeps_the_worst_losses() {
        let run = |rate: f64, lost: usize| BenchResult {
            e2e_msgs_per_s: rate,
            lost,
            ..Tracker::new(1, "t").finish(("m", "c"), &params(1), Duration::ZERO, Duration::ZERO)
        };
        let median = median(vec![run(3.0, 0), run(1.0, 2), run(2.0, 0)]).unwrap();
        assert_eq!(
            (median.e2e_msgs_per_s, median.lost, median.runs),
            (2.0, 2, 3)
        );
        assert_eq!(
            (median.e2e_min_msgs_per_s, median.e2e_max_msgs_per_s),
            (Some(1.0), Some(3.0))
        );
    }
}
