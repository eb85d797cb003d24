//! The bus contract suite against a real Mosquitto started for this test binary (or the broker
//! named by BUS_TEST_MQTT_URL).

use bus_mqtt::{MqttBackend, MqttConfig};
use bus_testkit::mosquitto::Mosquitto;
use bus_testkit::Target;

fn broker_url() -> String {
    match std::env::var("BUS_TEST_MQTT_URL") {
        Ok(url) => url,
        Err(_) => Mosquitto::shared().url(),
    }
}

async fn target() -> Target {
    let config = MqttConfig {
        url: broker_url(),
        client_id: format!("contract-{}", std::process::id()),
        ..MqttConfig::default()
    };
    Target::new(
        MqttBackend::connect(&config)
            .await
            .expect("connect to the broker"),
    )
}

bus_testkit::contract_suite!(target());
