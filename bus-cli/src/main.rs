//! `bus`: the command line of bus, configured like the library (`bus.toml`, `BUS_CONFIG`,
//! `BUS_*`), with flags overriding. Exit status: 0 done, 1 failed, 2 wrong usage.

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bridge;
mod provision;
mod publish;
mod subscribe;

use std::path::PathBuf;
use std::process::ExitCode;

use bus::{BackendKind, Config, Error, ErrorKind};
use clap::{Parser, Subcommand, ValueEnum};
use figment::providers::Serialized;

/// Publish, subscribe, provision and bridge on any bus backend.
///
/// Configuration comes from bus.toml (or the file named by --config / BUS_CONFIG) and BUS_*
/// environment variables, exactly as for the library; --backend overrides `backend`.
#[derive(Debug, Parser)]
#[command(
    name = "bus",
    version,
    about,
    after_help = "Examples:
  bus pub autopatch/crash_detail '{\"executable_name\":\"boflow1\"}' --attr severity=high
  bus sub autopatch/crash_detail --subscription inspect --count 10 --json --no-ack
  bus --backend gcp provision pubsub-emulator/provision.toml
  bus bridge --from mqtt --to gcp --topic autopatch/crash_detail --topic autopatch/cpg-scan-result
  bus bench compare --backend mqtt

Exit status: 0 done, 1 failed, 2 wrong usage."
)]
struct Cli {
    /// The config file (default: BUS_CONFIG, else bus.toml if it exists).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The backend, overriding the config's `backend` (before the subcommand: `bus --backend
    /// gcp sub ...`; `bus bench` subcommands take their own).
    #[arg(long, value_enum)]
    backend: Option<Backend>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Memory,
    Mqtt,
    Gcp,
}

