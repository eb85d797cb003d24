//! Plain MQTT clients and bus interoperate both ways: the payload on the wire is the message
//! payload, attributes are MQTT 5 user properties.

use std::process::Command;
use std::time::Duration;

use bus_core::{Backend, Message, Publisher, Subscriber, SubscriptionOptions, Topic};
use bus_mqtt::{MqttBackend, MqttConfig};
use bus_testkit::mosquitto::{Mosquitto, INSTALL_HINT};
use bus_testkit::process::which;

fn broker() -> &'static Mosquitto {
    Mosquitto::shared()
}

/// A config for this binary's broker, with client ids of its own.
fn config() -> MqttConfig {
    let client_id = format!("interop-{}", std::process::id());
    MqttConfig {
        url: broker().url(),
        client_id,
        ..MqttConfig::default()
    }
}

fn client(program: &str) -> Command {
    let path = which(program).unwrap_or_else(|| {
        panic!("`{program}` (mosquitto-clients) is not installed: {INSTALL_HINT}")
    });
    let mut command = Command::new(path);
    command.args([
        "-h",
        "127.0.0.1",
        "-p",
        &broker().port().to_string(),
        "-V",
        "mqttv5",
    ]);
    command
}

#[tokio::test]
async fn mosquitto_pub_reaches_a_bus_consumer_with_its_user_properties() {
    let topic = Topic::new(format!("interop/in/{}", std::process::id())).unwrap();
    let subscriber = MqttBackend::connect(&config()).await.unwrap().subscriber();
    let subscription = subscriber
        .subscribe(&topic, SubscriptionOptions::new("interop-in").unwrap())
        .await
        .unwrap();
    let status = client("mosquitto_pub")
        .args(["-q", "1", "-t", topic.as_str(), "-m", "from mosquitto_pub"])
        .args(["-D", "publish", "user-property", "origin", "paho-like"])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success());
    let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.receive())
        .await
        .expect("delivered")
        .unwrap();
    assert_eq!(delivery.payload().as_ref(), b"from mosquitto_pub");
    assert_eq!(
        delivery.attributes().get("origin").map(String::as_str),
        Some("paho-like")
    );
    assert_eq!(
        delivery.attributes().len(),
        1,
        "no bus properties leak in: {:?}",
        delivery.attributes()
    );
    assert!(!delivery.id().is_empty(), "plain messages still get an id");
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn a_bus_message_is_read_byte_for_byte_by_mosquitto_sub() {
    let topic = Topic::new(format!("interop/out/{}", std::process::id())).unwrap();
    let session = format!("interop-sub-{}", std::process::id());
    // Create a persistent session first (-E: exit once subscribed), so nothing depends on timing.
    let created = client("mosquitto_sub")
        .args(["-c", "-i", &session, "-q", "1", "-t", topic.as_str(), "-E"])
        .args(["-x", "600"])
        .status()
        .expect("run mosquitto_sub");
    assert!(created.success());

    let payload: Vec<u8> = (0..=255u8).rev().chain(0..=255u8).collect();
    let publisher = MqttBackend::connect(&config()).await.unwrap().publisher();
    publisher
        .publish(
            &topic,
            Message::new(payload.clone()).with_attribute("k", "v"),
        )
        .await
        .unwrap();
    publisher.close().await.unwrap();

    let output = client("mosquitto_sub")
        .args([
            "-c",
            "-i",
            &session,
            "-q",
            "1",
            "-t",
            topic.as_str(),
            "-C",
            "1",
            "-N",
        ])
        .args(["-x", "600", "-W", "10"])
        .output()
        .expect("run mosquitto_sub");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        output.stdout, payload,
        "the wire payload is exactly the message payload"
    );
}

/// The CloudEvents MQTT binding: the content type travels in the MQTT 5 Content Type property
/// both ways (`application/cloudevents+json` in structured mode, `datacontenttype` in binary
/// mode), and a `content-type` user property from older bus versions is still read.
#[tokio::test]
async fn the_content_type_is_the_mqtt5_content_type_property_both_ways() {
    use bus_core::cloudevents::{
        decode_event, AttributesReader, EventBuilder, EventBuilderV10, EventFormat, PublishEvent,
    };
    let topic = Topic::new(format!("interop/content-type/{}", std::process::id())).unwrap();
    let backend = MqttBackend::connect(&config()).await.unwrap();
    let subscription = backend
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("content-type").unwrap())
        .await
        .unwrap();

    // Outgoing: what a binding-aware client (mosquitto_sub's %C) sees.
    let watcher = client("mosquitto_sub")
        .args(["-t", topic.as_str(), "-C", "2", "-W", "10", "-F", "%C|%p"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run mosquitto_sub");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let event = EventBuilderV10::new()
        .id("e-1")
        .source("interop")
        .ty("test.event")
        .data("application/json", serde_json::json!({"n": 1}))
        .build()
        .unwrap();
    let publisher = backend.publisher();
    publisher
        .publish_event(&topic, &event, &EventFormat::structured())
        .await
        .unwrap();
    publisher
        .publish_event(&topic, &event, &EventFormat::binary(""))
        .await
        .unwrap();
    let output = watcher.wait_with_output().expect("mosquitto_sub output");
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.split('|').next().unwrap_or("").to_string())
        .collect();
    assert_eq!(lines, ["application/cloudevents+json", "application/json"]);
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.receive())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            decode_event(delivery.message()).unwrap(),
            event,
            "round trip"
        );
        delivery.ack().await.unwrap();
    }

    // Incoming: a binary-mode event from a binding-aware client, and the old user property.
    let status = client("mosquitto_pub")
        .args(["-q", "1", "-t", topic.as_str(), "-m", r#"{"n":2}"#])
        .args(["-D", "publish", "content-type", "application/json"])
        .args(["-D", "publish", "user-property", "specversion", "1.0"])
        .args(["-D", "publish", "user-property", "id", "e-2"])
        .args(["-D", "publish", "user-property", "source", "paho"])
        .args(["-D", "publish", "user-property", "type", "test.event"])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success());
    let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.receive())
        .await
        .unwrap()
        .unwrap();
    let received = decode_event(delivery.message()).unwrap();
    assert_eq!(received.id(), "e-2");
    assert_eq!(received.datacontenttype(), Some("application/json"));
    delivery.ack().await.unwrap();
    let status = client("mosquitto_pub")
        .args(["-q", "1", "-t", topic.as_str(), "-m", "{}"])
        .args([
            "-D",
            "publish",
            "user-property",
            "content-type",
            "application/json",
        ])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success());
    let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.receive())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        delivery
            .attributes()
            .get("content-type")
            .map(String::as_str),
        Some("application/json"),
        "older bus versions' user property is still read"
    );
    delivery.ack().await.unwrap();
}
