//! What every example program does first: load the config, connect, and turn Ctrl-C and
//! SIGTERM into a graceful stop.

use std::path::PathBuf;

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
}

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
}

impl Service {
    /// Loads the config for `name` (see [`Config::load_as`]) and connects.
    pub async fn start(name: &'static str) -> Result<Service> {
        let config = Config::load_as(name)?;
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
        })
    }
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
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
        cancel.cancel();
    });
    token
}

/// Reports an error from a program's main on stderr and exits with status 1.
pub fn exit_on_error(name: &str, result: Result<()>) {
    if let Err(e) = result {
        eprintln!("{name}: {e}");
        std::process::exit(1);
    }
}
