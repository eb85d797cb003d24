//! **bus**: one publish/subscribe contract, interchangeable transports.
//!
//! Services program against [`Publisher`], [`Subscriber`] and [`Subscription`] (from
//! `bus-core`, re-exported here) and choose the transport in configuration: a `bus.toml` file
//! plus `BUS_`-prefixed environment variables. Switching from the embedded in-memory broker to
//! MQTT or Google Cloud Pub/Sub is a config change, never a code change.
//!
//! ```
//! use bus::{Config, Message, SubscriptionOptions, Topic};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> bus::Result<()> {
//! let config = Config::load()?; // bus.toml (if present) + BUS_* env vars; default: memory
//! let bus = bus::connect(&config).await?;
//!
//! let topic = Topic::new("python/mqtt")?;
//! let subscription = bus
//!     .subscriber
//!     .subscribe(&topic, SubscriptionOptions::new("consume")?)
//!     .await?;
//! bus.publisher.publish(&topic, Message::new("Hello")).await?;
//!
//! let delivery = subscription.receive().await?;
//! println!("got {:?}", delivery.payload());
//! delivery.ack().await?;
//! bus.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Configuration
//!
//! ```toml
//! backend = "memory"          # memory | mqtt | gcp
//!
//! [memory]
//! max_queued_bytes = 67108864 # per subscription; publishers wait beyond it
//!
//! [cloudevents]
//! mode = "structured"         # structured | binary (consumers accept both)
//!
//! [telemetry]                 # logs and metrics (see `telemetry`)
//! log = "text"                # text | json
//! # prometheus = "127.0.0.1:9464"
//!
//! [app]                       # the service's own settings: Config::section("app")
//! ```
//!
//! Every key can be set or overridden by an environment variable: `BUS_` followed by the key
//! path in capitals with `__` between levels, e.g. `BUS_BACKEND=memory`,
//! `BUS_MEMORY__MAX_QUEUED_BYTES=1048576`. `BUS_CONFIG` names the file (default `bus.toml`
//! in the working directory, optional); variables starting with `BUS_TEST_` are left to the
//! test suite.
//!
//! Invalid configuration is an [`ErrorKind::Config`] error naming the key, where its value came
//! from (file or environment variable) and the fix.
#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

pub use bus_core::*;

pub mod telemetry;

/// The in-memory backend (always available).
pub use bus_memory as memory;

/// The MQTT backend (Cargo feature `mqtt`).
#[cfg(feature = "mqtt")]
pub use bus_mqtt as mqtt;

/// The Google Cloud Pub/Sub backend (Cargo feature `gcp`).
#[cfg(feature = "gcp")]
pub use bus_gcp as gcp;

/// Name of the environment variable that points at the config file.
pub const CONFIG_PATH_VAR: &str = "BUS_CONFIG";

/// The config file read when [`CONFIG_PATH_VAR`] is not set.
pub const DEFAULT_CONFIG_FILE: &str = "bus.toml";

/// Which transport to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum BackendKind {
    /// The in-process broker (`bus-memory`); the default.
    #[default]
    Memory,
    /// MQTT 5 through rumqttc (`bus-mqtt`, Cargo feature `mqtt`).
    Mqtt,
    /// Google Cloud Pub/Sub (`bus-gcp`, Cargo feature `gcp`).
    Gcp,
}

impl BackendKind {
    /// The name used in config files and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Memory => "memory",
            BackendKind::Mqtt => "mqtt",
            BackendKind::Gcp => "gcp",
        }
    }
}

