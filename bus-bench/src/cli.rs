//! The `bus bench` command line: its subcommands and what runs them.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use bus_testkit::emulator::PubSubEmulator;
use bus_testkit::mosquitto::Mosquitto;
use clap::{Subcommand, ValueEnum};

use crate::clients::{self, Broker, MqttVersion, RawAcks};
use crate::measure::{self, median_and_spread, BenchResult, Params, HEADER_BYTES};
use crate::telemetry_cost::TelemetryMode;
use crate::{backlog, python, report, scenarios, soak};

/// What `bus bench` runs.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Every client of one backend, the median of several runs each, with ratios.
    Compare {
        #[command(flatten)]
        common: Common,
        /// Runs per client (after one warm-up run); the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Leave out the Python baseline.
        #[arg(long)]
        no_python: bool,
        /// Also write the results as an SVG bar chart.
        #[arg(long)]
        chart: Option<PathBuf>,
        /// Measure every client at each of these windows (messages in flight, e.g.
        /// `64,256,1024,4096`) instead of `--publishers` alone, and report each client's best
        /// window as well as the ratios at the same window.
        #[arg(long, value_delimiter = ',')]
        windows: Vec<usize>,
    },
    /// One run of one client.
    Run {
        #[command(flatten)]
        common: Common,
        /// Which client.
        #[arg(long, value_enum, default_value_t = Client::Bus)]
        client: Client,
    },
    /// Memory backend: the consumer stalls while 1,000,000 messages are published; shows the
    /// publisher held back by `memory.max_queued_bytes` and the peak RSS.
    Backpressure {
        /// Messages to publish.
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        /// Payload bytes.
        #[arg(long, default_value_t = 16)]
        payload: usize,
        /// The subscription's bound.
        #[arg(long, default_value_t = 64 * 1024 * 1024)]
        max_queued_bytes: usize,
        /// How long the consumer stalls.
        #[arg(long, default_value_t = 5)]
        stall_secs: u64,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Memory: fills a stalled subscription until publishers are held back and compares the
    /// RSS growth with `memory.max_queued_bytes` (run once per payload size: a fresh process).
    MemoryBudget {
        /// Payload bytes.
        #[arg(long, default_value_t = 16)]
        payload: usize,
        /// The subscription's bound.
        #[arg(long, default_value_t = 256 * 1024 * 1024)]
        max_queued_bytes: usize,
    },
    /// Mosquitto: a QoS 1 burst to a consumer that is not reading, with the shipped broker
    /// config (nothing may be lost) and with Mosquitto's default queue limit.
    LossCheck {
        /// Messages in the burst.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Payload bytes.
        #[arg(long, default_value_t = 1024)]
        payload: usize,
        /// JSON lines instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// MQTT or Pub/Sub: a subscription with nobody consuming while `--messages` messages are
    /// published, the broker's and the client's resident memory read, then the backlog drained
    /// and every message counted (memory: see `backpressure`, bounded by
    /// `memory.max_queued_bytes`).
    Backlog {
        /// The transport (mqtt or gcp).
        #[arg(long, value_enum)]
        backend: Backend,
        /// Messages in the backlog.
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        /// Payload bytes (at least 16).
        #[arg(long, default_value_t = 1024)]
        payload: usize,
        /// Publishes in flight while building the backlog.
        #[arg(long, default_value_t = 1024)]
        publishers: usize,
        /// Extra Mosquitto config lines, e.g. "autosave_interval 60" (mqtt).
        #[arg(long)]
        broker_config: Option<String>,
        /// One JSON object instead of the text.
        #[arg(long)]
        json: bool,
    },
    /// The chaos soak: publishers, consumers and fan-out while the broker restarts,
    /// connections are cut and consumer processes are killed; fails if anything is lost.
    Soak {
        /// The transport.
        #[arg(long, value_enum)]
        backend: Backend,
        /// How long to inject faults (publishing goes on meanwhile).
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Publishers, each on its own connection.
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        /// Messages per second per publisher.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Subscriptions on the topic (each gets every message).
        #[arg(long, default_value_t = 2)]
        subscriptions: usize,
        /// Consumers per subscription.
        #[arg(long, default_value_t = 2)]
        consumers: usize,
        /// Mean seconds between faults.
        #[arg(long, default_value_t = 10.0)]
        fault_every: f64,
        /// Which faults to inject (repeatable); default: all the backend can take (mqtt:
        /// restart, cut, kill, stop; gcp: cut, kill, stop; memory: kill, stop).
        #[arg(long = "fault", value_enum)]
        faults: Vec<soak::Fault>,
        /// Extra Mosquitto config lines, e.g. "autosave_interval 1800" (mqtt).
        #[arg(long)]
        broker_config: Option<String>,
        /// Report losses instead of failing on them (to measure `--fault kill-broker`).
        #[arg(long)]
        measure_loss: bool,
        /// Consumers leave once their subscriptions exist and return when publishing ends, so
        /// the whole workload waits in the broker through the faults.
        #[arg(long)]
        away: bool,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// A soak consumer process (started by `soak`; configured by `BUS_*` variables).
    #[command(hide = true)]
    SoakConsumer {
        /// The topic.
        #[arg(long)]
        topic: String,
        /// The subscription name.
        #[arg(long)]
        subscription: String,
    },
    /// `bus bridge` from MQTT to Pub/Sub (emulator) against each side measured alone, in
    /// interleaved rounds: the bridge's end-to-end rate over the slower side's.
    Bridge {
        /// Messages per run.
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Rounds; each runs MQTT alone, Pub/Sub alone and the bridge, in a rotating order.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Payload bytes (at least 16).
        #[arg(long, default_value_t = 1024)]
        payload: usize,
        /// Publishes in flight at once.
        #[arg(long, default_value_t = 1024)]
        publishers: usize,
        /// Streaming pulls per bus-gcp consumer.
        #[arg(long, default_value_t = 4)]
        streams: usize,
    },
    /// What telemetry costs on MQTT end to end: rounds of six runs in a rotating order, each
    /// in a process of its own — bus without its telemetry layer (`bare`), with it but nothing
    /// installed (`off`), with spans handed to a subscriber that keeps nothing (`noop`), with
    /// spans recorded and metrics kept (`on`: OpenTelemetry SDK, no exporter; Prometheus
    /// recorder), with every span exported over OTLP/HTTP to a local sink (`otlp`), and as
    /// `otlp` sampling one trace in a hundred (`sampled`). Prints each run, then the medians
    /// and the per-round ratios.
    Telemetry {
        /// Messages per run.
        #[arg(long, default_value_t = 50_000)]
        messages: usize,
        /// Rounds.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Payload bytes (at least 16).
        #[arg(long, default_value_t = 1024)]
        payload: usize,
        /// Publishes in flight at once.
        #[arg(long, default_value_t = 1024)]
        publishers: usize,
    },
    /// What recording a message's spans costs in CPU, with no broker: the three spans bus
    /// makes per message, made as bus makes them (`tracing` recorded by
    /// `tracing-opentelemetry`) and straight through the OpenTelemetry SDK (the floor of any
    /// recording path), with no exporter and exporting OTLP/HTTP to a local sink. Rounds in a
    /// rotating order; prints microseconds of the process's CPU per message.
    Spans {
        /// Messages per run.
        #[arg(long, default_value_t = 200_000)]
        messages: usize,
        /// Rounds.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// One run of `telemetry` (started by it, in a process of its own).
    #[command(hide = true)]
    TelemetryRun {
        /// What is installed.
        #[arg(long, value_enum)]
        mode: TelemetryMode,
        /// The Mosquitto to use.
        #[arg(long)]
        port: u16,
        /// Messages.
        #[arg(long)]
        messages: usize,
        /// Payload bytes.
        #[arg(long)]
        payload: usize,
        /// Publishes in flight at once.
        #[arg(long)]
        publishers: usize,
    },
    /// Draws an SVG chart from JSON lines written by `compare --json` or `run --json`.
    Chart {
        /// JSON lines (one result per line).
        #[arg(long)]
        input: PathBuf,
        /// The SVG to write.
        #[arg(long)]
        output: PathBuf,
        /// `bars`: end-to-end msgs/s per result; `scaling`: msgs/s and p99 latency against
        /// payload size, one line per backend and client.
        #[arg(long, value_enum, default_value = "bars")]
        kind: ChartKind,
    },
}

#[derive(Debug, clap::Args, Clone)]
pub struct Common {
    /// The transport.
    #[arg(long, value_enum)]
    backend: Backend,
    /// Messages per run (default: memory 1,000,000, mqtt 100,000, gcp 10,000).
    #[arg(long)]
    messages: Option<usize>,
    /// Payload bytes (at least 16: the timestamp and sequence number).
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Publishes in flight at once (concurrent publishing tasks). Default: memory 64; mqtt and
    /// gcp 1024, the raw rumqttc client's request queue (the raw and Python clients pipeline
    /// without waiting for each confirmation).
    #[arg(long)]
    publishers: Option<usize>,
    /// Competing consumers (bus client).
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    /// MQTT QoS.
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// Streaming pulls per consumer: bus-gcp's, and the raw google-cloud-pubsub client's
    /// (`compare` runs raw with one stream, the baseline, and with this many when not 1).
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Also measure bus through its batch API, this many messages per `publish_batch` and
    /// `receive_batch` call (`compare`: with as many messages in flight as one by one).
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// Subscriptions on the topic, each getting every message (fan-out; bus clients only:
    /// `compare` leaves the raw clients out when it is above 1).
    #[arg(long, default_value_t = 1)]
    subscriptions: usize,
    /// Publish only (`--backend gcp`): to a topic without subscriptions, so the publish rate
    /// is measured without consumers competing for the CPU (and the emulator keeps nothing).
    /// End-to-end figures are left out.
    #[arg(long)]
    publish_only: bool,
    /// JSON lines instead of the table.
    #[arg(long)]
    json: bool,
}

/// A backend to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Memory,
    Mqtt,
    Gcp,
}

/// A client to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Client {
    /// bus on the chosen backend.
    Bus,
    /// The backend's raw client (tokio mpsc, rumqttc MQTT 5, google-cloud-pubsub).
    Raw,
    /// rumqttc with MQTT 3.1.1 (mqtt only).
    RawV311,
    /// rumqttc MQTT 5 acking each message after the consumer recorded it, as bus does (mqtt
    /// only; `raw` acks on receipt).
    RawAcked,
    /// The Python client (paho-mqtt, google-cloud-pubsub).
    Python,
    /// bus through its batch API (`--batch`).
    BusBatch,
}

/// The broker process for a run, kept alive while it is measured.
enum Running {
    Memory,
    Mqtt(Mosquitto),
    Gcp {
        /// Kept alive while measured (`None` for an external emulator).
        emulator: Option<PubSubEmulator>,
        host: String,
    },
}

impl Running {
    fn start(backend: Backend) -> Running {
        match backend {
            Backend::Memory => Running::Memory,
            Backend::Mqtt => Running::Mqtt(Mosquitto::start()),
            Backend::Gcp => match std::env::var("PUBSUB_EMULATOR_HOST") {
                Ok(host) => Running::Gcp {
                    emulator: None,
                    host,
                },
                Err(_) => {
                    let emulator = PubSubEmulator::start();
                    let host = emulator.host_port();
                    Running::Gcp {
                        emulator: Some(emulator),
                        host,
                    }
                }
            },
        }
    }

    /// The broker's process id (this process for memory; `None` for an external emulator).
    fn pid(&self) -> Option<u32> {
        match self {
            Running::Memory => Some(std::process::id()),
            Running::Mqtt(mosquitto) => mosquitto.pid(),
            Running::Gcp { emulator, .. } => emulator.as_ref().and_then(|e| e.pid()),
        }
    }

    fn broker(&self) -> Broker {
        match self {
            Running::Memory => Broker::Memory,
            Running::Mqtt(mosquitto) => Broker::Mqtt {
                port: mosquitto.port(),
            },
            Running::Gcp { host, .. } => Broker::Gcp { host: host.clone() },
        }
    }
}

impl Common {
    fn params(&self) -> Result<Params, String> {
        if self.payload < HEADER_BYTES {
            return Err(format!(
                "--payload {} is too small: each message carries a {HEADER_BYTES}-byte timestamp and sequence number",
                self.payload
            ));
        }
        let publishers = self.publishers.unwrap_or(match self.backend {
            Backend::Memory => 64,
            Backend::Mqtt | Backend::Gcp => 1024,
        });
        if publishers == 0 || self.consumers == 0 || self.streams == 0 || self.subscriptions == 0 {
            return Err(
                "--publishers, --consumers, --streams and --subscriptions must be at least 1"
                    .into(),
            );
        }
        if self.qos > 2 {
            return Err(format!(
                "--qos {} is not an MQTT QoS; use 0, 1 or 2",
                self.qos
            ));
        }
        if self.publish_only && self.backend != Backend::Gcp {
            let backend = self.backend.to_possible_value();
            return Err(format!(
                "--publish-only is for --backend gcp only, not {}: an MQTT publish is confirmed against the subscriptions that hold it, and the raw in-memory channel would fill; leave it out",
                backend.as_ref().map_or("", |v| v.get_name())
            ));
        }
        let messages = self.messages.unwrap_or(match self.backend {
            Backend::Memory => 1_000_000,
            Backend::Mqtt => 100_000,
            Backend::Gcp => 10_000,
        });
        if messages == 0 {
            return Err("--messages must be at least 1".into());
        }
        Ok(Params {
            messages,
            payload: self.payload,
            publishers,
            consumers: self.consumers,
            qos: self.qos,
            streams: self.streams,
            idle_timeout: match self.backend {
                Backend::Gcp => Duration::from_secs(60),
                _ => Duration::from_secs(10),
            },
            batch: self.batch,
            subscriptions: self.subscriptions,
            publish_only: self.publish_only,
        })
    }
}

async fn run_client(
    broker: &Broker,
    client: Client,
    params: &Params,
) -> Result<BenchResult, String> {
    if params.subscriptions > 1 && !matches!(client, Client::Bus | Client::BusBatch) {
        return Err(format!(
            "--subscriptions {}: fan-out is measured for the bus clients only",
            params.subscriptions
        ));
    }
    if params.publish_only && client == Client::Python {
        return Err("--publish-only measures the bus and raw clients only; leave out --client python (compare: the Python peers are left out with it)".into());
    }
    if client == Client::BusBatch {
        if params.batch == 0 {
            return Err("the batch client needs --batch N (messages per call)".into());
        }
        return Ok(clients::bus(broker, params).await);
    }
    // Every other client sends one message per call (and reports its window as such).
    let params = &Params {
        batch: 0,
        ..params.clone()
    };
    match (broker, client) {
        (broker, Client::Bus) => Ok(clients::bus(broker, params).await),
        (Broker::Memory, Client::Raw) => Ok(clients::raw_memory(params).await),
        (Broker::Mqtt { port }, Client::Raw) => {
            Ok(clients::raw_mqtt(*port, MqttVersion::V5, RawAcks::OnReceipt, params).await)
        }
        (Broker::Mqtt { port }, Client::RawV311) => {
            Ok(clients::raw_mqtt(*port, MqttVersion::V311, RawAcks::OnReceipt, params).await)
        }
        (Broker::Mqtt { port }, Client::RawAcked) => {
            Ok(clients::raw_mqtt(*port, MqttVersion::V5, RawAcks::AfterProcessing, params).await)
        }
        (Broker::Mqtt { port }, Client::Python) => {
            let (port, params) = (*port, params.clone());
            tokio::task::spawn_blocking(move || python::paho(port, &params))
                .await
                .map_err(|e| e.to_string())?
        }
        (Broker::Gcp { host }, Client::Raw) => Ok(clients::raw_gcp(host, params).await),
        (Broker::Gcp { host }, Client::Python) => {
            let (host, params) = (host.clone(), params.clone());
            tokio::task::spawn_blocking(move || python::pubsub(&host, &params))
                .await
                .map_err(|e| e.to_string())?
        }
        (broker, _) => Err(format!(
            "that client does not exist for the {} backend",
            broker.backend()
        )),
    }
}

/// The clients compared on a backend, each with the params it runs with.
fn lineup(backend: Backend, params: &Params, python: bool) -> Vec<(Client, Params)> {
    let mut clients = match backend {
        Backend::Memory => vec![(Client::Bus, params.clone()), (Client::Raw, params.clone())],
        Backend::Mqtt => vec![
            (Client::Bus, params.clone()),
            (Client::Raw, params.clone()),
            (Client::RawAcked, params.clone()),
            (Client::RawV311, params.clone()),
        ],
        Backend::Gcp => {
            let mut one_stream = params.clone();
            one_stream.streams = 1;
            // The goal's baseline is one raw stream; with more streams, raw with as many
            // streams as bus shows what this machine and broker allow.
            let mut lineup = vec![
                (Client::Bus, params.clone()),
                (Client::Raw, one_stream.clone()),
            ];
            if params.streams != 1 {
                lineup.insert(1, (Client::Bus, one_stream));
                lineup.push((Client::Raw, params.clone()));
            }
            lineup
        }
    };
    if let Some(tasks) = params.publishers.checked_div(params.batch) {
        // As many messages in flight as one by one: fewer tasks, each with a batch.
        let mut batched = params.clone();
        batched.publishers = tasks.max(1);
        clients.insert(1, (Client::BusBatch, batched));
    }
    if python && backend != Backend::Memory {
        clients.push((Client::Python, params.clone()));
    }
    if params.subscriptions > 1 {
        clients.retain(|(client, _)| matches!(client, Client::Bus | Client::BusBatch));
    }
    clients
}

/// Every client of the lineup, interleaved: after one warm-up run each, `runs` rounds in which
/// each client runs once, in an order that rotates from round to round (so drift on a shared
/// machine lands on every client alike). Returns each client's median with its spread, and
/// per round the publish and end-to-end rates of each client.
async fn compare(
    common: &Common,
    runs: usize,
    python: bool,
    windows: &[usize],
) -> Result<(Vec<BenchResult>, Vec<Vec<Rates>>), String> {
    let params = common.params()?;
    if windows.contains(&0) {
        return Err("--windows: every window must be at least 1".into());
    }
    let mut lineup = Vec::new();
    for (which, window) in windows.iter().enumerate() {
        let at_window = Params {
            publishers: *window,
            ..params.clone()
        };
        // The Python peers keep their own window: measured once.
        lineup.extend(self::lineup(
            common.backend,
            &at_window,
            python && which == 0 && !params.publish_only,
        ));
    }
    if windows.is_empty() {
        lineup = self::lineup(common.backend, &params, python && !params.publish_only);
    }
    let running = Running::start(common.backend);
    let broker = running.broker();
    for (client, params) in &lineup {
        // Warm-up: connections, JIT of the emulator and the Python interpreter, page cache.
        let mut warm_up = params.clone();
        warm_up.messages = (params.messages / 10).clamp(1, 10_000);
        run_client(&broker, *client, &warm_up).await?;
    }
    let mut measured: Vec<Vec<BenchResult>> = vec![Vec::new(); lineup.len()];
    let mut rounds = Vec::new();
    for round in 0..runs.max(1) {
        let mut rates = vec![Rates::default(); lineup.len()];
        for step in 0..lineup.len() {
            let which = (round + step) % lineup.len();
            let (client, params) = &lineup[which];
            let result = run_client(&broker, *client, params).await?;
            rates[which] = Rates {
                publish: result.publish_msgs_per_s,
                end_to_end: result.e2e_msgs_per_s,
            };
            measured[which].push(result);
        }
        rounds.push(rates);
    }
    Ok((
        measured.into_iter().filter_map(measure::median).collect(),
        rounds,
    ))
}

/// One client's rates in one round, msgs/s.
#[derive(Debug, Clone, Copy, Default)]
struct Rates {
    publish: f64,
    end_to_end: f64,
}

impl Rates {
    /// The publish rate, or the end-to-end rate.
    fn of(&self, publish: bool) -> f64 {
        if publish {
            self.publish
        } else {
            self.end_to_end
        }
    }
}

/// Per round, bus's rates over each other client's at the same window, end to end and
/// publishing: the median and the spread.
fn round_ratios(results: &[BenchResult], rounds: &[Vec<Rates>]) -> String {
    let mut text = String::new();
    let is_bus = |r: &BenchResult| r.client.starts_with("bus");
    for (bus, ours) in results.iter().enumerate().filter(|(_, r)| is_bus(r)) {
        for (other, result) in results
            .iter()
            .enumerate()
            .filter(|(_, r)| !is_bus(r) && (r.in_flight == ours.in_flight || r.in_flight == 0))
        {
            for (phase, publish) in [("end to end", false), ("publish", true)] {
                // A publish-only run has no end-to-end figure.
                if !publish && rounds.iter().all(|rates| rates[bus].end_to_end == 0.0) {
                    continue;
                }
                let ratios: Vec<f64> = rounds
                    .iter()
                    .map(|rates| {
                        rates[bus].of(publish) / rates[other].of(publish).max(f64::MIN_POSITIVE)
                    })
                    .collect();
                let (median, low, high) = median_and_spread(ratios);
                text.push_str(&format!(
                    "per round, {} ({}) / {} ({}) {phase} at {} in flight: median {median:.2}x (min {low:.2}, max {high:.2})\n",
                    ours.client, ours.variant, result.client, result.variant, ours.in_flight
                ));
            }
        }
    }
    text
}

/// `bus bench bridge`: interleaved rounds of MQTT alone, Pub/Sub alone and the bridge between
/// them; prints each run, then medians with their spread and the ratio per round.
async fn bridge_rounds(rounds: usize, params: &Params) -> Result<(), String> {
    let bus_program = std::env::current_exe().map_err(|e| e.to_string())?;
    let mqtt = Running::start(Backend::Mqtt);
    let gcp = Running::start(Backend::Gcp);
    let (mqtt, gcp) = (mqtt.broker(), gcp.broker());
    // Warm-up of each: connections, the emulator's JIT.
    let mut warm_up = params.clone();
    warm_up.messages = (params.messages / 10).max(1);
    clients::bus(&mqtt, &warm_up).await;
    clients::bus(&gcp, &warm_up).await;
    clients::bridged(&mqtt, &gcp, &bus_program, &warm_up).await;
    let names = ["mqtt alone", "gcp alone", "bridge mqtt->gcp"];
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut ratios = Vec::new();
    for round in 0..rounds.max(1) {
        let mut this_round = [0.0; 3];
        for step in 0..3 {
            let which = (round + step) % 3;
            let result = match which {
                0 => clients::bus(&mqtt, params).await,
                1 => clients::bus(&gcp, params).await,
                _ => clients::bridged(&mqtt, &gcp, &bus_program, params).await,
            };
            if result.lost > 0 {
                return Err(format!(
                    "{}: {} of {} messages lost",
                    names[which], result.lost, params.messages
                ));
            }
            println!(
                "round {}: {:<18} {:>9.0} msg/s end to end, p50 {:>7} us, p99 {:>8} us, {} duplicates",
                round + 1,
                names[which],
                result.e2e_msgs_per_s,
                result.p50_us,
                result.p99_us,
                result.duplicates
            );
            this_round[which] = result.e2e_msgs_per_s;
            rates[which].push(result.e2e_msgs_per_s);
        }
        ratios.push(this_round[2] / this_round[0].min(this_round[1]));
    }
    println!();
    for (name, rates) in names.iter().zip(rates) {
        let (median, low, high) = median_and_spread(rates);
        println!("{name:<18} median {median:>9.0} msg/s (min {low:.0}, max {high:.0})");
    }
    let (median, low, high) = median_and_spread(ratios);
    println!(
        "bridge / slower side, per round: median {median:.2} (min {low:.2}, max {high:.2}), {} rounds of {} messages",
        rounds.max(1),
        params.messages
    );
    Ok(())
}

/// Marks results measured with a non-default global allocator.
fn label_allocator(results: &mut [BenchResult]) {
    if cfg!(feature = "mimalloc") {
        for result in results {
            result.variant.push_str(" [mimalloc]");
        }
    }
}

/// Prints `report` as one JSON object (`json`) or as `text` renders it.
fn print_report<T: serde::Serialize>(
    report: &T,
    json: bool,
    text: impl FnOnce(&T) -> String,
) -> Result<(), String> {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", text(report));
    }
    Ok(())
}

