//! The chaos soak: an at-least-once workload (several publishers, several consumers per
//! subscription, fan-out to several subscriptions) while faults are injected at random — broker
//! restarts, connections cut through a fault proxy, consumer processes killed (SIGKILL) or
//! stopped (SIGTERM) and started again — then every message is checked on every subscription:
//! lost must be 0; duplicates and the worst delivery delay are reported.
//!
//! On MQTT and the Pub/Sub emulator the consumers are child processes (`bus-bench
//! soak-consumer`) configured like any service, by `BUS_*` variables; the publishers run in this
//! process. Faults per backend: Mosquitto gets all four; the emulator keeps no state across a
//! restart, so it gets cuts, kills and stops; the in-memory broker lives inside one process, so
//! its consumers are tasks, "killed" by dropping them unsettled and "stopped" by closing them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bus::{ErrorKind, Message, SubscriptionOptions, Topic};
use bus_testkit::emulator::PubSubEmulator;
use bus_testkit::fault_proxy::FaultProxy;
use bus_testkit::mosquitto::{broker_version, Mosquitto};
use serde::Serialize;

/// The topic every soak message goes to.
const TOPIC: &str = "soak/work";

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakParams {
    /// `memory`, `mqtt` or `gcp`.
    pub backend: &'static str,
    /// How long faults are injected while publishing.
    pub duration: Duration,
    /// Publishers (each its own connection).
    pub publishers: usize,
    /// Messages per second per publisher.
    pub rate: u32,
    /// Subscriptions on the topic (fan-out).
    pub subscriptions: usize,
    /// Consumers per subscription.
    pub consumers: usize,
    /// Mean time between faults.
    pub fault_every: Duration,
    /// The faults to draw from (default: all the backend can take, see the module docs).
    pub faults: Vec<Fault>,
    /// Lines added to the broker's config (Mosquitto).
    pub broker_config: Option<String>,
    /// The consumers leave once their subscriptions exist and come back only when publishing
    /// ends: everything waits in the broker while the faults happen.
    pub away: bool,
}

/// A fault the soak can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Graceful broker restart (Mosquitto).
    Restart,
    /// Every connection through the fault proxy dropped at once (MQTT, Pub/Sub).
    Cut,
    /// A consumer killed without warning (SIGKILL; memory: dropped unsettled), then started
    /// again with its client id.
    Kill,
    /// A consumer stopped gracefully (SIGTERM; memory: closed), then started again.
    Stop,
    /// The broker killed with SIGKILL (no chance to save), then started again (Mosquitto):
    /// measures what its persistence settings lose.
    KillBroker,
}

impl Fault {
    /// What `backend` can take by default.
    pub fn defaults(backend: &str) -> Vec<Fault> {
        match backend {
            "mqtt" => vec![Fault::Restart, Fault::Cut, Fault::Kill, Fault::Stop],
            "gcp" => vec![Fault::Cut, Fault::Kill, Fault::Stop],
            _ => vec![Fault::Kill, Fault::Stop],
        }
    }
}

/// Faults injected, by kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Faults {
    /// Graceful broker restarts (SIGTERM, then start again).
    pub broker_restarts: usize,
    /// Every connection through the proxy dropped at once.
    pub connection_cuts: usize,
    /// Consumers killed without warning (SIGKILL; memory: dropped unsettled).
    pub consumer_kills: usize,
    /// Consumers stopped gracefully (SIGTERM; memory: closed).
    pub consumer_stops: usize,
    /// Broker processes killed with SIGKILL.
    pub broker_kills: usize,
}

/// One subscription's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionReport {
    /// Its name.
    pub subscription: String,
    /// Distinct messages received.
    pub received: usize,
    /// Confirmed messages never received.
    pub lost: usize,
    /// Deliveries beyond the first of each message.
    pub duplicates: usize,
    /// From the publish call to the first delivery, the worst case, in milliseconds.
    pub worst_delay_ms: u64,
    /// The same, 99th percentile.
    pub p99_delay_ms: u64,
    /// Some of the lost messages (`<publisher>:<seq>:<publish time ms>`), for diagnosis.
    pub lost_sample: Vec<String>,
}