/// The whole bus configuration: which backend, and each backend's own section.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The transport: `memory` (default), `mqtt` or `gcp`.
    pub backend: BackendKind,
    /// `[memory]`: the in-process broker.
    pub memory: memory::MemoryConfig,
    /// `[mqtt]`: read by the MQTT backend when it is compiled in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<figment::value::Dict>,
    /// `[gcp]`: read by the Pub/Sub backend when it is compiled in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gcp: Option<figment::value::Dict>,
    /// `[cloudevents]`: how this service encodes the CloudEvents it publishes.
    pub cloudevents: CloudEventsConfig,
    /// `[app]`: the application's own settings, so one file configures the whole service;
    /// read them with [`Config::section`]`("app")`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<figment::value::Dict>,
    /// `[telemetry]`: log format and the Prometheus endpoint (see [`telemetry`]).
    pub telemetry: telemetry::TelemetryConfig,
    /// `[bridge]`: the routes of `bus bridge` (see the `bus` command line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bridge: Option<figment::value::Dict>,
    /// Where the configuration came from, for error messages and backend sections.
    #[serde(skip)]
    origin: Origin,
}

impl std::fmt::Debug for Config {
    // The backend sections are raw key/value tables: their secrets (and URL credentials) are
    // hidden here, as the backends' own config types hide them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("backend", &self.backend)
            .field("memory", &self.memory)
            .field("mqtt", &self.mqtt.as_ref().map(redacted))
            .field("gcp", &self.gcp.as_ref().map(redacted))
            .field("cloudevents", &self.cloudevents)
            .field("app", &self.app.as_ref().map(redacted))
            .field("telemetry", &self.telemetry)
            .field("bridge", &self.bridge.as_ref().map(redacted))
            .finish()
    }
}

/// A config table for `Debug`: secret values and URL credentials replaced.
fn redacted(dict: &Dict) -> std::collections::BTreeMap<String, String> {
    dict.iter()
        .map(|(key, value)| {
            let shown = if config::is_secret_key(key) {
                "***".to_string()
            } else {
                match value {
                    Value::String(_, text) => format!("{:?}", config::redact_url(text)),
                    Value::Dict(_, inner) => format!("{:?}", redacted(inner)),
                    other => format!("{other:?}"),
                }
            };
            (key.clone(), shown)
        })
        .collect()
}

/// `BUS_*` environment variables as a figment provider: `__` separates levels, and every value
/// stays the text it is (`BUS_MQTT__PASSWORD=123456789` is a password, not a number; numeric
/// settings are parsed from text when extracted). `BUS_CONFIG`, `BUS_LOG` and `BUS_TEST_*` are
/// not config keys.
#[derive(Debug, Default)]
struct BusEnv {
    /// Variables given in code instead of the process environment.
    given: Option<Vec<(String, String)>>,
}

impl Provider for BusEnv {
    fn metadata(&self) -> Metadata {
        Metadata::named("`BUS_` environment variables")
    }

    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        let vars: Vec<(String, String)> = match &self.given {
            Some(given) => given.clone(),
            None => std::env::vars_os()
                .filter_map(|(key, value)| {
                    Some((key.into_string().ok()?, value.into_string().ok()?))
                })
                .collect(),
        };
        for (key, value) in &vars {
            let Some(rest) = key.strip_prefix("BUS_") else {
                continue;
            };
            let lower = rest.to_ascii_lowercase();
            if lower == "config" || lower == "log" || lower.starts_with("test_") || lower.is_empty()
            {
                continue;
            }
            let path: Vec<&str> = lower.split("__").collect();
            insert(&mut root, &path, Value::from(value.clone()));
        }
        Ok(Profile::Default.collect(root))
    }
}

