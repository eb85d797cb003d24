//! Against Google's Pub/Sub emulator: interop with its REST API (what gcloud and other clients
//! speak), provisioning off, connection errors, and the real-GCP test (run only when asked).

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use bus_core::{ErrorKind, Message, Publisher, Subscriber, SubscriptionOptions, Topic};
use bus_gcp::{names, GcpBackend, GcpConfig};
use bus_testkit::emulator::PubSubEmulator;
use bus_testkit::mosquitto::{free_port, which};
use serde_json::{json, Value};

const PROJECT: &str = "bus-emulator-tests";

fn host() -> String {
    std::env::var(bus_gcp::EMULATOR_HOST_VAR)
        .unwrap_or_else(|_| PubSubEmulator::shared().host_port())
}

async fn backend() -> GcpBackend {
    let config = GcpConfig {
        endpoint: Some(format!("http://{}", host())),
        ..GcpConfig::new(PROJECT)
    };
    GcpBackend::connect(&config)
        .await
        .expect("connect to the emulator")
}

/// One REST call to the emulator with curl: `method path body` → JSON.
fn rest(method: &str, path: &str, body: &Value) -> Value {
    let curl = which("curl").expect("the interop tests need curl: apt-get install -y curl");
    let url = format!("http://{}/v1/projects/{PROJECT}/{path}", host());
    let output = Command::new(curl)
        .args([
            "-s",
            "-X",
            method,
            &url,
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(body.to_string())
        .output()
        .expect("run curl");
    assert!(output.status.success(), "curl {method} {url} failed");
    let text = String::from_utf8_lossy(&output.stdout);
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}: {text}"));
    assert!(value.get("error").is_none(), "{method} {url}: {value}");
    value
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn a_message_published_over_rest_reaches_a_bus_consumer() {
    let backend = backend().await;
    let topic = Topic::new("interop/from-rest").unwrap();
    let subscription = backend
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("bus-consumer").unwrap())
        .await
        .unwrap();
    let payload: Vec<u8> = (0..=255u8).collect();
    let topic_id = names::topic_id(&topic).unwrap();
    let published = rest(
        "POST",
        &format!("topics/{topic_id}:publish"),
        &json!({"messages": [{"data": b64(&payload), "attributes": {"origin": "rest", "ünï": "✓"}}]}),
    );
    let id = published["messageIds"][0].as_str().unwrap().to_string();
    let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.receive())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.id(), id);
    assert_eq!(delivery.payload().as_ref(), payload.as_slice());
    assert_eq!(
        delivery.attributes().get("origin").map(String::as_str),
        Some("rest")
    );
    assert_eq!(
        delivery.attributes().get("ünï").map(String::as_str),
        Some("✓")
    );
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn a_bus_message_is_pulled_byte_for_byte_over_rest() {
    let backend = backend().await;
    let topic = Topic::new("interop/to-rest").unwrap();
    let topic_id = names::topic_id(&topic).unwrap();
    rest("PUT", &format!("topics/{topic_id}"), &json!({}));
    rest(
        "PUT",
        "subscriptions/rest-reader",
        &json!({"topic": format!("projects/{PROJECT}/topics/{topic_id}")}),
    );
    let payload: Vec<u8> = (0..=255u8).rev().collect();
    let publisher = backend.publisher();
    let id = publisher
        .publish(
            &topic,
            Message::new(payload.clone()).with_attribute("k", "välue"),
        )
        .await
        .unwrap();
    publisher.close().await.unwrap();
    let pulled = rest(
        "POST",
        "subscriptions/rest-reader:pull",
        &json!({"maxMessages": 1}),
    );
    let message = &pulled["receivedMessages"][0]["message"];
    assert_eq!(message["messageId"], json!(id));
    let data = base64::engine::general_purpose::STANDARD
        .decode(message["data"].as_str().unwrap_or(""))
        .unwrap();
    assert_eq!(
        data, payload,
        "the wire payload is exactly the message payload"
    );
    assert_eq!(message["attributes"], json!({"k": "välue"}));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_reported_within_seconds() {
    let config = GcpConfig {
        endpoint: Some(format!("http://127.0.0.1:{}", free_port())),
        connect_timeout_ms: 2_000,
        ..GcpConfig::new(PROJECT)
    };
    let started = Instant::now();
    let err = GcpBackend::connect(&config)
        .await
        .err()
        .expect("nothing listens there");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn without_provisioning_a_missing_subscription_is_not_found_and_named() {
    let config = GcpConfig {
        endpoint: Some(format!("http://{}", host())),
        provisioning: Some(false),
        ..GcpConfig::new(PROJECT)
    };
    let backend = GcpBackend::connect(&config).await.unwrap();
    let topic = Topic::new("never/created").unwrap();
    let err = backend
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("ghost").unwrap())
        .await
        .err()
        .expect("the subscription does not exist");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("ghost++never+screated"), "{err}");
}

/// Runs against a real Google Cloud project only when BUS_TEST_GCP_PROJECT is set (with
/// Application Default Credentials and existing topic/subscription, or
/// BUS_TEST_GCP_PROVISIONING=true); otherwise it says, visibly, that it was skipped.
#[tokio::test]
async fn real_google_cloud_round_trip() {
    let Ok(project) = std::env::var("BUS_TEST_GCP_PROJECT") else {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED real_google_cloud_round_trip: set BUS_TEST_GCP_PROJECT (and credentials) to run it against real Pub/Sub"
        );
        return;
    };
    let config = GcpConfig {
        provisioning: Some(std::env::var("BUS_TEST_GCP_PROVISIONING").is_ok_and(|v| v == "true")),
        endpoint: Some("https://pubsub.googleapis.com".into()),
        ..GcpConfig::new(project)
    };
    let backend = GcpBackend::connect(&config)
        .await
        .expect("connect to real Pub/Sub");
    let topic = Topic::new("bus-test/real").unwrap();
    let subscription = backend
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("bus-test").unwrap())
        .await
        .expect("subscription bus-test++bus-test+sreal");
    let id = backend
        .publisher()
        .publish(&topic, Message::new("real"))
        .await
        .unwrap();
    loop {
        let delivery = tokio::time::timeout(Duration::from_secs(60), subscription.receive())
            .await
            .unwrap()
            .unwrap();
        let mine = delivery.id() == id;
        delivery.ack().await.unwrap();
        if mine {
            break;
        }
    }
}
