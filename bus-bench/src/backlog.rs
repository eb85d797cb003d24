//! `bus bench backlog`: what a backlog costs in resident memory. A subscription is created with
//! no consumer, `messages` messages are published to it, the broker's and this process's
//! resident memory are read, then a consumer drains the backlog and every message is counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::{Message, Publisher, SubscriptionOptions, Topic};
use serde::Serialize;

use crate::clients::{spawn_consumer, Broker};
use crate::measure::{stamp, wait_until, Params, Tracker};
use crate::scenarios::{memory_mib, status_kib};

/// What the backlog run measured.
#[derive(Debug, Serialize)]
pub struct Backlog {
    /// `mqtt` or `gcp`.
    pub backend: &'static str,
    /// Messages in the backlog.
    pub messages: usize,
    /// Payload size.
    pub payload_bytes: usize,
    /// Confirmed publishes per second while the backlog was built.
    pub publish_msgs_per_s: f64,
    /// The broker's resident memory (its process and descendants) before publishing, MiB.
    pub broker_rss_before_mib: f64,
    /// The broker's resident memory with the whole backlog held, MiB.
    pub broker_rss_backlog_mib: f64,
    /// The broker's resident memory after the backlog was drained, MiB.
    pub broker_rss_drained_mib: f64,
    /// This process's (the bus client's) resident memory with the backlog held, MiB.
    pub client_rss_backlog_mib: f64,
    /// This process's peak resident memory over the whole run, MiB (includes the harness's
    /// per-message tracking).
    pub client_peak_rss_mib: f64,
    /// Deliveries per second while draining.
    pub drain_msgs_per_s: f64,
    /// Messages never delivered.
    pub lost: usize,
    /// Deliveries beyond the first.
    pub duplicates: usize,
}

/// Resident memory of process `pid` and all its descendants, MiB (Linux `/proc`).
pub fn tree_rss_mib(pid: u32) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    // (pid, parent pid) of every process; the broker's tree is found from them.
    let processes: Vec<(u32, u32)> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name is in parentheses and may hold spaces: fields follow the last ')'.
            let after = &stat[stat.rfind(')')? + 1..];
            let parent = after.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, parent))
        })
        .collect();
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        tree.extend(
            processes
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(child, _)| *child),
        );
        next += 1;
    }
    tree.iter().map(|pid| process_rss_kib(*pid)).sum::<f64>() / 1024.0
}

fn process_rss_kib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status_kib(&status, "VmRSS:")
}

/// Builds a backlog of `params.messages` on `broker` (whose process is `broker_pid`), measures,
/// drains and counts.
pub async fn run(broker: &Broker, broker_pid: u32, params: &Params) -> Result<Backlog, String> {
    let backend = broker.backend();
    let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
    let connection = bus::connect(&broker.bus_config(params, &format!("backlog-{run}")))
        .await
        .map_err(|e| e.to_string())?;
    let topic = Topic::new(format!("bench/backlog-{run}")).map_err(|e| e.to_string())?;
    let options = SubscriptionOptions::new("backlog").map_err(|e| e.to_string())?;
    connection
        .subscriber
        .create_subscription(&topic, options.clone())
        .await
        .map_err(|e| e.to_string())?;
    let broker_rss_before_mib = tree_rss_mib(broker_pid);

    // Publish with `publishers` in flight, nobody consuming.
    let publisher: Arc<dyn Publisher> = Arc::from(connection.backend().publisher());
    let started = Instant::now();
    let tasks: Vec<_> = (0..params.publishers)
        .map(|task| {
            let (publisher, topic) = (publisher.clone(), topic.clone());
            let (messages, publishers, size) = (params.messages, params.publishers, params.payload);
            tokio::spawn(async move {
                for seq in (task..messages).step_by(publishers) {
                    publisher
                        .publish(&topic, Message::new(stamp(seq as u64, size)))
                        .await
                        .map_err(|e| format!("publish {seq}: {e}"))?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    let published = started.elapsed();
    let publish_msgs_per_s = params.messages as f64 / published.as_secs_f64();
    // Let the broker settle (persistence, queue moves) before reading its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let broker_rss_backlog_mib = tree_rss_mib(broker_pid);
    let client_rss_backlog_mib = memory_mib().0;
    // Where the drain takes long (the emulator with a large backlog), this much is known.
    eprintln!(
        "{backend}: {} messages published in {:.1} s; RSS with the backlog: broker {broker_rss_backlog_mib:.1} MiB, client {client_rss_backlog_mib:.1} MiB; draining",
        params.messages,
        published.as_secs_f64(),
    );

    // Drain: one consumer, every message counted.
    let tracker = Arc::new(Tracker::new(params.messages, &format!("{backend} backlog")));
    let subscription = Arc::new(
        connection
            .subscriber
            .subscribe(&topic, options)
            .await
            .map_err(|e| e.to_string())?,
    );
    let started = Instant::now();
    let consumer = spawn_consumer(subscription.clone(), tracker.clone(), 0, 256);
    wait_until(
        || tracker.complete(),
        || tracker.distinct(),
        params.idle_timeout,
    )
    .await;
    let drained = started.elapsed();
    let _ = subscription.close().await;
    let _ = consumer.await;
    let result = tracker.finish((backend, "bus"), params, drained, drained);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let broker_rss_drained_mib = tree_rss_mib(broker_pid);
    let _ = publisher.close().await;
    let _ = connection.close().await;
    Ok(Backlog {
        backend,
        messages: params.messages,
        payload_bytes: params.payload,
        publish_msgs_per_s,
        broker_rss_before_mib,
        broker_rss_backlog_mib,
        broker_rss_drained_mib,
        client_rss_backlog_mib,
        client_peak_rss_mib: memory_mib().1,
        drain_msgs_per_s: result.e2e_msgs_per_s,
        lost: result.lost,
        duplicates: result.duplicates,
    })
}

/// The result as a few lines of text.
pub fn describe(b: &Backlog) -> String {
    format!(
        "{} backlog of {} messages of {} B (published at {:.0} msg/s, nobody consuming)\n\
         broker RSS: {:.1} MiB before, {:.1} MiB holding the backlog, {:.1} MiB after draining\n\
         bus client RSS holding the backlog: {:.1} MiB (peak over the run {:.1} MiB, the harness's tracking included)\n\
         drained at {:.0} msg/s; lost {}, duplicates {}\n",
        b.backend,
        b.messages,
        b.payload_bytes,
        b.publish_msgs_per_s,
        b.broker_rss_before_mib,
        b.broker_rss_backlog_mib,
        b.broker_rss_drained_mib,
        b.client_rss_backlog_mib,
        b.client_peak_rss_mib,
        b.drain_msgs_per_s,
        b.lost,
        b.duplicates
    )
}