fn insert(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

/// An unknown key is an error in every backend section that is there, not only in the one the
/// chosen backend reads (where this build knows the backend).
fn check_backend_sections(figment: &Figment) -> Result<()> {
    #[cfg_attr(not(any(feature = "mqtt", feature = "gcp")), allow(dead_code))]
    fn unknown_keys<T: serde::de::DeserializeOwned>(figment: &Figment, key: &str) -> Result<()> {
        if !figment.contains(key) {
            return Ok(());
        }
        match figment.focus(key).extract_lossy::<T>() {
            Ok(_) => Ok(()),
            Err(error) => {
                let unknown: Vec<figment::Error> = error
                    .into_iter()
                    .filter(|e| matches!(e.kind, figment::error::Kind::UnknownField(..)))
                    .collect();
                match unknown.into_iter().reduce(|a, b| a.chain(b)) {
                    Some(error) => Err(describe_figment_error(error, Some(key))),
                    None => Ok(()),
                }
            }
        }
    }
    #[cfg(feature = "mqtt")]
    unknown_keys::<mqtt::MqttConfig>(figment, "mqtt")?;
    #[cfg(feature = "gcp")]
    unknown_keys::<gcp::GcpConfig>(figment, "gcp")?;
    let _ = figment;
    Ok(())
}

/// `[cloudevents]`: the encoding of published events (consumers accept both modes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudEventsConfig {
    /// `structured` (default: the whole event as JSON, what the Python services send) or
    /// `binary` (data as the payload, context attributes as message attributes).
    pub mode: cloudevents::EventMode,
    /// The attribute prefix in binary mode. Default: the transport's binding, `ce-` (Pub/Sub,
    /// memory) or none (MQTT 5 user properties).
    pub binary_prefix: Option<String>,
}

/// Where a loaded config came from.
#[derive(Debug, Clone, Default)]
struct Origin {
    figment: Option<Figment>,
    backend: Option<String>,
}

impl PartialEq for Origin {
    fn eq(&self, other: &Self) -> bool {
        self.backend == other.backend
    }
}

impl Config {
    /// Loads `bus.toml` (or the file named by `BUS_CONFIG`) if it exists, then applies `BUS_*`
    /// environment variables over it. With neither, the defaults: the in-memory backend.
    pub fn load() -> Result<Config> {
        match std::env::var_os(CONFIG_PATH_VAR) {
            Some(path) => Config::load_from(PathBuf::from(path)),
            None => Config::from_figment(Config::figment(Path::new(DEFAULT_CONFIG_FILE))),
        }
    }

    /// Like [`Config::load`], for the service named `service`: where the config does not set
    /// `mqtt.client_id`, it defaults to the service name, so that several services on one
    /// broker keep separate MQTT sessions.
    pub fn load_as(service: &str) -> Result<Config> {
        let path = match std::env::var_os(CONFIG_PATH_VAR) {
            Some(path) => {
                let path = PathBuf::from(path);
                Config::load_from(&path)?;
                path
            }
            None => PathBuf::from(DEFAULT_CONFIG_FILE),
        };
        let defaults = figment::providers::Serialized::default("mqtt.client_id", service);
        Config::from_figment(Config::figment(&path).join(defaults))
    }

    /// The event encoding this config asks for, with the binary prefix of the chosen
    /// transport's CloudEvents binding unless `cloudevents.binary_prefix` sets one.
    pub fn event_format(&self) -> cloudevents::EventFormat {
        let prefix = self.cloudevents.binary_prefix.clone().unwrap_or_else(|| {
            match self.backend {
                BackendKind::Mqtt => cloudevents::MQTT_PREFIX,
                BackendKind::Memory | BackendKind::Gcp => cloudevents::PUBSUB_PREFIX,
            }
            .to_string()
        });
        cloudevents::EventFormat {
            mode: self.cloudevents.mode,
            prefix,
        }
    }