impl Backend {
    fn kind(self) -> BackendKind {
        match self {
            Backend::Memory => BackendKind::Memory,
            Backend::Mqtt => BackendKind::Mqtt,
            Backend::Gcp => BackendKind::Gcp,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish messages (like mosquitto_pub).
    #[command(after_help = "Examples:
  bus pub python/mqtt Hello
  echo hello | bus pub python/mqtt -
  bus pub python/mqtt --file crash.json --attr content-type=application/json
  bus pub python/mqtt --lines < messages.txt
  bus pub python/mqtt load --count 10000 --rate 500
  bus pub autopatch/crash_detail '{\"executable_name\":\"boflow1\"}' --cloudevent --type autopatch.crashdetail --source cli")]
    Pub(publish::PubArgs),
    /// Receive messages (like mosquitto_sub).
    #[command(after_help = "Examples:
  bus sub python/mqtt --subscription consume
  bus sub python/mqtt --subscription inspect --count 5 --json --no-ack
  bus sub autopatch/crash_detail --subscription patch-evaluation --timeout 10 --nack")]
    Sub(subscribe::SubArgs),
    /// Create the topics and subscriptions listed in a TOML file (idempotent).
    #[command(after_help = "The file:
  [[topic]]
  name = \"autopatch/crash_detail\"

  [[subscription]]
  topic = \"autopatch/crash_detail\"
  name = \"patch-evaluation\"
  ack_deadline_secs = 60            # optional
  ordered = false                   # optional
  dead_letter_topic = \"autopatch/dead-letter\"   # optional
  max_delivery_attempts = 5         # with dead_letter_topic

Examples:
  bus --backend gcp provision pubsub-emulator/provision.toml
  bus --backend mqtt provision provision.toml --dry-run")]
    Provision(provision::ProvisionArgs),
    /// Carry topics from one backend to the other (MQTT <-> Pub/Sub), live, losing nothing.
    #[command(after_help = "Examples:
  bus bridge --from mqtt --to gcp --topic autopatch/crash_detail --topic autopatch/cpg-scan-result
  bus bridge                       # the routes of [bridge] in bus.toml:
                                   #   [[bridge.routes]]
                                   #   from = \"mqtt\"
                                   #   to = \"gcp\"
                                   #   topics = [\"autopatch/crash_detail\"]")]
    Bridge(bridge::BridgeArgs),
    /// Benchmarks and the chaos soak (see BENCHMARKS.md and RELIABILITY.md).
    Bench {
        #[command(subcommand)]
        command: bus_bench::BenchCommand,
    },
}

/// A failure: wrong usage (exit status 2) or a failure to do the job (1).
#[derive(Debug)]
enum Failure {
    Usage(String),
    Failed(String),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure::Failed(one_line(&error.to_string()))
    }
}

/// A message on one line: control characters escaped (wire text inside cannot forge lines),
/// nothing cut off.
fn one_line(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_debug().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn main() -> ExitCode {
    // Never a Rust backtrace: one line, exit status 1.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("bus: internal error: {}", bus::printable(&info.to_string()));
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // A short command reports its outcome in one line (RUST_LOG shows more). The long-running
    // bridge, and a run of `bus bench telemetry`, set up telemetry as services do
    // (`bus::telemetry::init`: logs, spans, metrics) once their config is loaded.
    let services_telemetry = matches!(
        cli.command,
        Command::Bridge(_)
            | Command::Bench {
                command: bus_bench::BenchCommand::TelemetryRun { .. }
            }
    );
    if !services_telemetry {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bus: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("bus: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("bus: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go out as clap writes them; a usage error becomes one line naming the
/// problem and where to read more, with exit status 2.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as Kind;
    if matches!(
        error.kind(),
        Kind::DisplayHelp | Kind::DisplayVersion | Kind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        return if error.use_stderr() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = error.render().to_string();
    let problem = rendered
        .split("Usage:")
        .next()
        .unwrap_or_default()
        .replace("For more information, try '--help'.", "");
    let problem = problem
        .trim()
        .trim_start_matches("error:")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let subcommand = std::env::args()
        .skip(1)
        .find(|arg| ["pub", "sub", "provision", "bridge", "bench"].contains(&arg.as_str()));
    let command = match &subcommand {
        Some(subcommand) => format!("bus {subcommand}"),
        None => "bus".to_string(),
    };
    if problem.contains("unexpected argument '--backend'") {
        // Only `bus bench` subcommands take --backend after the subcommand.
        eprintln!(
            "bus: --backend goes before the subcommand: `bus --backend BACKEND {}` (see `bus --help`)",
            subcommand.as_deref().unwrap_or("...")
        );
        return ExitCode::from(2);
    }
    eprintln!("bus: {problem} (see `{command} --help`)");
    ExitCode::from(2)
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let shutdown = Shutdown::on_signals();
    match cli.command {
        Command::Bench { command } => bus_bench::run(command, &["bench".to_string()])
            .await
            .map_err(Failure::Failed),
        Command::Pub(args) => {
            let config = load(&cli.config, cli.backend, &[])?;
            publish::run(&config, args, &shutdown).await
        }
        Command::Sub(args) => {
            let config = load(&cli.config, cli.backend, &[])?;
            subscribe::run(&config, args, &shutdown).await
        }
        Command::Provision(args) => {
            // Provisioning is what this command is for, also against real Pub/Sub.
            let config = load(&cli.config, cli.backend, &[("gcp.provisioning", true)])?;
            provision::run(&config, args).await
        }
        Command::Bridge(args) => {
            let config = load(&cli.config, None, &[])?;
            let _telemetry = bus::telemetry::init("bus-bridge", &config.telemetry)
                .map_err(|e| Failure::Failed(one_line(&e.to_string())))?;
            bridge::run(&config, args, &shutdown).await
        }
    }
}

/// The configuration: the file and `BUS_*` variables, with `backend` and `overrides` on top.
/// The MQTT client id defaults to `bus-<pid>`, so that two commands never share sessions.
fn load(
    path: &Option<PathBuf>,
    backend: Option<Backend>,
    overrides: &[(&str, bool)],
) -> Result<Config, Failure> {
    let path = match path {
        Some(path) => {
            if !path.is_file() {
                return Err(Failure::Usage(format!(
                    "--config {}: no such file",
                    bus::printable(&path.display().to_string())
                )));
            }
            path.clone()
        }
        None => std::env::var_os(bus::CONFIG_PATH_VAR)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(bus::DEFAULT_CONFIG_FILE)),
    };
    let mut figment = Config::figment(&path).join(Serialized::default(
        "mqtt.client_id",
        format!("bus-{}", std::process::id()),
    ));
    if let Some(backend) = backend {
        figment = figment.merge(Serialized::default("backend", backend.kind().as_str()));
    }
    for (key, value) in overrides {
        figment = figment.merge(Serialized::default(key, value));
    }
    Config::from_figment(figment).map_err(|e| match e.kind() {
        ErrorKind::Config => Failure::Failed(one_line(&e.to_string())),
        _ => e.into(),
    })
}

/// Connects to the configured backend for `bus <command>`; the in-process memory backend is
/// refused, as nothing another process does could reach it.
async fn connect(config: &Config, command: &str) -> Result<Box<dyn bus::Backend>, Failure> {
    if config.backend == BackendKind::Memory {
        return Err(Failure::Usage(format!(
            "backend = \"memory\" (from {}): the memory backend lives inside one process, so `bus {command}` would reach nothing another process can see; choose --backend mqtt or --backend gcp (or set `backend` in bus.toml or BUS_BACKEND)",
            config.backend_origin()
        )));
    }
    Ok(bus::connect_backend(config).await?)
}

/// Standard output, one flushed line at a time; `false` once nobody reads it any more (a
/// closed pipe, as in `bus sub ... | head -1`).
struct Stdout(std::io::Stdout);

impl Stdout {
    fn new() -> Stdout {
        Stdout(std::io::stdout())
    }

    fn line(&mut self, bytes: &[u8]) -> bool {
        use std::io::Write;
        let mut out = self.0.lock();
        let written = out
            .write_all(bytes)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        match written {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => false,
            Err(e) => {
                eprintln!("bus: cannot write to stdout: {e}");
                false
            }
        }
    }
}

impl Failure {
    /// The same failure, with where it happened.
    fn context(self, context: &str) -> Failure {
        match self {
            Failure::Usage(message) => Failure::Usage(message),
            Failure::Failed(message) => Failure::Failed(format!("{message} ({context})")),
        }
    }
}

/// Ctrl-C and SIGTERM: the first asks the command to settle what it holds and stop; a second
/// stops the process at once (exit status 130).
#[derive(Debug, Clone)]
struct Shutdown(std::sync::Arc<tokio::sync::watch::Sender<bool>>);

impl Shutdown {
    fn on_signals() -> Shutdown {
        let shutdown = Shutdown(std::sync::Arc::new(tokio::sync::watch::channel(false).0));
        let asked = shutdown.clone();
        tokio::spawn(async move {
            signalled().await;
            asked.request();
            signalled().await;
            eprintln!("bus: second signal: stopping now");
            std::process::exit(130);
        });
        shutdown
    }

    /// Asks the command to stop (also done by the first signal).
    fn request(&self) {
        self.0.send_replace(true);
    }

    /// Completes once a stop was asked for.
    async fn requested(&self) {
        let mut asked = self.0.subscribe();
        let _ = asked.wait_for(|stop| *stop).await;
    }

    fn is_requested(&self) -> bool {
        *self.0.borrow()
    }
}

async fn signalled() {
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
