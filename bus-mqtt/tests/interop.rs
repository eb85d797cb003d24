//! Plain MQTT clients and bus interoperate both ways: the payload on the wire is the message
//! payload, attributes are MQTT 5 user properties.

use std::process::Command;
use std::time::Duration;

use bus_core::{Message, Publisher, Subscriber, SubscriptionOptions, Topic};
use bus_mqtt::{MqttBackend, MqttConfig};
use bus_testkit::mosquitto::{which, Mosquitto, INSTALL_HINT};

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
