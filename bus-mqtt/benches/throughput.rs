//! End-to-end QoS 1 throughput through a real Mosquitto (started here, as the tests do):
//! bus-mqtt (publish confirmed per message, manual acks) beside raw rumqttc MQTT 5 (pipelined
//! publishes, automatic acks) measured in the same run.
//!
//! ```text
//! cargo bench -p bus-mqtt --bench throughput               # 50,000 x 1 KiB per run
//! BENCH_MESSAGES=100000 cargo bench -p bus-mqtt --bench throughput
//! ```
//!
//! The figure is messages received (and acked) per second from the first publish to the last
//! ack, the median of 3 runs. Both sides move the same payloads over one publishing and one
//! consuming connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{Publisher, Subscriber, SubscriptionOptions, Topic};
use bus_mqtt::{MqttConfig, MqttPublisher, MqttSubscriber};
use bus_testkit::bench::{end_to_end, env_usize, median_rate};
use bus_testkit::mosquitto::Mosquitto;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};

const RUNS: usize = 3;
const PAYLOAD: usize = 1024;
/// Publishes in flight at once on the bus side (each waits for its PUBACK).
const CONCURRENCY: usize = 64;

async fn bus_run(url: &str, run: usize, messages: usize) -> Duration {
    let config = MqttConfig {
        url: url.to_string(),
        client_id: format!("bench-bus-{run}"),
        ..MqttConfig::default()
    };
    let topic = Topic::new(format!("bench/bus/{run}")).expect("topic");
    let subscription = MqttSubscriber::new(&config)
        .expect("config")
        .subscribe(&topic, SubscriptionOptions::new("bench").expect("name"))
        .await
        .expect("subscribe");
    let publisher = Arc::new(MqttPublisher::connect(&config).await.expect("connect"));
    let payload = Bytes::from(vec![0xA5u8; PAYLOAD]);
    let elapsed = end_to_end(
        publisher.clone(),
        &*subscription,
        &topic,
        messages,
        payload,
        CONCURRENCY,
    )
    .await;
    publisher.close().await.expect("close");
    subscription.close().await.expect("close");
    elapsed
}

async fn raw_run(port: u16, run: usize, messages: usize) -> Duration {
    let topic = format!("bench/raw/{run}");
    let mut options = MqttOptions::new(format!("bench-raw-sub-{run}"), "127.0.0.1", port);
    options.set_max_packet_size(Some(16 * 1024 * 1024));
    let (subscriber, mut sub_loop) = AsyncClient::new(options, 1024);
    subscriber
        .subscribe(&topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        if let Ok(Event::Incoming(Incoming::SubAck(_))) = sub_loop.poll().await {
            break;
        }
    }
    let mut options = MqttOptions::new(format!("bench-raw-pub-{run}"), "127.0.0.1", port);
    options.set_max_packet_size(Some(16 * 1024 * 1024));
    let (publisher, mut pub_loop) = AsyncClient::new(options, 1024);
    let poller = tokio::spawn(async move {
        let mut acked = 0;
        while acked < messages {
            if let Ok(Event::Incoming(Incoming::PubAck(_))) = pub_loop.poll().await {
                acked += 1;
            }
        }
    });
    let payload = Bytes::from(vec![0xA5u8; PAYLOAD]);
    let start = Instant::now();
    let producer = tokio::spawn({
        let topic = topic.clone();
        async move {
            for _ in 0..messages {
                publisher
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                    .await
                    .expect("publish");
            }
        }
    });
    let mut received = 0;
    while received < messages {
        if let Ok(Event::Incoming(Incoming::Publish(_))) = sub_loop.poll().await {
            received += 1;
        }
    }
    let elapsed = start.elapsed();
    producer.await.expect("producer");
    poller.await.expect("poller");
    elapsed
}

fn main() {
    let messages = env_usize("BENCH_MESSAGES", 50_000);
    let broker = Mosquitto::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let bus: Vec<_> = (0..RUNS)
        .map(|run| runtime.block_on(bus_run(&broker.url(), run, messages)))
        .collect();
    let raw: Vec<_> = (0..RUNS)
        .map(|run| runtime.block_on(raw_run(broker.port(), run, messages)))
        .collect();
    let (bus, raw) = (median_rate(messages, bus), median_rate(messages, raw));
    println!("Mosquitto end-to-end QoS 1, {PAYLOAD} B payloads, {messages} messages, median of {RUNS} runs");
    println!("{:>22}  {:>12}", "client", "msgs/s");
    println!("{:>22}  {:>12.0}", "bus-mqtt (MQTT 5)", bus);
    println!("{:>22}  {:>12.0}", "raw rumqttc (MQTT 5)", raw);
    println!("{:>22}  {:>11.2}x", "bus / raw", bus / raw);
}
