//! Config loading: file, environment, precedence, and errors that name key, source and fix.
// figment::Jail closures return figment's own (large) error type; that is its API.
#![allow(clippy::result_large_err)]

use bus::{BackendKind, Config, ErrorKind};
use figment::Jail;

fn config_error(jail_setup: impl FnOnce(&mut Jail) -> figment::error::Result<()>) -> String {
    let mut message = String::new();
    Jail::expect_with(|jail| {
        jail_setup(jail)?;
        let err = Config::load().expect_err("config must be rejected");
        assert_eq!(err.kind(), ErrorKind::Config);
        message = err.to_string();
        Ok(())
    });
    message
}

#[test]
fn defaults_to_memory_without_file_or_env() {
    Jail::expect_with(|_| {
        let config = Config::load().expect("defaults");
        assert_eq!(config.backend, BackendKind::Memory);
        assert_eq!(config.backend_origin(), "the default");
        Ok(())
    });
}

#[test]
fn reads_the_file_and_env_overrides_it() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "bus.toml",
            r#"
                backend = "memory"
                [memory]
                name = "from-file"
                max_queued_bytes = 20000000
            "#,
        )?;
        jail.set_env("BUS_MEMORY__NAME", "from-env");
        let config = Config::load().expect("valid");
        assert_eq!(config.memory.name, "from-env");
        assert_eq!(config.memory.max_queued_bytes, 20_000_000);
        assert!(
            config.backend_origin().contains("bus.toml"),
            "{}",
            config.backend_origin()
        );
        Ok(())
    });
}

#[test]
fn backend_selector_deserialises_from_env() {
    Jail::expect_with(|jail| {
        jail.create_file("bus.toml", "backend = \"gcp\"")?;
        jail.set_env("BUS_BACKEND", "memory");
        assert_eq!(Config::load().expect("valid").backend, BackendKind::Memory);
        jail.set_env("BUS_BACKEND", "mqtt");
        let config = Config::load().expect("valid");
        assert_eq!(config.backend, BackendKind::Mqtt);
        assert_eq!(
            config.backend_origin(),
            "environment variable `BUS_BACKEND`"
        );
        Ok(())
    });
}

#[test]
fn config_path_can_be_overridden() {
    Jail::expect_with(|jail| {
        jail.create_file("other.toml", "[memory]\nname = \"other\"")?;
        jail.set_env("BUS_CONFIG", "other.toml");
        assert_eq!(Config::load().expect("valid").memory.name, "other");
        jail.set_env("BUS_CONFIG", "missing.toml");
        let err = Config::load().expect_err("named file is missing");
        assert!(
            err.to_string().contains("missing.toml does not exist"),
            "{err}"
        );
        Ok(())
    });
}

#[test]
fn test_variables_are_not_config_keys() {
    Jail::expect_with(|jail| {
        jail.set_env("BUS_TEST_MQTT_URL", "mqtt://127.0.0.1:1");
        Config::load().expect("BUS_TEST_* is ignored");
        Ok(())
    });
}

#[test]
fn unknown_key_names_key_file_and_fix() {
    let message = config_error(|jail| {
        jail.create_file("bus.toml", "[memory]\nmax_queued_byte = 5")?;
        Ok(())
    });
    assert!(
        message.contains("unknown config key `memory.max_queued_byte`"),
        "{message}"
    );
    assert!(message.contains("bus.toml"), "{message}");
    assert!(
        message.contains("max_queued_bytes"),
        "lists the valid keys: {message}"
    );
}

#[test]
fn unknown_env_key_names_the_variable() {
    let message = config_error(|jail| {
        jail.set_env("BUS_BACKND", "memory");
        Ok(())
    });
    assert!(message.contains("unknown config key `backnd`"), "{message}");
    assert!(
        message.contains("environment variable `BUS_BACKND`"),
        "{message}"
    );
}

#[test]
fn wrong_type_names_key_env_var_and_expectation() {
    let message = config_error(|jail| {
        jail.set_env("BUS_MEMORY__MAX_QUEUED_BYTES", "lots");
        Ok(())
    });
    assert!(message.contains("`memory.max_queued_bytes`"), "{message}");
    assert!(
        message.contains("BUS_MEMORY__MAX_QUEUED_BYTES"),
        "{message}"
    );
    assert!(message.contains("found string \"lots\""), "{message}");
}

#[test]
fn unknown_backend_lists_the_choices() {
    let message = config_error(|jail| {
        jail.set_env("BUS_BACKEND", "kafka");
        Ok(())
    });
    assert!(message.contains("\"kafka\""), "{message}");
    assert!(message.contains("memory, mqtt, gcp"), "{message}");
    assert!(message.contains("BUS_BACKEND"), "{message}");
}