/// What a soak measured.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// The backend.
    pub backend: String,
    /// The broker and its version.
    pub broker: String,
    /// Minutes of faults.
    pub minutes: f64,
    /// Publishes confirmed.
    pub published: usize,
    /// Publish calls that failed (and were tried again).
    pub publish_errors: usize,
    /// Faults injected.
    pub faults: Faults,
    /// Per subscription.
    pub subscriptions: Vec<SubscriptionReport>,
    /// From the end of publishing until every subscription had every message, in seconds.
    pub settle_secs: f64,
    /// When each fault was injected (ms since the epoch) and what it was.
    pub fault_log: Vec<(u64, String)>,
}

impl SoakReport {
    /// Messages lost on all subscriptions.
    pub fn lost(&self) -> usize {
        self.subscriptions.iter().map(|s| s.lost).sum()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Per payload: when it first arrived (ms since the epoch) and how many times.
type Arrivals = HashMap<String, (u64, usize)>;

/// Deliveries per subscription.
#[derive(Default)]
struct Ledger {
    seen: Mutex<HashMap<String, Arrivals>>,
}

impl Ledger {
    fn record(&self, subscription: &str, payload: &str) {
        let now = now_ms();
        let mut seen = self.seen.lock().expect("ledger lock");
        let entry = seen
            .entry(subscription.to_string())
            .or_default()
            .entry(payload.to_string())
            .or_insert((now, 0));
        entry.1 += 1;
    }

    fn missing(&self, subscription: &str, published: &[String]) -> usize {
        let seen = self.seen.lock().expect("ledger lock");
        let got = seen.get(subscription);
        published
            .iter()
            .filter(|p| !got.is_some_and(|g| g.contains_key(*p)))
            .count()
    }
}

/// The broker (and proxy) a soak runs against.
enum Target {
    Memory,
    Mqtt {
        broker: Arc<Mosquitto>,
        proxy: FaultProxy,
    },
    Gcp {
        _emulator: Option<PubSubEmulator>,
        host: String,
        proxy: FaultProxy,
    },
}

impl Target {
    async fn start(backend: &str, broker_config: Option<String>) -> Result<Target, String> {
        Ok(match backend {
            "memory" => Target::Memory,
            "mqtt" => {
                let broker = Arc::new(match broker_config {
                    Some(lines) => Mosquitto::start_with(move |_| lines),
                    None => Mosquitto::start(),
                });
                let proxy =
                    FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], broker.port()))).await;
                Target::Mqtt { broker, proxy }
            }
            "gcp" => {
                let (emulator, host) = match std::env::var("PUBSUB_EMULATOR_HOST") {
                    Ok(host) => (None, host),
                    Err(_) => {
                        let emulator = PubSubEmulator::start();
                        let host = emulator.host_port();
                        (Some(emulator), host)
                    }
                };
                let address: SocketAddr = host
                    .parse()
                    .map_err(|_| format!("PUBSUB_EMULATOR_HOST={host} is not IP:PORT"))?;
                let proxy = FaultProxy::start(address).await;
                Target::Gcp {
                    _emulator: emulator,
                    host,
                    proxy,
                }
            }
            other => {
                return Err(format!(
                    "unknown backend {other:?}; use memory, mqtt or gcp"
                ))
            }
        })
    }

    fn describe(&self) -> String {
        match self {
            Target::Memory => "in-process".into(),
            Target::Mqtt { .. } => {
                let (a, b, c) = broker_version();
                format!("Mosquitto {a}.{b}.{c}")
            }
            Target::Gcp { host, .. } => format!("Pub/Sub emulator at {host}"),
        }
    }

    /// The `BUS_*` variables of a client going through the proxy, with its MQTT client id.
    fn env(&self, client_id: &str) -> Vec<(String, String)> {
        let mut vars = vec![("BUS_MQTT__CLIENT_ID".to_string(), client_id.to_string())];
        match self {
            Target::Memory => vars.push(("BUS_BACKEND".into(), "memory".into())),
            Target::Mqtt { proxy, .. } => {
                vars.push(("BUS_BACKEND".into(), "mqtt".into()));
                vars.push((
                    "BUS_MQTT__URL".into(),
                    format!("mqtt://{}", proxy.address()),
                ));
            }
            Target::Gcp { proxy, .. } => {
                vars.push(("BUS_BACKEND".into(), "gcp".into()));
                vars.push(("BUS_GCP__PROJECT".into(), "soak".into()));
                vars.push((
                    "BUS_GCP__ENDPOINT".into(),
                    format!("http://{}", proxy.address()),
                ));
            }
        }
        vars
    }

    /// A bus config for a client in this process.
    fn config(&self, client_id: &str) -> Result<bus::Config, String> {
        let mut figment = figment::Figment::new();
        for (key, value) in self.env(client_id) {
            let path = key
                .trim_start_matches("BUS_")
                .to_ascii_lowercase()
                .replace("__", ".");
            figment = figment.merge(figment::providers::Serialized::default(&path, value));
        }
        if matches!(self, Target::Memory) {
            figment = figment.merge(figment::providers::Serialized::default(
                "memory.name",
                "soak",
            ));
        }
        bus::Config::from_figment(figment).map_err(|e| e.to_string())
    }
}