fn print(results: &[BenchResult], json: bool) {
    let mut stdout = std::io::stdout();
    let text = if json {
        report::json_lines(results)
    } else {
        report::table(results)
    };
    let _ = stdout.write_all(text.as_bytes());
}

/// Runs one `bus bench` command. `invocation` is how this program runs a bench subcommand
/// (the arguments before it, e.g. `["bench"]`), for the soak's consumer processes.
pub async fn run(command: BenchCommand, invocation: &[String]) -> Result<(), String> {
    match command {
        BenchCommand::Compare {
            common,
            runs,
            no_python,
            chart,
            windows,
        } => {
            let (mut results, rounds) = compare(&common, runs, !no_python, &windows).await?;
            label_allocator(&mut results);
            print(&results, common.json);
            if !common.json {
                let windows = match &windows[..] {
                    [] => common.params()?.publishers.to_string(),
                    list => format!("each of {list:?}"),
                };
                println!(
                    "{} interleaved rounds, each client at {windows} messages in flight; medians (min-max) above, ratios of the medians at the same window, and here the ratio per round:",
                    rounds.len(),
                );
                print!("{}", round_ratios(&results, &rounds));
            }
            if let Some(path) = chart {
                report::chart(&results, &path)?;
            }
            Ok(())
        }
        BenchCommand::Bridge {
            messages,
            rounds,
            payload,
            publishers,
            streams,
        } => {
            if payload < HEADER_BYTES || messages == 0 || publishers == 0 || streams == 0 {
                return Err(format!(
                    "--payload must be at least {HEADER_BYTES}; --messages, --publishers and --streams at least 1"
                ));
            }
            let params = Params {
                streams,
                ..Params::new(messages, payload, publishers)
            };
            bridge_rounds(rounds, &params).await
        }
        BenchCommand::Telemetry {
            messages,
            rounds,
            payload,
            publishers,
        } => {
            if payload < HEADER_BYTES || messages == 0 || publishers == 0 {
                return Err(format!(
                    "--payload must be at least {HEADER_BYTES}; --messages and --publishers at least 1"
                ));
            }
            crate::telemetry_cost::rounds(rounds, messages, payload, publishers).await
        }
        BenchCommand::Spans { messages, rounds } => {
            if messages == 0 {
                return Err("--messages must be at least 1".to_string());
            }
            // The OTLP exporter's blocking HTTP client must live outside the runtime.
            tokio::task::spawn_blocking(move || crate::span_floor::rounds(rounds, messages))
                .await
                .map_err(|e| e.to_string())?
        }
        BenchCommand::TelemetryRun {
            mode,
            port,
            messages,
            payload,
            publishers,
        } => {
            let params = Params::new(messages, payload, publishers);
            let result = crate::telemetry_cost::run(mode, port, &params).await?;
            println!(
                "{}",
                serde_json::to_string(&result).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        BenchCommand::Run { common, client } => {
            let params = common.params()?;
            let running = Running::start(common.backend);
            let mut result = [run_client(&running.broker(), client, &params).await?];
            label_allocator(&mut result);
            print(&result, common.json);
            Ok(())
        }
        BenchCommand::Backpressure {
            messages,
            payload,
            max_queued_bytes,
            stall_secs,
            json,
        } => {
            if payload < HEADER_BYTES {
                return Err(format!("--payload must be at least {HEADER_BYTES}"));
            }
            let report = scenarios::backpressure(
                messages,
                payload,
                max_queued_bytes,
                Duration::from_secs(stall_secs),
            )
            .await;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&report).map_err(|e| e.to_string())?
                );
            } else {
                println!("{report:#?}");
            }
            if report.delivered != messages {
                return Err(format!(
                    "{} of {messages} messages lost",
                    messages - report.delivered
                ));
            }
            Ok(())
        }
        BenchCommand::Backlog {
            backend,
            messages,
            payload,
            publishers,
            broker_config,
            json,
        } => {
            if backend == Backend::Memory {
                return Err("--backend memory: the memory backend holds no unbounded backlog; `bus bench backpressure` shows it bounded by memory.max_queued_bytes".into());
            }
            if payload < HEADER_BYTES || messages == 0 || publishers == 0 {
                return Err(format!(
                    "--payload must be at least {HEADER_BYTES}; --messages and --publishers at least 1"
                ));
            }
            let running = match (backend, broker_config) {
                (Backend::Mqtt, Some(lines)) => {
                    Running::Mqtt(Mosquitto::start_with(|_| lines.replace("\\n", "\n")))
                }
                (_, Some(_)) => return Err("--broker-config is for --backend mqtt".into()),
                (backend, None) => Running::start(backend),
            };
            let pid = running.pid().ok_or(
                "the broker's process is not ours (PUBSUB_EMULATOR_HOST is set): unset it so the bench starts its own emulator",
            )?;
            let params = Params {
                streams: 4,
                ..Params::new(messages, payload, publishers)
            };
            let result = backlog::run(&running.broker(), pid, &params).await?;
            print_report(&result, json, backlog::describe)?;
            match result.lost {
                0 => Ok(()),
                lost => Err(format!("{lost} of {messages} messages lost")),
            }
        }
        BenchCommand::LossCheck {
            messages,
            payload,
            json,
        } => {
            let results = scenarios::mosquitto_queue_limit(messages, payload).await;
            for result in &results {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string(result).map_err(|e| e.to_string())?
                    );
                } else {
                    println!(
                        "{:<48} {:>8} published {:>8} delivered {:>8} lost",
                        result.config, result.messages, result.delivered, result.lost
                    );
                }
            }
            match results.first() {
                Some(shipped) if shipped.lost > 0 => Err(format!(
                    "the shipped Mosquitto config lost {} of {messages} messages",
                    shipped.lost
                )),
                _ => Ok(()),
            }
        }
        BenchCommand::Soak {
            backend,
            minutes,
            publishers,
            rate,
            subscriptions,
            consumers,
            fault_every,
            faults,
            broker_config,
            measure_loss,
            away,
            json,
        } => {
            if publishers == 0 || subscriptions == 0 || consumers == 0 || rate == 0 {
                return Err(
                    "--publishers, --subscriptions, --consumers and --rate must be at least 1"
                        .into(),
                );
            }
            if !(minutes > 0.0 && fault_every > 0.0) {
                return Err("--minutes and --fault-every must be positive".into());
            }
            let backend = match backend {
                Backend::Memory => "memory",
                Backend::Mqtt => "mqtt",
                Backend::Gcp => "gcp",
            };
            let params = soak::SoakParams {
                backend,
                duration: Duration::from_secs_f64(minutes * 60.0),
                publishers,
                rate,
                subscriptions,
                consumers,
                fault_every: Duration::from_secs_f64(fault_every),
                faults: if faults.is_empty() {
                    soak::Fault::defaults(backend)
                } else {
                    faults
                },
                broker_config: broker_config.map(|lines| lines.replace("\\n", "\n")),
                away,
            };
            let report = soak::soak(params, invocation).await?;
            print_report(&report, json, soak::table)?;
            match report.lost() {
                0 => Ok(()),
                _ if measure_loss => Ok(()),
                lost => Err(format!("{lost} messages lost")),
            }
        }
        BenchCommand::SoakConsumer {
            topic,
            subscription,
        } => soak::consumer(&topic, &subscription).await,
        BenchCommand::MemoryBudget {
            payload,
            max_queued_bytes,
        } => {
            if payload < HEADER_BYTES {
                return Err(format!("--payload must be at least {HEADER_BYTES}"));
            }
            let report = scenarios::memory_budget(payload, max_queued_bytes).await;
            println!(
                "{}",
                serde_json::to_string(&report).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        BenchCommand::Chart {
            input,
            output,
            kind,
        } => {
            let text =
                std::fs::read_to_string(&input).map_err(|e| format!("{}: {e}", input.display()))?;
            let results: Vec<BenchResult> = text
                .lines()
                .filter(|l| l.trim_start().starts_with('{'))
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", input.display()))?;
            match kind {
                ChartKind::Bars => report::chart(&results, &output),
                ChartKind::Scaling => report::scaling_chart(&results, &output),
            }
        }
    }
}

/// What `bench chart` draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChartKind {
    /// End-to-end msgs/s, one bar per result.
    Bars,
    /// msgs/s and p99 latency against payload size, one line per backend and client.
    Scaling,
}