#[test]
fn missing_required_value_names_key_and_variable() {
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct BackendSection {
        project: String,
    }
    Jail::expect_with(|jail| {
        jail.create_file("bus.toml", "[gcp]\nendpoint = \"http://127.0.0.1:8085\"")?;
        let config = Config::load().expect("the file itself is valid");
        let err = config
            .section::<BackendSection>("gcp")
            .expect_err("project is missing");
        assert_eq!(err.kind(), ErrorKind::Config);
        let message = err.to_string();
        assert!(
            message.contains("required config key `gcp.project`"),
            "{message}"
        );
        assert!(message.contains("BUS_GCP__PROJECT"), "{message}");
        Ok(())
    });
}

#[cfg(not(feature = "gcp"))]
#[tokio::test]
async fn a_backend_whose_feature_is_off_names_the_feature() {
    let mut config = Config::default();
    config.backend = BackendKind::Gcp;
    let err = bus::connect(&config)
        .await
        .expect_err("gcp is not compiled in");
    assert_eq!(err.kind(), ErrorKind::Config);
    let message = err.to_string();
    assert!(message.contains("`gcp` feature"), "{message}");
    assert!(message.contains("features = [\"gcp\"]"), "{message}");
}

#[test]
fn invalid_memory_settings_are_config_errors_from_connect() {
    let mut config = Config::default();
    config.memory.name = "invalid-settings-test".into();
    config.memory.max_queued_bytes = 10;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = runtime
        .block_on(bus::connect(&config))
        .expect_err("queue smaller than one message");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string().contains("memory.max_queued_bytes = 10"),
        "{err}"
    );
}

#[cfg(feature = "gcp")]
#[test]
fn gcp_without_a_project_names_the_missing_key() {
    Jail::expect_with(|jail| {
        jail.set_env("BUS_BACKEND", "gcp");
        let config = Config::load().expect("the selector itself is valid");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = runtime
            .block_on(bus::connect(&config))
            .expect_err("gcp.project is required");
        assert_eq!(err.kind(), ErrorKind::Config);
        let message = err.to_string();
        assert!(
            message.contains("required config key `gcp.project`"),
            "{message}"
        );
        assert!(message.contains("BUS_GCP__PROJECT"), "{message}");
        Ok(())
    });
}

#[test]
fn a_service_name_is_the_default_mqtt_client_id() {
    Jail::expect_with(|jail| {
        let config = Config::load_as("llm-dispatch").expect("valid");
        let mqtt: figment::value::Dict = config.section("mqtt").expect("mqtt section");
        assert_eq!(mqtt["client_id"].as_str(), Some("llm-dispatch"));

        jail.set_env("BUS_MQTT__CLIENT_ID", "llm-dispatch-2");
        let config = Config::load_as("llm-dispatch").expect("valid");
        let mqtt: figment::value::Dict = config.section("mqtt").expect("mqtt section");
        assert_eq!(
            mqtt["client_id"].as_str(),
            Some("llm-dispatch-2"),
            "config wins"
        );
        Ok(())
    });
}

#[test]
fn cloudevents_mode_and_prefix_follow_config_and_backend() {
    use bus::cloudevents::{EventMode, MQTT_PREFIX, PUBSUB_PREFIX};
    Jail::expect_with(|jail| {
        let config = Config::load().expect("defaults");
        assert_eq!(config.event_format().mode, EventMode::Structured);

        jail.set_env("BUS_CLOUDEVENTS__MODE", "binary");
        let format = Config::load().expect("valid").event_format();
        assert_eq!(
            (format.mode, format.prefix.as_str()),
            (EventMode::Binary, PUBSUB_PREFIX)
        );

        jail.set_env("BUS_BACKEND", "mqtt");
        assert_eq!(Config::load().unwrap().event_format().prefix, MQTT_PREFIX);

        jail.set_env("BUS_CLOUDEVENTS__BINARY_PREFIX", "ce_");
        assert_eq!(Config::load().unwrap().event_format().prefix, "ce_");
        Ok(())
    });
}

#[test]
fn a_wrong_cloudevents_mode_lists_the_choices() {
    let message = config_error(|jail| {
        jail.set_env("BUS_CLOUDEVENTS__MODE", "json");
        Ok(())
    });
    assert!(message.contains("BUS_CLOUDEVENTS__MODE"), "{message}");
    assert!(message.contains("structured, binary"), "{message}");
}

