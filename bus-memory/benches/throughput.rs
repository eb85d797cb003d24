//! End-to-end throughput of the in-memory backend (publish -> receive -> ack), beside a raw
//! `tokio::sync::mpsc` hand-off measured in the same run.
//!
//! ```text
//! cargo bench -p bus-memory --bench throughput            # 1,000,000 messages per case
//! BENCH_MESSAGES=200000 cargo bench -p bus-memory --bench throughput
//! ```
//!
//! One publisher task and one consumer task on a 2-worker runtime; the figure is messages
//! acked per second, the median of 3 runs. The raw baseline moves the same `Bytes` payloads
//! through a bounded channel with no acknowledgement at all.

use std::time::{Duration, Instant};

use bus_core::{Message, Publisher, Subscriber, SubscriptionOptions, Topic};
use bus_memory::{MemoryBroker, MemoryConfig};
use bus_testkit::bench::{env_usize, median_rate};
use bytes::Bytes;

const RUNS: usize = 3;

async fn bus_run(messages: usize, payload: Bytes) -> Duration {
    let broker = MemoryBroker::new(MemoryConfig::default()).expect("config");
    let (publisher, subscriber) = (broker.publisher(), broker.subscriber());
    let topic = Topic::new("bench").expect("topic");
    let subscription = subscriber
        .subscribe(&topic, SubscriptionOptions::new("bench").expect("name"))
        .await
        .expect("subscribe");
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for _ in 0..messages {
            publisher
                .publish(&topic, Message::new(payload.clone()))
                .await
                .expect("publish");
        }
    });
    for _ in 0..messages {
        let delivery = subscription.receive().await.expect("receive");
        delivery.ack().await.expect("ack");
    }
    let elapsed = start.elapsed();
    producer.await.expect("producer");
    elapsed
}

async fn raw_run(messages: usize, payload: Bytes) -> Duration {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(4096);
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for _ in 0..messages {
            sender.send(payload.clone()).await.expect("send");
        }
    });
    for _ in 0..messages {
        std::hint::black_box(receiver.recv().await.expect("recv"));
    }
    let elapsed = start.elapsed();
    producer.await.expect("producer");
    elapsed
}

fn main() {
    let messages = env_usize("BENCH_MESSAGES", 1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("bus-memory end-to-end throughput, {messages} messages, median of {RUNS} runs");
    println!(
        "{:>8}  {:>16}  {:>16}  {:>9}",
        "payload", "bus msgs/s", "raw mpsc msgs/s", "bus/raw"
    );
    for size in [16usize, 1024] {
        let payload = Bytes::from(vec![0xA5u8; size]);
        let bus: Vec<_> = (0..RUNS)
            .map(|_| runtime.block_on(bus_run(messages, payload.clone())))
            .collect();
        let raw: Vec<_> = (0..RUNS)
            .map(|_| runtime.block_on(raw_run(messages, payload.clone())))
            .collect();
        let (bus, raw) = (median_rate(messages, bus), median_rate(messages, raw));
        println!(
            "{:>7}B  {:>16.0}  {:>16.0}  {:>8.2}x",
            size,
            bus,
            raw,
            bus / raw
        );
    }
}
