//! Config parsing never panics, whatever the file says: every outcome is a config or a
//! `Config` error.
#![allow(clippy::result_large_err)]

use bus::{Config, ErrorKind};
use figment::providers::{Format, Toml};
use figment::Figment;
use proptest::prelude::*;

/// TOML-ish text around the keys bus knows, with values of every kind.
fn documents() -> impl Strategy<Value = String> {
    let section = prop_oneof![
        Just(""),
        Just("[memory]\n"),
        Just("[mqtt]\n"),
        Just("[gcp]\n"),
        Just("[cloudevents]\n"),
        Just("[app]\n"),
    ];
    let key = prop_oneof![
        Just("backend"),
        Just("name"),
        Just("url"),
        Just("client_id"),
        Just("password"),
        Just("qos"),
        Just("keep_alive_secs"),
        Just("project"),
        Just("endpoint"),
        Just("max_queued_bytes"),
        Just("mode"),
        Just("streams"),
        Just("x"),
    ];
    let value = prop_oneof![
        "\"[^\"\\\\]{0,30}\"".prop_map(|s| s),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("[1, 2]".to_string()),
        Just("{ a = 1 }".to_string()),
    ];
    proptest::collection::vec((section, key, value), 0..8).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(section, key, value)| format!("{section}{key} = {value}\n"))
            .collect()
    })
}

proptest! {
    #[test]
    fn any_file_is_a_config_or_a_config_error(document in documents()) {
        match Config::from_figment(Figment::new().merge(Toml::string(&document))) {
            Ok(config) => {
                let _ = format!("{config:?}");
                #[cfg(feature = "mqtt")]
                let _ = config.section::<bus::mqtt::MqttConfig>("mqtt").map(|m| m.validate());
                #[cfg(feature = "gcp")]
                let _ = config.section::<bus::gcp::GcpConfig>("gcp").map(|g| g.validate());
            }
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Config),
        }
    }

    #[cfg(feature = "mqtt")]
    #[test]
    fn any_mqtt_url_is_accepted_or_refused_with_a_config_error(url in ".{0,80}") {
        let config = bus::mqtt::MqttConfig { url, ..Default::default() };
        if let Err(e) = config.validate() {
            prop_assert_eq!(e.kind(), ErrorKind::Config);
        }
    }
}