#[test]
fn the_app_section_is_the_applications_own() {
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default)]
    struct App {
        sources_dir: Option<String>,
        expect: Option<usize>,
    }
    Jail::expect_with(|jail| {
        jail.create_file("bus.toml", "[app]\nsources_dir = \"/src\"")?;
        jail.set_env("BUS_APP__EXPECT", "3");
        let app: App = Config::load().expect("valid").section("app").expect("app");
        assert_eq!(app.sources_dir.as_deref(), Some("/src"));
        assert_eq!(app.expect, Some(3));
        Ok(())
    });
}

/// Loads the config in a jail with `vars` set and the MQTT section extracted (with the `mqtt`
/// feature), or the error's text.
#[cfg(feature = "mqtt")]
fn mqtt_section(
    file: Option<&str>,
    vars: &[(&str, &str)],
) -> std::result::Result<(Config, bus::mqtt::MqttConfig), String> {
    let mut outcome = Err(String::new());
    Jail::expect_with(|jail| {
        if let Some(file) = file {
            jail.create_file("bus.toml", file)?;
        }
        for (key, value) in vars {
            jail.set_env(key, value);
        }
        outcome = Config::load()
            .and_then(|config| {
                let mqtt = config.section::<bus::mqtt::MqttConfig>("mqtt")?;
                Ok((config, mqtt))
            })
            .map_err(|e| e.to_string());
        Ok(())
    });
    outcome
}

#[cfg(feature = "mqtt")]
#[test]
fn any_text_is_a_password_and_never_shows() {
    for secret in ["123456789", "true", "3.14159", "0042", "s3cr3t-w0rd"] {
        let (config, mqtt) = mqtt_section(
            None,
            &[("BUS_BACKEND", "mqtt"), ("BUS_MQTT__PASSWORD", secret)],
        )
        .unwrap_or_else(|e| panic!("{secret}: {e}"));
        assert_eq!(mqtt.password.as_ref().map(|p| p.expose()), Some(secret));
        let shown = format!("{config:?} {mqtt:?}");
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
    }
    let (config, mqtt) = mqtt_section(Some("backend = \"mqtt\"\n[mqtt]\npassword = 987654"), &[])
        .expect("a number in bus.toml is taken as the password's text");
    assert_eq!(mqtt.password.as_ref().map(|p| p.expose()), Some("987654"));
    assert!(!format!("{config:?}").contains("987654"));
    // A value of the wrong kind for a secret: the error names the key, not the value.
    let err = mqtt_section(Some("[mqtt]\npassword = [987654, 1]"), &[]).unwrap_err();
    assert!(err.contains("mqtt.password"), "{err}");
    assert!(!err.contains("987654"), "leaked: {err}");
}

#[cfg(feature = "mqtt")]
#[test]
fn string_settings_keep_their_text_from_the_environment() {
    let (_, mqtt) = mqtt_section(
        None,
        &[
            ("BUS_MQTT__CLIENT_ID", "0042"),
            ("BUS_MQTT__USERNAME", "1e5"),
        ],
    )
    .unwrap();
    assert_eq!(mqtt.client_id, "0042", "leading zeros kept");
    assert_eq!(mqtt.username.as_deref(), Some("1e5"), "not a float");
    #[cfg(feature = "gcp")]
    Jail::expect_with(|jail| {
        jail.set_env("BUS_GCP__PROJECT", "123456789012");
        let gcp: bus::gcp::GcpConfig = Config::load().unwrap().section("gcp").unwrap();
        assert_eq!(gcp.project, "123456789012", "a project number");
        Ok(())
    });
}

#[cfg(feature = "mqtt")]
#[test]
fn credentials_in_the_url_are_refused_without_being_echoed() {
    let (_, mqtt) = mqtt_section(
        None,
        &[
            ("BUS_BACKEND", "mqtt"),
            ("BUS_MQTT__URL", "mqtt://svc:hunter2@127.0.0.1:1883"),
        ],
    )
    .unwrap();
    assert!(!format!("{mqtt:?}").contains("hunter2"));
    let err = mqtt.validate().expect_err("userinfo in the URL");
    let text = err.to_string();
    assert!(text.contains("mqtt.username and mqtt.password"), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains("svc:"),
        "leaked: {text}"
    );
}

