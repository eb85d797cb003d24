//! End-to-end throughput through Google's Pub/Sub emulator (started here, as the tests do):
//! bus-gcp beside the raw google-cloud-pubsub client measured in the same run.
//!
//! ```text
//! cargo bench -p bus-gcp --bench throughput               # 10,000 x 1 KiB per run
//! BENCH_MESSAGES=20000 BENCH_STREAMS=4 cargo bench -p bus-gcp --bench throughput
//! ```
//!
//! The figure is messages received and acked per second, from the first publish to the last
//! ack, the median of 3 runs. Both sides publish with 64 publishes in flight and consume with
//! one subscriber; bus-gcp uses `BENCH_STREAMS` streaming pulls (default 1, the raw client 1).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{Publisher, Subscriber, SubscriptionOptions, Topic};
use bus_gcp::{GcpBackend, GcpConfig};
use bus_testkit::bench::{end_to_end, env_usize, median_rate};
use bus_testkit::emulator::PubSubEmulator;
use bytes::Bytes;
use google_cloud_pubsub::client::{Publisher as RawPublisher, Subscriber as RawSubscriber};
use google_cloud_pubsub::model::Message as RawMessage;

const RUNS: usize = 3;
const PAYLOAD: usize = 1024;
const CONCURRENCY: usize = 64;
const PROJECT: &str = "bench";

fn config(host: &str, streams: usize) -> GcpConfig {
    GcpConfig {
        endpoint: Some(format!("http://{host}")),
        streams,
        ..GcpConfig::new(PROJECT)
    }
}

async fn bus_run(host: &str, run: usize, messages: usize, streams: usize) -> Duration {
    let backend = GcpBackend::connect(&config(host, streams))
        .await
        .expect("connect");
    let topic = Topic::new(format!("bench/bus-{run}")).expect("topic");
    let subscription = backend
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("bench").expect("name"))
        .await
        .expect("subscribe");
    let publisher: Arc<dyn Publisher> = Arc::new(backend.publisher());
    let payload = Bytes::from(vec![0xA5u8; PAYLOAD]);
    let elapsed = end_to_end(
        publisher,
        &*subscription,
        &topic,
        messages,
        payload,
        CONCURRENCY,
    )
    .await;
    subscription.close().await.expect("close");
    elapsed
}

async fn raw_run(host: &str, run: usize, messages: usize) -> Duration {
    // Provisioning is setup, not measured: let bus-gcp create the topic and subscription.
    let backend = GcpBackend::connect(&config(host, 1))
        .await
        .expect("connect");
    let topic = Topic::new(format!("bench/raw-{run}")).expect("topic");
    let options = SubscriptionOptions::new("bench").expect("name");
    backend
        .subscriber()
        .subscribe(&topic, options.clone())
        .await
        .expect("provision")
        .close()
        .await
        .expect("close");
    let anonymous = || google_cloud_auth::credentials::anonymous::Builder::new().build();
    let endpoint = format!("http://{host}");
    let publisher = RawPublisher::builder(backend.topic_path(&topic).expect("path"))
        .with_endpoint(endpoint.clone())
        .with_credentials(anonymous())
        .build()
        .await
        .expect("raw publisher");
    let subscriber = RawSubscriber::builder()
        .with_endpoint(endpoint)
        .with_credentials(anonymous())
        .build()
        .await
        .expect("raw subscriber");
    let mut stream = subscriber
        .subscribe(backend.subscription_path(&options, &topic).expect("path"))
        .build();
    let payload = Bytes::from(vec![0xA5u8; PAYLOAD]);
    let start = Instant::now();
    let producers: Vec<_> = (0..CONCURRENCY)
        .map(|task| {
            let (publisher, payload) = (publisher.clone(), payload.clone());
            tokio::spawn(async move {
                for _ in (task..messages).step_by(CONCURRENCY) {
                    publisher
                        .publish(RawMessage::new().set_data(payload.clone()))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    let mut received = 0;
    while received < messages {
        let (_, handler) = stream.next().await.expect("stream open").expect("message");
        handler.ack();
        received += 1;
    }
    let elapsed = start.elapsed();
    for producer in producers {
        producer.await.expect("producer");
    }
    stream.shutdown_token().shutdown().await;
    elapsed
}

fn main() {
    let messages = env_usize("BENCH_MESSAGES", 10_000);
    let streams = env_usize("BENCH_STREAMS", 1);
    let emulator = PubSubEmulator::start();
    let host = emulator.host_port();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let bus: Vec<_> = (0..RUNS)
        .map(|run| runtime.block_on(bus_run(&host, run, messages, streams)))
        .collect();
    let raw: Vec<_> = (0..RUNS)
        .map(|run| runtime.block_on(raw_run(&host, run, messages)))
        .collect();
    let (bus, raw) = (median_rate(messages, bus), median_rate(messages, raw));
    println!("Pub/Sub emulator end-to-end, {PAYLOAD} B payloads, {messages} messages, median of {RUNS} runs");
    println!("{:>34}  {:>10}", "client", "msgs/s");
    println!(
        "{:>34}  {:>10.0}",
        format!("bus-gcp ({streams} stream(s))"),
        bus
    );
    println!(
        "{:>34}  {:>10.0}",
        "raw google-cloud-pubsub (1 stream)", raw
    );
    println!("{:>34}  {:>9.2}x", "bus / raw", bus / raw);
}
