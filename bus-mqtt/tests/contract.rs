//! The bus contract suite against a real Mosquitto started for this test binary (or the broker
//! named by BUS_TEST_MQTT_URL).

use std::sync::Arc;

use bus_core::{Capabilities, Publisher, Result, Subscriber};
use bus_mqtt::{MqttConfig, MqttPublisher, MqttSubscriber};
use bus_testkit::mosquitto::Mosquitto;
use bus_testkit::BackendFactory;

struct MqttFactory(MqttConfig);

#[async_trait::async_trait]
impl BackendFactory for MqttFactory {
    fn name(&self) -> &'static str {
        bus_mqtt::BACKEND
    }
    fn capabilities(&self) -> Capabilities {
        bus_mqtt::capabilities(&self.0)
    }
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(MqttPublisher::connect(&self.0).await?))
    }
    async fn subscriber(&self) -> Result<Box<dyn Subscriber>> {
        Ok(Box::new(MqttSubscriber::new(&self.0)?))
    }
}

fn broker_url() -> String {
    match std::env::var("BUS_TEST_MQTT_URL") {
        Ok(url) => url,
        Err(_) => Mosquitto::shared().url(),
    }
}

async fn factory() -> Arc<dyn BackendFactory> {
    Arc::new(MqttFactory(MqttConfig {
        url: broker_url(),
        client_id: format!("contract-{}", std::process::id()),
        ..MqttConfig::default()
    }))
}

bus_testkit::contract_suite!(factory());
