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
#[non_exhaustive]
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

/// Deliveries counted by message content (`"<publisher>:<n>"`), for one subscription.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    counts: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&self, payload: String) {
        *self
            .counts
            .lock()
            .expect("tally lock")
            .entry(payload)
            .or_default() += 1;
    }

    /// How many distinct messages arrived.
    pub fn distinct(&self) -> usize {
        self.counts.lock().expect("tally lock").len()
    }

    /// Deliveries beyond the first of each message.
    pub fn duplicates(&self) -> usize {
        self.counts
            .lock()
            .expect("tally lock")
            .values()
            .map(|n| n - 1)
            .sum()
    }

    /// Messages of `publishers` × `each` that never arrived.
    pub fn missing(&self, publishers: usize, each: usize) -> Vec<String> {
        let counts = self.counts.lock().expect("tally lock");
        (0..publishers)
            .flat_map(|p| (0..each).map(move |i| format!("{p}:{i}")))
            .filter(|message| !counts.contains_key(message))
            .collect()
    }

    /// Waits until `total` distinct messages arrived, or until nothing new arrived for `quiet`.
    pub async fn wait_for(&self, total: usize, quiet: Duration) {
        let mut last = (self.distinct(), Instant::now());
        while self.distinct() < total {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.distinct();
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > quiet {
                return;
            }
        }
    }
}

/// A consumer that receives and acks into a [`Tally`] until it is stopped.
#[derive(Debug)]
pub struct Collector {
    subscription: Arc<dyn Subscription>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Starts receiving from `subscription`; every delivery is counted, then acked (an ack
    /// that fails, say while the broker is away, gives a redelivery).
    pub fn start(subscription: Box<dyn Subscription>, tally: Tally) -> Collector {
        let subscription: Arc<dyn Subscription> = Arc::from(subscription);
        let task = tokio::spawn({
            let subscription = subscription.clone();
            async move {
                loop {
                    match subscription.receive().await {
                        Ok(delivery) => {
                            tally.add(String::from_utf8_lossy(delivery.payload()).into_owned());
                            let _ = delivery.ack().await;
                        }
                        Err(e) if e.kind() == bus_core::ErrorKind::Closed => return,
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
        });
        Collector { subscription, task }
    }

    /// Closes the subscription (a graceful leave) and waits for the receive loop to end.
    pub async fn stop(self) {
        let _ = self.subscription.close().await;
        let _ = self.task.await;
    }
}

/// Publishers each sending `each` distinct messages `"<publisher>:<n>"`, one at a time.
#[derive(Debug)]
pub struct Publishing {
    confirmed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>,
    /// How many messages in all.
    pub total: usize,
}

impl Publishing {
    /// Starts the publishers.
    pub fn start(publishers: Vec<Arc<dyn Publisher>>, topic: &Topic, each: usize) -> Publishing {
        let confirmed = Arc::new(AtomicUsize::new(0));
        let total = publishers.len() * each;
        let tasks = publishers
            .into_iter()
            .enumerate()
            .map(|(p, publisher)| {
                let (topic, confirmed) = (topic.clone(), confirmed.clone());
                tokio::spawn(async move {
                    for i in 0..each {
                        publisher
                            .publish(&topic, Message::new(format!("{p}:{i}")))
                            .await
                            .map_err(|e| format!("publisher {p}, message {i}: {e}"))?;
                        confirmed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        Publishing {
            confirmed,
            tasks,
            total,
        }
    }

    /// How many publishes returned so far.
    pub fn confirmed(&self) -> usize {
        self.confirmed.load(Ordering::Relaxed)
    }

    /// Waits until at least `count` publishes returned.
    pub async fn reach(&self, count: usize) {
        while self.confirmed() < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for every publisher; panics naming the first publish that failed.
    pub async fn finish(self) {
        for task in self.tasks {
            if let Err(e) = task.await.expect("publisher task") {
                panic!("a publish across a fault must wait and succeed: {e}");
            }
        }
    }
}