    /// Loads the given file, which must exist, then applies `BUS_*` environment variables.
    pub fn load_from(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::config(
                CORE,
                format!(
                    "config file {} does not exist (named by {CONFIG_PATH_VAR} or the caller); create it or point {CONFIG_PATH_VAR} at an existing file",
                    path.display()
                ),
            ));
        }
        Config::from_figment(Config::figment(path))
    }

    /// The figment the loaders use: the TOML file (optional) merged with `BUS_*` variables.
    /// Add providers to it and pass it to [`Config::from_figment`] to customise loading.
    pub fn figment(path: &Path) -> Figment {
        Figment::new()
            .merge(Toml::file(path))
            .merge(BusEnv::default())
    }

    /// The config a process would load with exactly these environment variables and no config
    /// file (`BUS_*` only; others are ignored): for tests, and for code that prepares the
    /// environment of the services it starts.
    ///
    /// ```
    /// let config = bus::Config::from_env_vars([("BUS_BACKEND", "mqtt"), ("HOME", "/root")])?;
    /// assert_eq!(config.backend, bus::BackendKind::Mqtt);
    /// # Ok::<(), bus::Error>(())
    /// ```
    pub fn from_env_vars<K: Into<String>, V: Into<String>>(
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Config> {
        let given = vars
            .into_iter()
            .map(|(key, value)| (key.into(), value.into()))
            .collect();
        Config::from_figment(Figment::new().merge(BusEnv { given: Some(given) }))
    }

    /// Extracts a config from any figment, turning its errors into [`ErrorKind::Config`]
    /// errors that name the key, its source and the fix.
    pub fn from_figment(figment: Figment) -> Result<Config> {
        let mut config: Config = figment
            .extract_lossy()
            .map_err(|e| describe_figment_error(e, None))?;
        check_backend_sections(&figment)?;
        config.origin.backend = figment
            .find_metadata("backend")
            .map(|metadata| source_of(metadata, &["backend".to_string()]));
        config.origin.figment = Some(figment);
        Ok(config)
    }

    /// Deserialises one section (such as `mqtt`) into a backend's config type, with the same
    /// errors as [`Config::from_figment`]: a missing required key is named with its environment
    /// variable, e.g. `gcp.project` / `BUS_GCP__PROJECT`. A config built in code (not loaded)
    /// reads the section from its field.
    pub fn section<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<T> {
        let figment = match &self.origin.figment {
            Some(figment) => figment.clone(),
            None => Figment::from(figment::providers::Serialized::defaults(self)),
        };
        figment
            .focus(key)
            .extract_lossy::<T>()
            .map_err(|e| describe_figment_error(e, Some(key)))
    }

    /// Where `backend` was set, e.g. ``environment variable `BUS_BACKEND` ``; "the default"
    /// when it was not set.
    pub fn backend_origin(&self) -> &str {
        self.origin.backend.as_deref().unwrap_or("the default")
    }
}

/// A connected bus: a publisher and a subscriber on the configured backend.
pub struct Bus {
    /// Publishes to the configured backend.
    pub publisher: Box<dyn Publisher>,
    /// Subscribes on the configured backend.
    pub subscriber: Box<dyn Subscriber>,
    backend: Box<dyn Backend>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Bus {
    /// A publisher and a subscriber on `backend` (as [`connect`] makes them, for a backend
    /// connected by other means, e.g. a backend crate's own `connect`; wrap it in
    /// [`telemetry::Instrumented`] for spans and metrics).
    pub fn new(backend: Box<dyn Backend>) -> Bus {
        Bus {
            publisher: backend.publisher(),
            subscriber: backend.subscriber(),
            backend,
        }
    }

    /// The backend, for more publishers and subscribers on the same connections.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Closes the publisher (flushing what is in flight), the subscriber and the backend's
    /// connections.
    pub async fn close(&self) -> Result<()> {
        let published = self.publisher.close().await;
        self.subscriber.close().await?;
        self.backend.close().await?;
        published
    }
}

/// Connects to the backend the config names, with a publisher and a subscriber.
///
/// Asking for a backend whose Cargo feature is not enabled is an [`ErrorKind::Config`] error
/// naming the feature.
pub async fn connect(config: &Config) -> Result<Bus> {
    Ok(Bus::new(connect_backend(config).await?))
}

/// Connects to the backend the config names: each backend crate is entered the same way, with
/// its config section and `XxxBackend::connect`. The backend comes
/// [instrumented](bus_core::telemetry): spans, trace context and metrics.
pub async fn connect_backend(config: &Config) -> Result<Box<dyn Backend>> {
    let backend: Box<dyn Backend> = match config.backend {
        BackendKind::Memory => Box::new(memory::MemoryBackend::connect(&config.memory).await?),
        #[cfg(feature = "mqtt")]
        BackendKind::Mqtt => Box::new(mqtt::MqttBackend::connect(&config.section("mqtt")?).await?),
        #[cfg(feature = "gcp")]
        BackendKind::Gcp => Box::new(gcp::GcpBackend::connect(&config.section("gcp")?).await?),
        #[allow(unreachable_patterns)]
        kind => return Err(missing_feature(config, kind)),
    };
    Ok(Box::new(bus_core::telemetry::Instrumented::new(backend)))
}

#[cfg_attr(all(feature = "mqtt", feature = "gcp"), allow(dead_code))]
fn missing_feature(config: &Config, kind: BackendKind) -> Error {
    let name = kind.as_str();
    Error::config(
        CORE,
        format!(
            "backend = \"{name}\" (from {}) needs the `{name}` feature of the `bus` crate, which this build does not have; depend on bus with features = [\"{name}\"], or choose backend = \"memory\"",
            config.backend_origin()
        ),
    )
}

/// Names where a key's value came from: the file path or the environment variable.
fn source_of(metadata: &figment::Metadata, path: &[String]) -> String {
    match &metadata.source {
        Some(figment::Source::File(file)) => format!("file {}", file.display()),
        _ if metadata.name.contains("environment") => {
            let var = format!("BUS_{}", path.join("__").to_ascii_uppercase());
            format!("environment variable `{var}`")
        }
        Some(other) => format!("{} {other}", metadata.name),
        None => metadata.name.to_string(),
    }
}

/// What a value from the config looks like in a message: its kind, and for anything but a
/// secret its (printable) text.
fn shown_value(actual: &figment::error::Actual, key: &str) -> String {
    use figment::error::Actual;
    let kind = match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a number",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Map => "a table",
        Actual::Seq => "a list",
        _ => "a value",
    };
    if config::is_secret_key(key) {
        return format!("{kind} (not shown: a secret)");
    }
    match actual {
        Actual::Str(text) => format!("string \"{}\"", printable(text)),
        Actual::Map | Actual::Seq | Actual::Unit | Actual::Option => kind.to_string(),
        other => format!("{kind} `{}`", printable(&other.to_string())),
    }
}

