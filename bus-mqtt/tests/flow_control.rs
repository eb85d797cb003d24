//! Flow control while a consumer takes over a backlog: the broker should keep to the
//! consumer's receive maximum. Mosquitto before 2.0.13 does not for queued messages (each
//! in-order PUBACK lets up to a receive maximum more out), so the backlog arrives whole and
//! waits in the consumer's memory; bus cannot refuse it without stopping its own acks, but it
//! says so. This test asserts the warning on such a broker and its absence on the others.
//! (A file of its own: the log capture is process-wide.)

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::{Backend, Message, SubscriptionOptions, Topic};
use bus_mqtt::{MqttBackend, MqttConfig};
use bus_testkit::mosquitto::{broker_version, Mosquitto};

/// Log lines written by the library, kept for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const OVERRUN: &str = "more unacknowledged messages than mqtt.receive_maximum allows";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_overruns_the_receive_maximum_is_reported() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("bus_mqtt=warn")
        .with_writer(move || writer.clone())
        .init();
    let broker = Mosquitto::start();
    let config = MqttConfig {
        url: broker.url(),
        client_id: format!("flow-{}", std::process::id()),
        receive_maximum: 20,
        ..MqttConfig::default()
    };
    let backend = MqttBackend::connect(&config).await.unwrap();
    let topic = Topic::new(format!("flow/{}", std::process::id())).unwrap();
    let options = SubscriptionOptions::new("backlog").unwrap();
    backend
        .subscriber()
        .create_subscription(&topic, options.clone())
        .await
        .unwrap();
    let publisher = backend.publisher();
    let messages = 2_000;
    for n in 0..messages {
        publisher
            .publish(&topic, Message::new(n.to_string()))
            .await
            .unwrap();
    }
    // A consumer takes the backlog over, acking in order as it goes.
    let subscription = backend
        .subscriber()
        .subscribe(&topic, options)
        .await
        .unwrap();
    for _ in 0..messages {
        let delivery = tokio::time::timeout(Duration::from_secs(30), subscription.receive())
            .await
            .expect("the backlog arrives")
            .unwrap();
        delivery.ack().await.unwrap();
    }
    subscription.close().await.unwrap();
    backend.close().await.unwrap();
    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let version = broker_version();
    if version < (2, 0, 13) {
        assert!(
            logs.contains(OVERRUN),
            "Mosquitto {version:?} overruns the receive maximum; bus must say so. Logs:\n{logs}"
        );
    } else {
        assert!(
            !logs.contains(OVERRUN),
            "Mosquitto {version:?} keeps to the receive maximum; no warning expected. Logs:\n{logs}"
        );
    }
}
