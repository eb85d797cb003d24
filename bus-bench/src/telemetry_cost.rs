//! `bus bench telemetry`: what spans, metrics and OTLP export cost bus on MQTT, each mode in a
//! process of its own (a `tracing` subscriber and a `metrics` recorder are process-wide).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bus_testkit::mosquitto::Mosquitto;

use crate::clients::{self, Broker};
use crate::measure::{median_and_spread, BenchResult, Params};

/// What a run has installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TelemetryMode {
    /// bus without its telemetry layer.
    Bare,
    /// The layer, with no subscriber and no recorder (a library user who set up nothing).
    Off,
    /// Spans made and handed to a `tracing` subscriber that keeps nothing (the registry alone):
    /// what bus's own span calls cost, whatever records them.
    Noop,
    /// `bus::telemetry::init`: spans recorded by the OpenTelemetry SDK (no exporter) and
    /// metrics kept by the Prometheus recorder.
    On,
    /// As `on`, with spans exported over OTLP/HTTP to a local sink.
    Otlp,
    /// As `otlp`, sampling one trace in a hundred the standard way
    /// (`OTEL_TRACES_SAMPLER=parentbased_traceidratio`, `OTEL_TRACES_SAMPLER_ARG=0.01`).
    Sampled,
}

/// The ratio of traces the `sampled` mode keeps.
const SAMPLED_RATIO: &str = "0.01";

impl TelemetryMode {
    fn name(self) -> &'static str {
        match self {
            TelemetryMode::Bare => "bare",
            TelemetryMode::Off => "off",
            TelemetryMode::Noop => "noop",
            TelemetryMode::On => "on",
            TelemetryMode::Otlp => "otlp",
            TelemetryMode::Sampled => "sampled",
        }
    }
}

const MODES: [TelemetryMode; 6] = [
    TelemetryMode::Bare,
    TelemetryMode::Off,
    TelemetryMode::Noop,
    TelemetryMode::On,
    TelemetryMode::Otlp,
    TelemetryMode::Sampled,
];

/// One run in this process (the child's side).
pub async fn run(mode: TelemetryMode, port: u16, params: &Params) -> Result<BenchResult, String> {
    let _telemetry = match mode {
        TelemetryMode::On | TelemetryMode::Otlp | TelemetryMode::Sampled => {
            let config = bus::telemetry::TelemetryConfig {
                prometheus: Some(([127, 0, 0, 1], 0).into()),
                ..Default::default()
            };
            Some(bus::telemetry::init("bench", &config).map_err(|e| e.to_string())?)
        }
        TelemetryMode::Noop => {
            use tracing_subscriber::util::SubscriberInitExt;
            tracing_subscriber::registry()
                .try_init()
                .map_err(|e| e.to_string())?;
            None
        }
        TelemetryMode::Bare | TelemetryMode::Off => None,
    };
    let broker = Broker::Mqtt { port };
    Ok(match mode {
        TelemetryMode::Bare => clients::bus_without_telemetry(&broker, params).await,
        _ => clients::bus(&broker, params).await,
    })
}

/// CPU seconds of a process (`None`: this one) so far, and of its children it waited for.
pub(crate) fn cpu_seconds(pid: Option<u32>) -> Result<(f64, f64), String> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let stat = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    stat_cpu(&stat).ok_or_else(|| format!("{path}: unexpected contents"))
}

/// The name of the sink's threads.
pub(crate) const SINK_THREAD: &str = "otlp-sink";

/// CPU seconds of this process's live threads so far, leaving out the sink's.
pub(crate) fn cpu_seconds_without_sink() -> Result<f64, String> {
    let tasks =
        std::fs::read_dir("/proc/self/task").map_err(|e| format!("/proc/self/task: {e}"))?;
    let mut total = 0.0;
    for task in tasks.map_while(Result::ok) {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() == SINK_THREAD {
            continue;
        }
        // A thread that ended since the listing has nothing left to count.
        if let Ok(stat) = std::fs::read_to_string(path.join("stat")) {
            total += stat_cpu(&stat).map_or(0.0, |(own, _)| own);
        }
    }
    Ok(total)
}

