//! The load-under-faults check shared by the backends' fault tests: several publishers send
//! distinct messages while a fault is injected at given points, and one consumer must receive
//! every message at least once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{Message, Publisher, Subscription, Topic};
use futures::future::BoxFuture;

/// What a load-under-faults run measured (it panics on any loss).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultReport {
    /// Messages published (and all received).
    pub messages: usize,
    /// Deliveries beyond the first of a message.
    pub duplicates: usize,
    /// From the first publish to the last message received.
    pub elapsed: Duration,
}

/// Each publisher sends `each` messages `"<publisher>:<n>"` to `topic`, one at a time, while
/// `subscription` receives and acks; `inject` runs once whenever the count of confirmed
/// publishes reaches a value of `fault_at`. Messages are identified by content, since a publish
/// retried after a fault may reach the broker twice under two ids. Panics naming how many
/// messages are missing if nothing arrives for `receive_timeout`, or if a publish fails.
pub async fn load_under_faults(
    publishers: Vec<Arc<dyn Publisher>>,
    subscription: &dyn Subscription,
    topic: &Topic,
    each: usize,
    receive_timeout: Duration,
    fault_at: &[usize],
    inject: impl Fn() -> BoxFuture<'static, ()> + Send + 'static,
) -> FaultReport {
    let total = publishers.len() * each;
    let confirmed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = publishers
        .iter()
        .enumerate()
        .map(|(p, publisher)| {
            let (publisher, topic, confirmed) = (publisher.clone(), topic.clone(), confirmed.clone());
            tokio::spawn(async move {
                let mut ids = Vec::with_capacity(each);
                for i in 0..each {
                    let id = publisher
                        .publish(&topic, Message::new(format!("{p}:{i}")))
                        .await
                        .unwrap_or_else(|e| {
                            panic!("publisher {p}, message {i}: a publish across a fault must wait and succeed: {e}")
                        });
                    ids.push(id);
                    confirmed.fetch_add(1, Ordering::Relaxed);
                }
                ids
            })
        })
        .collect();
    let injector = tokio::spawn({
        let (confirmed, fault_at) = (confirmed.clone(), fault_at.to_vec());
        async move {
            for threshold in fault_at {
                while confirmed.load(Ordering::Relaxed) < threshold {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                inject().await;
            }
        }
    });

    let mut deliveries: HashMap<String, usize> = HashMap::new();
    while deliveries.len() < total {
        let delivery = tokio::time::timeout(receive_timeout, subscription.receive())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {total} messages lost ({} publishes confirmed)",
                    total - deliveries.len(),
                    confirmed.load(Ordering::Relaxed)
                )
            })
            .expect("receive");
        let payload = String::from_utf8_lossy(delivery.payload()).into_owned();
        *deliveries.entry(payload).or_default() += 1;
        // An ack can fail while the broker is away; the message then comes back (a duplicate).
        let _ = delivery.ack().await;
    }
    let elapsed = started.elapsed();
    injector.await.expect("fault injector");
    let mut ids = HashSet::new();
    for task in tasks {
        ids.extend(task.await.expect("publisher task"));
    }
    assert_eq!(ids.len(), total, "every publish returned its own id");
    for publisher in &publishers {
        publisher.close().await.expect("close publisher");
    }
    let missing = (0..publishers.len())
        .flat_map(|p| (0..each).map(move |i| format!("{p}:{i}")))
        .filter(|message| !deliveries.contains_key(message))
        .count();
    assert_eq!(missing, 0, "{missing} of {total} messages lost");
    FaultReport {
        messages: total,
        duplicates: deliveries.values().map(|n| n - 1).sum(),
        elapsed,
    }
}
