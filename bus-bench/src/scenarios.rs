//! Two loss-and-memory scenarios: the memory backend's bound under a stalled consumer, and
//! Mosquitto's queue limit under a 100,000-message burst.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::memory::{MemoryBackend, MemoryConfig};
use bus::Backend;
use bus::{Message, Publisher, Subscriber, SubscriptionOptions, Topic};
use bus_testkit::mosquitto::Mosquitto;
use serde::Serialize;

use crate::clients::Broker;
use crate::measure::{stamp, Params, Tracker};

/// Resident and peak resident memory of this process, in MiB (Linux `/proc/self/status`).
pub fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    (
        status_kib(&status, "VmRSS:") / 1024.0,
        status_kib(&status, "VmHWM:") / 1024.0,
    )
}

/// The field `name` (for example `VmRSS:`) of a `/proc/<pid>/status` text, in KiB; 0 when absent.
pub fn status_kib(status: &str, name: &str) -> f64 {
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0.0)
}

/// What the backpressure scenario measured.
#[derive(Debug, Serialize)]
pub struct Backpressure {
    /// Messages the publisher tried to send.
    pub messages: usize,
    /// Payload size.
    pub payload_bytes: usize,
    /// The subscription's bound (`memory.max_queued_bytes`).
    pub max_queued_bytes: usize,
    /// Publishes confirmed when the consumer had been stalled for the whole stall period.
    pub published_while_stalled: usize,
    /// The same, a second before the end of the stall: equal when the publisher was held back.
    pub published_a_second_earlier: usize,
    /// RSS at the end of the stall, MiB.
    pub rss_stalled_mib: f64,
    /// Peak RSS of the whole run, MiB.
    pub peak_rss_mib: f64,
    /// Messages delivered once the consumer resumed (all of them, or the scenario failed).
    pub delivered: usize,
}