/// One consumer: a child process, or (memory) a task.
enum Consumer {
    Process(Child),
    Task {
        subscription: Arc<dyn bus::Subscription>,
        task: tokio::task::JoinHandle<()>,
    },
}

struct Consumers {
    /// How this program runs a bench subcommand (`bus bench ...`).
    invocation: Vec<String>,
    target: Arc<Target>,
    ledger: Arc<Ledger>,
    slots: Vec<(String, String, Option<Consumer>)>,
    subscriber: Option<Box<dyn bus::Subscriber>>,
}

impl Consumers {
    async fn start(&mut self, index: usize) -> Result<(), String> {
        let (subscription, client_id, _) = &self.slots[index];
        let (subscription, client_id) = (subscription.clone(), client_id.clone());
        let consumer = match &*self.target {
            Target::Memory => {
                let subscriber = self.subscriber.as_ref().expect("memory subscriber");
                let topic = Topic::new(TOPIC).map_err(|e| e.to_string())?;
                let options = SubscriptionOptions::new(&subscription)
                    .map_err(|e| e.to_string())?
                    .with_ack_deadline(Duration::from_secs(10));
                let sub: Arc<dyn bus::Subscription> = Arc::from(
                    subscriber
                        .subscribe(&topic, options)
                        .await
                        .map_err(|e| e.to_string())?,
                );
                let (ledger, name, receiving) =
                    (self.ledger.clone(), subscription.clone(), sub.clone());
                let task = tokio::spawn(async move {
                    while let Ok(delivery) = receiving.receive().await {
                        ledger.record(&name, &String::from_utf8_lossy(delivery.payload()));
                        let _ = delivery.ack().await;
                    }
                });
                Consumer::Task {
                    subscription: sub,
                    task,
                }
            }
            target => {
                let mut command = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
                command
                    .args(&self.invocation)
                    .args([
                        "soak-consumer",
                        "--topic",
                        TOPIC,
                        "--subscription",
                        &subscription,
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(match std::env::var_os("BUS_SOAK_LOG_DIR") {
                        Some(dir) => std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(std::path::Path::new(&dir).join(format!("{client_id}.log")))
                            .map(Stdio::from)
                            .unwrap_or_else(|_| Stdio::inherit()),
                        None => Stdio::inherit(),
                    });
                for (key, _) in std::env::vars() {
                    if key.starts_with("BUS_") || key == "PUBSUB_EMULATOR_HOST" {
                        command.env_remove(key);
                    }
                }
                command.envs(target.env(&client_id));
                let mut child = command
                    .spawn()
                    .map_err(|e| format!("start a soak consumer: {e}"))?;
                let stdout = child.stdout.take().expect("piped stdout");
                let (ledger, ready) = (self.ledger.clone(), Arc::new(AtomicBool::new(false)));
                let ready_flag = ready.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                        match line.split_once(' ') {
                            Some((name, payload)) => ledger.record(name, payload),
                            None if line == "ready" => ready_flag.store(true, Ordering::Release),
                            None => {}
                        }
                    }
                });
                let deadline = Instant::now() + Duration::from_secs(60);
                while !ready.load(Ordering::Acquire) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Consumer::Process(child)
            }
        };
        self.slots[index].2 = Some(consumer);
        Ok(())
    }

    /// Kills (or, `graceful`, stops) consumer `index`.
    async fn stop(&mut self, index: usize, graceful: bool) {
        match self.slots[index].2.take() {
            Some(Consumer::Process(mut child)) => {
                if graceful {
                    let _ = Command::new("kill")
                        .args(["-TERM", &child.id().to_string()])
                        .status();
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            Some(Consumer::Task { subscription, task }) => {
                if graceful {
                    let _ = subscription.close().await;
                    let _ = task.await;
                } else {
                    // Unsettled deliveries come back after the ack deadline.
                    task.abort();
                    let _ = task.await;
                }
            }
            None => {}
        }
    }
}

/// Runs a soak and returns its report (the caller fails on any loss).
pub async fn soak(params: SoakParams, invocation: &[String]) -> Result<SoakReport, String> {
    for fault in &params.faults {
        let supported = match fault {
            Fault::Restart | Fault::KillBroker => params.backend == "mqtt",
            Fault::Cut => params.backend != "memory",
            Fault::Kill | Fault::Stop => true,
        };
        if !supported {
            return Err(format!(
                "the {} backend cannot take the fault {fault:?} (see `bus bench soak --help`)",
                params.backend
            ));
        }
    }
    let target = Arc::new(Target::start(params.backend, params.broker_config.clone()).await?);
    let topic = Topic::new(TOPIC).map_err(|e| e.to_string())?;
    let ledger = Arc::new(Ledger::default());
    let names: Vec<String> = (0..params.subscriptions)
        .map(|s| format!("soak-{s}"))
        .collect();
    let subscriber = match &*target {
        Target::Memory => Some(
            bus::connect(&target.config("soak-consumers")?)
                .await
                .map_err(|e| e.to_string())?
                .subscriber,
        ),
        _ => None,
    };
    let mut consumers = Consumers {
        invocation: invocation.to_vec(),
        target: target.clone(),
        ledger: ledger.clone(),
        slots: names
            .iter()
            .flat_map(|name| {
                (0..params.consumers)
                    .map(move |c| (name.clone(), format!("soak-{name}-c{c}"), None))
            })
            .collect(),
        subscriber,
    };
    for index in 0..consumers.slots.len() {
        consumers.start(index).await?;
    }
    if params.away {
        for index in 0..consumers.slots.len() {
            consumers.stop(index, true).await;
        }
    }

    // Publishers: each its own connection, at a steady rate, trying a failed publish again.
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(Mutex::new(Vec::<String>::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for p in 0..params.publishers {
        let bus = bus::connect(&target.config(&format!("soak-pub{p}"))?)
            .await
            .map_err(|e| e.to_string())?;
        let (stop, published, errors, topic) = (
            stop.clone(),
            published.clone(),
            errors.clone(),
            topic.clone(),
        );
        let pause = Duration::from_secs_f64(1.0 / f64::from(params.rate.max(1)));
        publishers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Acquire) {
                let payload = format!("{p}:{n}:{}", now_ms());
                loop {
                    match bus
                        .publisher
                        .publish(&topic, Message::new(payload.clone()))
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if e.kind() == ErrorKind::Closed => return,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
                published.lock().expect("published lock").push(payload);
                n += 1;
                tokio::time::sleep(pause).await;
            }
            let _ = bus.close().await;
        }));
    }

    // Faults at random until the time is up.
    let mut faults = Faults::default();
    let mut fault_log = Vec::new();
    let started = Instant::now();
    while started.elapsed() < params.duration {
        let jitter = rand::random_range(0.5..1.5);
        tokio::time::sleep(params.fault_every.mul_f64(jitter)).await;
        let fault = params.faults[rand::random_range(0..params.faults.len())];
        fault_log.push((now_ms(), format!("{fault:?}")));
        match fault {
            Fault::Restart => {
                if let Target::Mqtt { broker, .. } = &*target {
                    let broker = broker.clone();
                    tokio::task::spawn_blocking(move || broker.restart())
                        .await
                        .map_err(|e| e.to_string())?;
                    faults.broker_restarts += 1;
                }
            }
            Fault::KillBroker => {
                if let Target::Mqtt { broker, .. } = &*target {
                    let broker = broker.clone();
                    tokio::task::spawn_blocking(move || {
                        broker.kill();
                        broker.start_again();
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                    faults.broker_kills += 1;
                }
            }
            Fault::Cut => {
                if let Target::Mqtt { proxy, .. } | Target::Gcp { proxy, .. } = &*target {
                    proxy.cut();
                    faults.connection_cuts += 1;
                }
            }
            Fault::Kill | Fault::Stop if params.away => {}
            kind @ (Fault::Kill | Fault::Stop) => {
                let index = rand::random_range(0..consumers.slots.len());
                if let Some(entry) = fault_log.last_mut() {
                    entry.1.push_str(&format!(" {}", consumers.slots[index].1));
                }
                let graceful = kind == Fault::Stop;
                consumers.stop(index, graceful).await;
                if graceful {
                    faults.consumer_stops += 1;
                } else {
                    faults.consumer_kills += 1;
                }
                // Back after a moment, as a supervisor would restart it (same client id).
                tokio::time::sleep(Duration::from_millis(rand::random_range(200..3_000))).await;
                consumers.start(index).await?;
            }
        }
    }
    stop.store(true, Ordering::Release);
    for publisher in publishers {
        let _ = publisher.await;
    }
    let published: Vec<String> = published.lock().expect("published lock").clone();
    let publishing_ended = Instant::now();
    if params.away {
        for index in 0..consumers.slots.len() {
            consumers.start(index).await?;
        }
    }

    // Every subscription must get every message; wait while anything still arrives.
    let quiet = match params.backend {
        "gcp" => Duration::from_secs(300),
        _ => Duration::from_secs(60),
    };
    let mut last = (usize::MAX, Instant::now());
    loop {
        let missing: usize = names.iter().map(|n| ledger.missing(n, &published)).sum();
        if missing == 0 {
            break;
        }
        if missing != last.0 {
            last = (missing, Instant::now());
        } else if last.1.elapsed() > quiet {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let settle_secs = publishing_ended.elapsed().as_secs_f64();
    for index in 0..consumers.slots.len() {
        consumers.stop(index, true).await;
    }

    let seen = ledger.seen.lock().expect("ledger lock");
    let subscriptions = names
        .iter()
        .map(|name| {
            let got = seen.get(name).cloned().unwrap_or_default();
            let mut delays: Vec<u64> = published
                .iter()
                .filter_map(|payload| {
                    let sent: u64 = payload.rsplit(':').next()?.parse().ok()?;
                    got.get(payload)
                        .map(|(first, _)| first.saturating_sub(sent))
                })
                .collect();
            delays.sort_unstable();
            let p99 = delays
                .get(delays.len().saturating_sub(1) * 99 / 100)
                .copied()
                .unwrap_or(0);
            SubscriptionReport {
                subscription: name.clone(),
                received: got.len(),
                lost: published.iter().filter(|p| !got.contains_key(*p)).count(),
                lost_sample: published
                    .iter()
                    .filter(|p| !got.contains_key(*p))
                    .take(20)
                    .cloned()
                    .collect(),
                duplicates: got.values().map(|(_, n)| n - 1).sum(),
                worst_delay_ms: delays.last().copied().unwrap_or(0),
                p99_delay_ms: p99,
            }
        })
        .collect();
    Ok(SoakReport {
        backend: params.backend.to_string(),
        broker: target.describe(),
        minutes: params.duration.as_secs_f64() / 60.0,
        published: published.len(),
        publish_errors: errors.load(Ordering::Relaxed),
        faults,
        subscriptions,
        settle_secs,
        fault_log,
    })
}

/// The consumer child: receives `topic` as `subscription`, prints `<subscription> <payload>`
/// for each delivery before acking it, and stops gracefully on SIGTERM.
pub async fn consumer(topic: &str, subscription: &str) -> Result<(), String> {
    let config = bus::Config::load().map_err(|e| e.to_string())?;
    let bus = bus::connect(&config).await.map_err(|e| e.to_string())?;
    let topic = Topic::new(topic).map_err(|e| e.to_string())?;
    let options = SubscriptionOptions::new(subscription)
        .map_err(|e| e.to_string())?
        .with_ack_deadline(Duration::from_secs(10));
    let receiving = bus
        .subscriber
        .subscribe(&topic, options)
        .await
        .map_err(|e| e.to_string())?;
    println!("ready");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    loop {
        let delivery = tokio::select! {
            _ = terminate.recv() => break,
            delivery = receiving.receive() => delivery,
        };
        match delivery {
            Ok(delivery) => {
                println!(
                    "{subscription} {}",
                    String::from_utf8_lossy(delivery.payload())
                );
                let _ = delivery.ack().await;
            }
            Err(e) if e.kind() == ErrorKind::Closed => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let _ = receiving.close().await;
    let _ = bus.close().await;
    Ok(())
}

/// The report as a table.
pub fn table(report: &SoakReport) -> String {
    let f = &report.faults;
    let mut text = format!(
        "soak on {} ({}), {:.1} min: {} messages published ({} publish errors retried); faults: {} broker restarts, {} broker kills, {} connection cuts, {} consumer kills, {} consumer stops; settled {:.1} s after publishing ended\n",
        report.backend,
        report.broker,
        report.minutes,
        report.published,
        report.publish_errors,
        f.broker_restarts,
        f.broker_kills,
        f.connection_cuts,
        f.consumer_kills,
        f.consumer_stops,
        report.settle_secs
    );
    text.push_str(&format!(
        "{:<10} {:>9} {:>6} {:>11} {:>14} {:>14}\n",
        "subscr.", "received", "lost", "duplicates", "p99 delay ms", "worst delay ms"
    ));
    for s in &report.subscriptions {
        text.push_str(&format!(
            "{:<10} {:>9} {:>6} {:>11} {:>14} {:>14}\n",
            s.subscription, s.received, s.lost, s.duplicates, s.p99_delay_ms, s.worst_delay_ms
        ));
    }
    if report.lost() > 0 {
        for s in report.subscriptions.iter().filter(|s| s.lost > 0) {
            text.push_str(&format!(
                "lost on {}: {:?}\n",
                s.subscription, s.lost_sample
            ));
        }
        for (at, fault) in &report.fault_log {
            text.push_str(&format!("fault at {at}: {fault}\n"));
        }
    }
    text
}