fn describe_figment_error(error: figment::Error, section: Option<&str>) -> Error {
    use figment::error::Kind;
    let mut text = String::new();
    for (i, e) in error.into_iter().enumerate() {
        if i > 0 {
            text.push_str("; ");
        }
        // A section's errors have paths relative to it.
        let mut path: Vec<String> = section.map(|s| s.to_string()).into_iter().collect();
        path.extend(e.path.iter().cloned());
        let key = path.join(".");
        let source = e
            .metadata
            .as_ref()
            .map(|m| source_of(m, &path))
            .unwrap_or_else(|| "the defaults".into());
        let last = path.last().map(String::as_str).unwrap_or("");
        let _ = match &e.kind {
            // The path already ends with the unknown field.
            Kind::UnknownField(_, expected) => write!(
                text,
                "unknown config key `{key}` in {source}; expected one of: {}. Remove it or fix its spelling",
                expected.join(", ")
            ),
            Kind::UnknownVariant(found, expected) => write!(
                text,
                "config key `{key}` = \"{}\" (from {source}) is not one of: {}; set it to one of those",
                printable(found),
                expected.join(", ")
            ),
            Kind::MissingField(field) => {
                let full = if key.is_empty() {
                    field.to_string()
                } else {
                    format!("{key}.{field}")
                };
                let var = format!("BUS_{}", full.replace('.', "__").to_ascii_uppercase());
                write!(
                    text,
                    "required config key `{full}` is missing; set it in {DEFAULT_CONFIG_FILE} or with the environment variable `{var}`"
                )
            }
            Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => write!(
                text,
                "config key `{key}` (from {source}) has the wrong type: found {}, expected {expected}; set it to {expected}",
                shown_value(actual, last)
            ),
            Kind::Message(message) if config::is_secret_key(last) => write!(
                text,
                "config key `{key}` (from {source}): {}",
                printable(message)
            ),
            other => write!(
                text,
                "config key `{key}` (from {source}): {}",
                printable(&other.to_string())
            ),
        };
    }
    // The figment error is not attached as the source: its text would repeat all of the above.
    Error::config(CORE, text)
}