/// Publishes `messages` to the memory backend while its only consumer stalls for `stall`,
/// sampling how far the publisher got and the process's memory; then the consumer drains.
pub async fn backpressure(
    messages: usize,
    payload: usize,
    max_queued_bytes: usize,
    stall: Duration,
) -> Backpressure {
    let broker = MemoryBackend::connect(&MemoryConfig {
        name: format!("backpressure-{max_queued_bytes}-{}", std::process::id()),
        max_queued_bytes,
        publish_timeout_ms: 0,
        ..MemoryConfig::default()
    })
    .await
    .expect("memory config");
    let topic = Topic::new("bench/backpressure").expect("topic");
    let subscription = broker
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("stalled").expect("name"))
        .await
        .expect("subscribe");
    let publisher = Arc::new(broker.publisher());
    let confirmed = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn({
        let (publisher, topic, confirmed) = (publisher.clone(), topic.clone(), confirmed.clone());
        async move {
            for seq in 0..messages as u64 {
                publisher
                    .publish(&topic, Message::new(stamp(seq, payload)))
                    .await
                    .expect("publish");
                confirmed.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    println!("{:>8} {:>12} {:>10}", "t (s)", "published", "RSS MiB");
    let started = Instant::now();
    let mut a_second_earlier = 0;
    while started.elapsed() < stall {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss, _) = memory_mib();
        let published = confirmed.load(Ordering::Relaxed);
        println!(
            "{:>8.1} {:>12} {:>10.1}",
            started.elapsed().as_secs_f64(),
            published,
            rss
        );
        if started.elapsed() + Duration::from_secs(1) <= stall {
            a_second_earlier = published;
        }
    }
    let published_while_stalled = confirmed.load(Ordering::Relaxed);
    let (rss_stalled_mib, _) = memory_mib();
    let tracker = Tracker::new(messages, "draining");
    let mut latencies = Vec::new();
    while !tracker.complete() {
        match tokio::time::timeout(Duration::from_secs(10), subscription.receive()).await {
            Ok(Ok(delivery)) => {
                tracker.record(delivery.payload(), &mut latencies);
                let _ = delivery.ack().await;
            }
            _ => break,
        }
    }
    tracker.flush(&mut latencies);
    producer.await.expect("producer");
    Backpressure {
        messages,
        payload_bytes: payload,
        max_queued_bytes,
        published_while_stalled,
        published_a_second_earlier: a_second_earlier,
        rss_stalled_mib,
        peak_rss_mib: memory_mib().1,
        delivered: tracker.distinct(),
    }
}

/// What the Mosquitto queue-limit check measured for one broker config.
#[derive(Debug, Serialize)]
pub struct QueueLimit {
    /// The broker config under test.
    pub config: String,
    /// Messages published (all confirmed) while the consumer was not reading.
    pub messages: usize,
    /// Messages the consumer got once it read.
    pub delivered: usize,
    /// Never delivered.
    pub lost: usize,
}

/// Publishes a burst of `messages` at QoS 1 to a subscription whose consumer is not reading,
/// then reads: with the shipped config nothing may be lost; with Mosquitto's default
/// `max_queued_messages 1000` it silently drops the rest.
pub async fn mosquitto_queue_limit(messages: usize, payload: usize) -> Vec<QueueLimit> {
    let mut results = Vec::new();
    for (name, limit) in [
        ("shipped (max_queued_messages 1000000000)", None),
        ("Mosquitto default (max_queued_messages 1000)", Some(1000)),
    ] {
        let broker = match limit {
            None => Mosquitto::start(),
            Some(limit) => Mosquitto::start_with(move |_| format!("max_queued_messages {limit}\n")),
        };
        let params = Params {
            idle_timeout: Duration::from_secs(5),
            ..Params::new(messages, payload, 64)
        };
        let config = Broker::Mqtt {
            port: broker.port(),
        }
        .bus_config(&params, "queue-limit");
        let bus = bus::connect(&config).await.expect("connect");
        let topic = Topic::new("bench/queue-limit").expect("topic");
        let subscription = bus
            .subscriber
            .subscribe(&topic, SubscriptionOptions::new("slow").expect("name"))
            .await
            .expect("subscribe");
        let publisher: Arc<dyn Publisher> = Arc::from(bus.publisher);
        let tasks: Vec<_> = (0..params.publishers)
            .map(|task| {
                let (publisher, topic) = (publisher.clone(), topic.clone());
                tokio::spawn(async move {
                    for seq in (task..messages).step_by(64) {
                        publisher
                            .publish(&topic, Message::new(stamp(seq as u64, payload)))
                            .await
                            .expect("publish");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("publisher");
        }
        let tracker = Tracker::new(messages, "reading the burst");
        let mut latencies = Vec::new();
        while !tracker.complete() {
            match tokio::time::timeout(params.idle_timeout, subscription.receive()).await {
                Ok(Ok(delivery)) => {
                    tracker.record(delivery.payload(), &mut latencies);
                    let _ = delivery.ack().await;
                }
                _ => break,
            }
        }
        tracker.flush(&mut latencies);
        let _ = subscription.close().await;
        let _ = publisher.close().await;
        let _ = bus.subscriber.close().await;
        results.push(QueueLimit {
            config: name.to_string(),
            messages,
            delivered: tracker.distinct(),
            lost: messages - tracker.distinct(),
        });
    }
    results
}

/// What the memory-budget scenario measured.
#[derive(Debug, Serialize)]
pub struct MemoryBudget {
    /// Payload size.
    pub payload_bytes: usize,
    /// The subscription's bound (`memory.max_queued_bytes`).
    pub max_queued_bytes: usize,
    /// Messages the subscription held when it was full.
    pub messages_held: usize,
    /// RSS growth from before the first publish to the full subscription, MiB.
    pub rss_growth_mib: f64,
    /// RSS growth over the bound: 1.0 means the bound is what the process really uses.
    pub growth_over_bound: f64,
}

/// Fills one stalled subscription of a fresh memory broker until publishers are held back,
/// and compares the process's RSS growth with `memory.max_queued_bytes`.
pub async fn memory_budget(payload: usize, max_queued_bytes: usize) -> MemoryBudget {
    let broker = MemoryBackend::connect(&MemoryConfig {
        name: format!("budget-{payload}-{}", std::process::id()),
        max_queued_bytes,
        publish_timeout_ms: 200,
        ..MemoryConfig::default()
    })
    .await
    .expect("memory config");
    let topic = Topic::new("bench/budget").expect("topic");
    let _stalled = broker
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("stalled").expect("name"))
        .await
        .expect("subscribe");
    let publisher = broker.publisher();
    let (before, _) = memory_mib();
    let mut held = 0usize;
    while publisher
        .publish(&topic, Message::new(stamp(held as u64, payload)))
        .await
        .is_ok()
    {
        held += 1;
    }
    let (after, _) = memory_mib();
    let growth = after - before;
    MemoryBudget {
        payload_bytes: payload,
        max_queued_bytes,
        messages_held: held,
        rss_growth_mib: growth,
        growth_over_bound: growth * 1024.0 * 1024.0 / max_queued_bytes as f64,
    }
}