#[cfg(feature = "mqtt")]
#[test]
fn protocol_limits_and_url_paths_are_checked() {
    // Before, these wrapped around MQTT's 16 bits (to 4464 s and 5 s) without a word.
    for keep_alive in ["70000", "65541"] {
        let (_, mqtt) = mqtt_section(None, &[("BUS_MQTT__KEEP_ALIVE_SECS", keep_alive)]).unwrap();
        let err = mqtt.validate().expect_err("above MQTT's 65535").to_string();
        assert!(
            err.contains(&format!("mqtt.keep_alive_secs = {keep_alive}")),
            "{err}"
        );
        assert!(err.contains("5 to 65535"), "{err}");
    }
    let (_, mqtt) = mqtt_section(None, &[("BUS_MQTT__URL", "mqtt://host:1883/path")]).unwrap();
    let err = mqtt.validate().expect_err("a path").to_string();
    assert!(err.contains("has a path"), "not an 'invalid port': {err}");
    let (_, mqtt) = mqtt_section(None, &[("BUS_MQTT__MAX_IN_FLIGHT_PUBLISHES", "0")]).unwrap();
    let err = mqtt
        .validate()
        .expect_err("no publish in flight")
        .to_string();
    assert!(
        err.contains("mqtt.max_in_flight_publishes = 0") && err.contains("1 to 65535"),
        "{err}"
    );
    let (_, mqtt) = mqtt_section(None, &[("BUS_MQTT__MAX_IN_FLIGHT_PUBLISHES", "65535")]).unwrap();
    assert_eq!(mqtt.max_in_flight_publishes, 65535);
    mqtt.validate()
        .expect("MQTT's largest packet id is allowed");
}

#[cfg(feature = "mqtt")]
#[test]
fn section_errors_name_the_key_and_variable_the_right_way_round() {
    let err = mqtt_section(None, &[("BUS_BACKEND", "mqtt"), ("BUS_MQTT__URLL", "x")]).unwrap_err();
    assert!(err.contains("`mqtt.urll`"), "{err}");
    assert!(err.contains("BUS_MQTT__URLL"), "{err}");
    assert!(
        !err.contains("urll.mqtt") && !err.contains("BUS_URLL__MQTT"),
        "{err}"
    );
    let err = mqtt_section(None, &[("BUS_MQTT__QOS", "high")]).unwrap_err();
    assert!(
        err.contains("`mqtt.qos`") && err.contains("BUS_MQTT__QOS"),
        "{err}"
    );
    assert!(!err.contains("fix the value"), "{err}");
}

#[cfg(feature = "mqtt")]
#[test]
fn unknown_keys_are_errors_in_every_section() {
    let message = config_error(|jail| {
        jail.create_file(
            "bus.toml",
            "backend = \"memory\"\n[mqtt]\nurll = \"mqtt://x\"",
        )?;
        Ok(())
    });
    assert!(
        message.contains("unknown config key `mqtt.urll`"),
        "{message}"
    );
    assert!(message.contains("url"), "lists the valid keys: {message}");
}

#[cfg(feature = "gcp")]
#[test]
fn gcp_endpoint_errors_name_the_key_and_real_pubsub_points_at_credentials() {
    let config = bus::gcp::GcpConfig {
        endpoint: Some("ftp://127.0.0.1:8085".into()),
        ..bus::gcp::GcpConfig::new("autopatch")
    };
    let err = config.validate().expect_err("unknown scheme").to_string();
    assert!(err.contains("gcp.endpoint"), "{err}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = bus::gcp::GcpConfig {
        endpoint: Some(format!(
            "https://127.0.0.1:{}",
            bus_testkit::process::free_port()
        )),
        connect_timeout_ms: 1_000,
        ..bus::gcp::GcpConfig::new("autopatch")
    };
    let err = runtime
        .block_on(bus::gcp::GcpBackend::connect(&config))
        .expect_err("nothing there")
        .to_string();
    assert!(err.contains("Application Default Credentials"), "{err}");
    assert!(!err.contains("is the emulator running"), "{err}");
}

#[test]
fn telemetry_settings_are_read_and_checked() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "bus.toml",
            "[telemetry]\nlog = \"json\"\nprometheus = \"127.0.0.1:9464\"",
        )?;
        let config = Config::load().expect("valid");
        assert_eq!(config.telemetry.log, bus::telemetry::LogFormat::Json);
        assert_eq!(
            config.telemetry.prometheus,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        Ok(())
    });
    let message = config_error(|jail| {
        jail.set_env("BUS_TELEMETRY__PROMETHEUS", "localhost");
        Ok(())
    });
    assert!(message.contains("BUS_TELEMETRY__PROMETHEUS"), "{message}");
    assert!(message.contains("telemetry.prometheus"), "{message}");
    let message = config_error(|jail| {
        jail.set_env("BUS_TELEMETRY__LOG", "xml");
        Ok(())
    });
    assert!(message.contains("text, json"), "{message}");
    let message = config_error(|jail| {
        jail.create_file("bus.toml", "[telemetry]\nprometheus_port = 9464")?;
        Ok(())
    });
    assert!(message.contains("prometheus_port"), "{message}");
}
