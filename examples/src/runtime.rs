//! What every example program does first: load the config, set up telemetry, connect, and turn
//! Ctrl-C and SIGTERM into a graceful stop that never hangs.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bus::cloudevents::EventFormat;
use bus::{Bus, Config, Result};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// `[app]` in bus.toml, or `BUS_APP__*` variables: the pipeline services' own settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppSettings {
    /// Directory of `.c` files to fuzz, scan and patch (`BUS_APP__SOURCES_DIR`); unset: the
    /// built-in samples.
    pub sources_dir: Option<PathBuf>,
    /// patch-evaluation stops after this many programs are evaluated (`BUS_APP__EXPECT`);
    /// unset: it runs until stopped.
    pub expect: Option<usize>,
    /// patch-evaluation's join state, an SQLite file (`BUS_APP__STATE_FILE`); unset:
    /// `patch-evaluation.sqlite3` in the working directory (`:memory:` keeps it in memory).
    #[serde(deserialize_with = "bus::config::option_path")]
    pub state_file: Option<PathBuf>,
    /// How long a crash or a patch waits for its partner before patch-evaluation gives it an
    /// `unmatched` verdict (`BUS_APP__ORPHAN_TIMEOUT_SECS`). Default 600.
    pub orphan_timeout_secs: Option<u64>,
}

impl AppSettings {
    /// The orphan timeout (default 600 s).
    pub fn orphan_timeout(&self) -> Duration {
        Duration::from_secs(self.orphan_timeout_secs.unwrap_or(600))
    }
}

/// How long a service may take to stop after it was told to.
pub const STOP_WITHIN: Duration = Duration::from_secs(10);

/// A connected service.
#[derive(Debug)]
pub struct Service {
    /// The service's name (also its subscription name and default MQTT client id).
    pub name: &'static str,
    /// The loaded config.
    pub config: Config,
    /// The `[app]` settings.
    pub settings: AppSettings,
    /// How it encodes the events it publishes.
    pub format: EventFormat,
    /// The connection.
    pub bus: Bus,
    /// Logs, spans and metrics, set up from `[telemetry]` and the `OTEL_*` variables (see
    /// [`bus::telemetry::init`]); dropped last, it flushes the spans not exported yet.
    pub telemetry: bus::telemetry::Telemetry,
}

impl Service {
    /// Loads the config for `name` (see [`Config::load_as`]), sets up telemetry (logs on
    /// stderr filtered by `RUST_LOG`, spans exported when `OTEL_EXPORTER_OTLP_ENDPOINT` is set,
    /// metrics on `telemetry.prometheus`) and connects.
    pub async fn start(name: &'static str) -> Result<Service> {
        let config = Config::load_as(name)?;
        let telemetry = bus::telemetry::init(name, &config.telemetry)?;
        let settings: AppSettings = config.section("app")?;
        let format = config.event_format();
        let bus = bus::connect(&config).await?;
        if config.backend == bus::BackendKind::Memory && name != "autopatch-demo" {
            eprintln!(
                "{name}: on the in-memory backend messages stay inside this process; set BUS_BACKEND=mqtt or gcp to talk to other processes"
            );
        }
        Ok(Service {
            name,
            config,
            settings,
            format,
            bus,
            telemetry,
        })
    }
}

/// A token cancelled on Ctrl-C or SIGTERM. A second signal ends the process at once (exit
/// status 130), whatever it was doing.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        signalled().await;
        cancel.cancel();
        signalled().await;
        eprintln!("second signal: stopping now");
        std::process::exit(130);
    });
    token
}

async fn signalled() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `service` until it ends; once `shutdown` is cancelled it gets [`STOP_WITHIN`] to
/// finish (settling what it holds), after which the process ends with an error.
pub async fn stop_within<T>(
    name: &str,
    shutdown: &CancellationToken,
    service: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::pin!(service);
    tokio::select! {
        result = &mut service => return result,
        _ = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(STOP_WITHIN, service).await {
        Ok(result) => result,
        Err(_) => {
            eprintln!("{name}: did not stop within {STOP_WITHIN:?}; exiting");
            std::process::exit(1);
        }
    }
}

/// Reports an error from a program's main on stderr and exits with status 1.
pub fn exit_on_error(name: &str, result: Result<()>) {
    if let Err(e) = result {
        eprintln!("{name}: {}", bus::printable(&e.to_string()));
        std::process::exit(1);
    }
}
