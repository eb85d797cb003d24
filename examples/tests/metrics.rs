//! The Prometheus endpoint a service serves with `[telemetry] prometheus`: scraped over HTTP
//! while `consume` runs on Mosquitto, its counters match the messages sent.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bus::{Message, Topic};
use bus_examples::{DEMO_TOPIC, REPLY_TOPIC};
use bus_testkit::mosquitto::Mosquitto;
use bus_testkit::prometheus::sample;
use common::{BrokerEnv, Example};

/// GET /metrics from `address`.
fn scrape(address: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).expect("the endpoint listens");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_endpoint_counts_what_consume_did_on_mosquitto() {
    let broker = Mosquitto::start();
    let address = format!("127.0.0.1:{}", bus_testkit::process::free_port());
    let env = BrokerEnv::mosquitto(&broker);
    let consume = Example::start(
        "consume",
        &[],
        &env.with(&[("BUS_TELEMETRY__PROMETHEUS", &address)]),
    );
    consume.expect_line("stderr", "ready");

    let bus = bus::connect(&env.config()).await.expect("test connects");
    let topic = Topic::new(DEMO_TOPIC).unwrap();
    for i in 0..6 {
        bus.publisher
            .publish(&topic, Message::new(format!("message {i}")))
            .await
            .unwrap();
    }
    // "Hello" makes consume publish one reply.
    bus.publisher
        .publish(&topic, Message::new("Hello"))
        .await
        .unwrap();
    consume.expect_line("stdout", "It works");

    let subscription = r#"subscription="consume""#;
    let started = Instant::now();
    let text = loop {
        let text = scrape(&address);
        if sample(&text, "bus_messages_acked_total", &[subscription]) == Some(7.0) {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "acks not counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let on_topic = format!(r#"topic="{DEMO_TOPIC}""#);
    let labels = [subscription, on_topic.as_str(), r#"system="mqtt""#];
    assert_eq!(
        sample(&text, "bus_messages_delivered_total", &labels),
        Some(7.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "bus_messages_nacked_total", &labels),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "bus_messages_in_flight", &labels),
        Some(0.0),
        "{text}"
    );
    let reply = format!(r#"topic="{REPLY_TOPIC}""#);
    assert_eq!(
        sample(
            &text,
            "bus_messages_published_total",
            &[reply.as_str(), r#"outcome="ok""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("bus_publish_duration_seconds"),
        "publish latency:\n{text}"
    );
    eprintln!("{text}");
    consume.terminate();
    bus.close().await.unwrap();
}

/// A trace collector that accepts connections and never answers holds up neither messages nor
/// the stop: export runs on its own thread and gives up at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_holds_nothing_up_on_mosquitto() {
    let broker = Mosquitto::start();
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", blackhole.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let held = held.clone();
        std::thread::spawn(move || {
            for stream in blackhole.incoming().map_while(Result::ok) {
                held.lock().unwrap().push(stream);
            }
        });
    }
    let env = BrokerEnv::mosquitto(&broker);
    let mut consume = Example::start(
        "consume",
        &[],
        &env.with(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ]),
    );
    consume.expect_line("stderr", "ready");
    let bus = bus::connect(&env.config()).await.expect("test connects");
    let topic = Topic::new(DEMO_TOPIC).unwrap();
    let started = Instant::now();
    for i in 0..500 {
        bus.publisher
            .publish(&topic, Message::new(format!("message {i}")))
            .await
            .unwrap();
    }
    consume.expect_line("stdout", "message 499");
    let took = started.elapsed();
    assert!(
        !held.lock().unwrap().is_empty(),
        "consume tried to export to the collector"
    );
    let asked = Instant::now();
    consume.terminate();
    let status = consume.wait();
    eprintln!(
        "500 messages consumed in {took:?} with the collector silent; stopped in {:?}",
        asked.elapsed()
    );
    assert!(status.success(), "{}", consume.transcript());
    assert!(
        asked.elapsed() < Duration::from_secs(12),
        "stopped after {:?}",
        asked.elapsed()
    );
    bus.close().await.unwrap();
}
