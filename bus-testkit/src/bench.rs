//! Helpers shared by the backends' benchmarks, so every backend is measured the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{Message, Publisher, Subscription, Topic};
use bytes::Bytes;

/// Publishes `messages` copies of `payload` with `concurrency` publishes in flight while
/// `subscription` receives and acks them; returns the time from the first publish to the last
/// ack.
pub async fn end_to_end(
    publisher: Arc<dyn Publisher>,
    subscription: &dyn Subscription,
    topic: &Topic,
    messages: usize,
    payload: Bytes,
    concurrency: usize,
) -> Duration {
    let start = Instant::now();
    let producers: Vec<_> = (0..concurrency)
        .map(|task| {
            let (publisher, topic, payload) = (publisher.clone(), topic.clone(), payload.clone());
            tokio::spawn(async move {
                for _ in (task..messages).step_by(concurrency) {
                    publisher
                        .publish(&topic, Message::new(payload.clone()))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for _ in 0..messages {
        let delivery = subscription.receive().await.expect("receive");
        delivery.ack().await.expect("ack");
    }
    let elapsed = start.elapsed();
    for producer in producers {
        producer.await.expect("producer");
    }
    elapsed
}

/// Messages per second of the median run.
pub fn median_rate(messages: usize, mut runs: Vec<Duration>) -> f64 {
    runs.sort();
    messages as f64 / runs[runs.len() / 2].as_secs_f64()
}

/// A `usize` from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
