//! Switching transport is a config change: the same code runs on memory and, with the `mqtt`
//! feature, on a real Mosquitto chosen only through BUS_* variables.
#![allow(clippy::result_large_err)]

use bus::{Config, Message, SubscriptionOptions, Topic};

/// The code under test: never mentions a backend.
async fn round_trip(config: &Config) -> bus::Result<Vec<u8>> {
    let bus = bus::connect(config).await?;
    let topic = Topic::new(format!("switch/{}", std::process::id()))?;
    let subscription = bus
        .subscriber
        .subscribe(&topic, SubscriptionOptions::new("switch")?)
        .await?;
    bus.publisher
        .publish(&topic, Message::new("same code"))
        .await?;
    let delivery = subscription.receive().await?;
    let payload = delivery.payload().to_vec();
    delivery.ack().await?;
    subscription.close().await?;
    bus.close().await?;
    Ok(payload)
}

fn load_with_env(vars: &[(&str, &str)]) -> Config {
    let mut config = None;
    figment::Jail::expect_with(|jail| {
        for (key, value) in vars {
            jail.set_env(key, value);
        }
        config = Some(Config::load().expect("valid config"));
        Ok(())
    });
    config.expect("loaded")
}

#[tokio::test]
async fn memory_by_default() {
    let config = load_with_env(&[]);
    assert_eq!(round_trip(&config).await.unwrap(), b"same code");
}

#[cfg(feature = "mqtt")]
#[tokio::test]
async fn mqtt_by_environment() {
    let broker = bus_testkit::mosquitto::Mosquitto::start();
    let url = broker.url();
    let config = load_with_env(&[("BUS_BACKEND", "mqtt"), ("BUS_MQTT__URL", &url)]);
    assert_eq!(config.backend, bus::BackendKind::Mqtt);
    assert_eq!(round_trip(&config).await.unwrap(), b"same code");
}

#[cfg(feature = "mqtt")]
#[tokio::test]
async fn mqtt_config_errors_name_the_key() {
    let config = load_with_env(&[("BUS_BACKEND", "mqtt"), ("BUS_MQTT__QOS", "7")]);
    let err = bus::connect(&config).await.expect_err("qos 7 is invalid");
    assert_eq!(err.kind(), bus::ErrorKind::Config);
    assert!(err.to_string().contains("mqtt.qos = 7"), "{err}");
}