/// User and system CPU seconds, of the task and of its waited-for children, from a
/// `/proc/.../stat` line.
fn stat_cpu(stat: &str) -> Option<(f64, f64)> {
    // The fields after the command name (which may hold spaces), from the state (field 3) on:
    // utime, stime, cutime, cstime are fields 14 to 17, in clock ticks of 1/100 s on Linux.
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
        })
        .into_iter()
        .flatten()
        .collect();
    match fields.get(10..14) {
        Some([utime, stime, cutime, cstime]) => {
            Some(((utime + stime) / 100.0, (cutime + cstime) / 100.0))
        }
        _ => None,
    }
}

/// An OTLP/HTTP endpoint that accepts everything: counts requests and body bytes.
pub(crate) struct Sink {
    pub(crate) address: String,
    requests: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Sink {
    /// Requests taken so far.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Body bytes taken so far.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn start() -> Result<Sink, String> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        let address = listener
            .local_addr()
            .map_err(|e| e.to_string())?
            .to_string();
        let (requests, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let counters = (requests.clone(), bytes.clone());
        let named = || std::thread::Builder::new().name(SINK_THREAD.to_string());
        named()
            .spawn(move || {
                for stream in listener.incoming().map_while(Result::ok) {
                    let counters = counters.clone();
                    if let Err(e) = named().spawn(move || serve(stream, &counters.0, &counters.1)) {
                        eprintln!("the OTLP sink could not take a connection: {e}");
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(Sink {
            address,
            requests,
            bytes,
        })
    }
}

/// Answers HTTP/1.1 requests on one connection with 200 and an empty body until it closes.
fn serve(stream: std::net::TcpStream, requests: &AtomicU64, bytes: &AtomicU64) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        requests.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(length as u64, Ordering::Relaxed);
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn child(
    program: &std::path::Path,
    mode: TelemetryMode,
    port: u16,
    sink: &Sink,
    params: &Params,
) -> Result<BenchResult, String> {
    let mut command = std::process::Command::new(program);
    command
        .args(["bench", "telemetry-run", "--mode", mode.name()])
        .args(["--port", &port.to_string()])
        .args(["--messages", &params.messages.to_string()])
        .args(["--payload", &params.payload.to_string()])
        .args(["--publishers", &params.publishers.to_string()])
        .stderr(std::process::Stdio::inherit());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")) {
        command.env_remove(key);
    }
    if matches!(mode, TelemetryMode::Otlp | TelemetryMode::Sampled) {
        command.env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", sink.address),
        );
    }
    if mode == TelemetryMode::Sampled {
        command
            .env("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
            .env("OTEL_TRACES_SAMPLER_ARG", SAMPLED_RATIO);
    }
    let output = command.output().map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("{} run printed no result: {stdout}", mode.name()))?;
    serde_json::from_str(line).map_err(|e| format!("{} run: {e}: {line}", mode.name()))
}

/// The parent's side: one Mosquitto, one sink, `rounds` rounds of the modes in a
/// rotating order.
pub async fn rounds(
    rounds: usize,
    messages: usize,
    payload: usize,
    publishers: usize,
) -> Result<(), String> {
    let program = std::env::current_exe().map_err(|e| e.to_string())?;
    let mosquitto = Mosquitto::start();
    let sink = Sink::start()?;
    let params = Params::new(messages, payload, publishers);
    let mut warm_up = params.clone();
    warm_up.messages = (messages / 10).max(1);
    for mode in MODES {
        child(&program, mode, mosquitto.port(), &sink, &warm_up)?;
    }
    let mut rates: [Vec<f64>; MODES.len()] = Default::default();
    let mut ratios: [Vec<f64>; MODES.len() - 1] = Default::default();
    let mut client_cpus: [Vec<f64>; MODES.len()] = Default::default();
    let mut broker_cpus: [Vec<f64>; MODES.len()] = Default::default();
    for round in 0..rounds.max(1) {
        let mut this_round = [0.0; MODES.len()];
        for step in 0..MODES.len() {
            let which = (round + step) % MODES.len();
            let mode = MODES[which];
            let client_before = cpu_seconds(None)?.1;
            let broker_before = broker_cpu(&mosquitto)?;
            let result = child(&program, mode, mosquitto.port(), &sink, &params)?;
            let client_cpu = (cpu_seconds(None)?.1 - client_before) / messages as f64 * 1e6;
            let broker_cpu = (broker_cpu(&mosquitto)? - broker_before) / messages as f64 * 1e6;
            client_cpus[which].push(client_cpu);
            broker_cpus[which].push(broker_cpu);
            if result.lost > 0 {
                return Err(format!(
                    "{}: {} of {messages} messages lost",
                    mode.name(),
                    result.lost
                ));
            }
            println!(
                "round {}: {:<7} {:>9.0} msg/s end to end, p50 {:>7} us, p99 {:>8} us, CPU per message: client {client_cpu:.1} us, broker {broker_cpu:.1} us",
                round + 1,
                mode.name(),
                result.e2e_msgs_per_s,
                result.p50_us,
                result.p99_us
            );
            this_round[which] = result.e2e_msgs_per_s;
            rates[which].push(result.e2e_msgs_per_s);
        }
        // off against bare, every other mode against off.
        ratios[0].push(this_round[1] / this_round[0]);
        for (which, ratio) in ratios.iter_mut().enumerate().skip(1) {
            ratio.push(this_round[which + 1] / this_round[1]);
        }
    }
    println!();
    for (which, mode) in MODES.iter().enumerate() {
        let (median, low, high) = median_and_spread(rates[which].clone());
        let (client, client_low, client_high) = median_and_spread(client_cpus[which].clone());
        let (broker, ..) = median_and_spread(broker_cpus[which].clone());
        println!(
            "{:<7} median {median:>9.0} msg/s (min {low:.0}, max {high:.0}); CPU per message: client {client:.1} us ({client_low:.1}-{client_high:.1}), broker {broker:.1} us",
            mode.name()
        );
    }
    for (which, ratios) in ratios.into_iter().enumerate() {
        let name = match which {
            0 => "off / bare".to_string(),
            _ => format!("{} / off", MODES[which + 1].name()),
        };
        let (median, low, high) = median_and_spread(ratios);
        println!("{name:<13} per round: median {median:.3} (min {low:.3}, max {high:.3})");
    }
    println!(
        "{} rounds of {messages} messages of {payload} B, MQTT QoS 1, {publishers} in flight; sampled keeps {SAMPLED_RATIO} of traces; the OTLP sink took {} requests, {} bytes",
        rounds.max(1),
        sink.requests(),
        sink.bytes()
    );
    Ok(())
}

/// The broker's CPU seconds so far.
fn broker_cpu(mosquitto: &Mosquitto) -> Result<f64, String> {
    let pid = mosquitto
        .pid()
        .ok_or_else(|| "the benchmark's Mosquitto is not running".to_string())?;
    Ok(cpu_seconds(Some(pid))?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_are_read_past_a_command_name_with_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime ...
        let stat = "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 120 0 0 0 250 50 700 100 20 0 3";
        assert_eq!(stat_cpu(stat), Some((3.0, 8.0)));
        assert_eq!(stat_cpu("4242 (short) S 1"), None);
    }

    #[test]
    fn this_process_has_a_cpu_time() {
        let (own, children) = cpu_seconds(None).expect("/proc/self/stat");
        assert!(own >= 0.0 && children >= 0.0);
        assert!(cpu_seconds_without_sink().expect("/proc/self/task") >= 0.0);
    }
}
