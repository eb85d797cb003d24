//! `bus pub`: publishes one message (an argument, stdin or a file), the same message many times
//! at a rate, or each line of stdin; prints each message's id once the broker confirmed it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bus::cloudevents::{event_message, Data, Event, EventBuilder, EventBuilderV10};
use bus::{Config, Message, Publisher, Topic};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines, Stdin};

use crate::{connect, Failure, Shutdown, Stdout};

/// Publishes in flight at once, so that `--count` is not one round trip per message; ids are
/// still printed in publish order.
const IN_FLIGHT: usize = 64;

/// `bus pub` arguments.
#[derive(Debug, Args)]
pub struct PubArgs {
    /// The topic, e.g. autopatch/crash_detail.
    topic: String,
    /// The payload; `-` reads it from stdin. Or use --file or --lines.
    #[arg(conflicts_with_all = ["file", "lines"])]
    message: Option<String>,
    /// Read the payload from this file (any bytes).
    #[arg(long, value_name = "PATH", conflicts_with = "lines")]
    file: Option<PathBuf>,
    /// Publish each line of stdin as one message.
    #[arg(long, conflicts_with = "count")]
    lines: bool,
    /// An attribute, KEY=VALUE (repeatable).
    #[arg(long = "attr", value_name = "KEY=VALUE", value_parser = parse_attribute)]
    attributes: Vec<(String, String)>,
    /// The ordering key.
    #[arg(long = "key", value_name = "ORDERING_KEY")]
    ordering_key: Option<String>,
    /// Publish the message this many times.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// At most this many messages per second.
    #[arg(long, value_name = "PER_SECOND", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Wrap the payload as a CloudEvent (structured or binary, as `cloudevents.mode` says).
    #[arg(long, requires = "event_type")]
    cloudevent: bool,
    /// The CloudEvent's `type` (with --cloudevent).
    #[arg(long = "type", value_name = "TYPE", requires = "cloudevent")]
    event_type: Option<String>,
    /// The CloudEvent's `source` (with --cloudevent).
    #[arg(
        long,
        value_name = "URI",
        requires = "cloudevent",
        default_value = "bus-cli"
    )]
    source: String,
    /// Print one JSON object per message ({"topic", "id"}) instead of the bare id.
    #[arg(long)]
    json: bool,
}

/// `KEY=VALUE` → (KEY, VALUE); the key must not be empty.
pub(crate) fn parse_attribute(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        Some(_) => Err(format!("{text:?} has an empty key; write KEY=VALUE")),
        None => Err(format!("{text:?} has no `=`; write KEY=VALUE")),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a positive number of messages per second"
        )),
    }
}

/// Where payloads come from.
enum Payloads {
    /// One payload, `remaining` more times.
    Repeated { payload: Vec<u8>, remaining: u64 },
    /// Each line of stdin.
    Lines(Lines<BufReader<Stdin>>),
}

impl Payloads {
    async fn open(args: &PubArgs) -> Result<Payloads, Failure> {
        let payload = match (&args.message, &args.file, args.lines) {
            (_, _, true) => return Ok(Payloads::Lines(BufReader::new(tokio::io::stdin()).lines())),
            (Some(dash), None, false) if dash == "-" => {
                let mut payload = Vec::new();
                tokio::io::stdin()
                    .read_to_end(&mut payload)
                    .await
                    .map_err(|e| Failure::Failed(format!("cannot read stdin: {e}")))?;
                payload
            }
            (Some(message), None, false) => message.clone().into_bytes(),
            (None, Some(path), false) => tokio::fs::read(path).await.map_err(|e| {
                Failure::Failed(format!(
                    "--file {}: {e}",
                    bus::printable(&path.display().to_string())
                ))
            })?,
            _ => {
                return Err(Failure::Usage(
                    "nothing to publish: give a MESSAGE, `-` to read stdin, --file PATH or --lines"
                        .to_string(),
                ))
            }
        };
        Ok(Payloads::Repeated {
            payload,
            remaining: args.count.unwrap_or(1),
        })
    }

    /// How many payloads there are, if known.
    fn total(&self) -> Option<u64> {
        match self {
            Payloads::Repeated { remaining, .. } => Some(*remaining),
            Payloads::Lines(_) => None,
        }
    }

    async fn next(&mut self) -> Result<Option<Vec<u8>>, Failure> {
        match self {
            Payloads::Repeated { payload, remaining } => {
                if *remaining == 0 {
                    return Ok(None);
                }
                *remaining -= 1;
                Ok(Some(payload.clone()))
            }
            Payloads::Lines(lines) => match lines.next_line().await {
                Ok(line) => Ok(line.map(String::into_bytes)),
                Err(e) => Err(Failure::Failed(format!("cannot read a line of stdin: {e}"))),
            },
        }
    }
}

/// Runs `bus pub`.
pub async fn run(config: &Config, args: PubArgs, shutdown: &Shutdown) -> Result<(), Failure> {
    let topic = Topic::new(&args.topic).map_err(|e| Failure::Usage(e.to_string()))?;
    let mut payloads = Payloads::open(&args).await?;
    let backend = connect(config, "pub").await?;
    let publisher: Arc<dyn Publisher> = Arc::from(backend.publisher());
    let progress = progress_bar(payloads.total());
    let mut pace = args.rate.map(|rate| {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });

    let mut stdout = Stdout::new();
    let mut published = 0u64;
    let mut failure = None;
    let mut in_flight = VecDeque::new();
    'publishing: loop {
        while in_flight.len() < IN_FLIGHT && failure.is_none() && !shutdown.is_requested() {
            let payload = match payloads.next().await {
                Ok(Some(payload)) => payload,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let message = match message(&args, config, payload) {
                Ok(message) => message,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            if let Some(pace) = pace.as_mut() {
                tokio::select! {
                    _ = pace.tick() => {}
                    _ = shutdown.requested() => break,
                }
            }
            let (publisher, topic) = (publisher.clone(), topic.clone());
            in_flight.push_back(tokio::spawn(async move {
                publisher.publish(&topic, message).await
            }));
        }
        let Some(next) = in_flight.pop_front() else {
            break;
        };
        match next.await {
            Ok(Ok(id)) => {
                published += 1;
                progress.inc(1);
                let line = if args.json {
                    serde_json::json!({"topic": topic.as_str(), "id": id}).to_string()
                } else {
                    id
                };
                if !stdout.line(line.as_bytes()) {
                    // The reader went away (`| head`): stop publishing, quietly.
                    shutdown.request();
                }
            }
            Ok(Err(e)) => {
                failure.get_or_insert(Failure::from(e));
                // What is in flight still completes; nothing new starts.
                continue 'publishing;
            }
            Err(e) => {
                failure.get_or_insert(Failure::Failed(format!("a publish task failed: {e}")));
            }
        }
    }
    progress.finish_and_clear();
    let closed = publisher.close().await;
    let _ = backend.close().await;
    if let Some(failure) = failure {
        return Err(failure.context(&format!("after {published} published")));
    }
    closed?;
    Ok(())
}

/// The message for one payload: wrapped as a CloudEvent if asked, with the attributes and
/// ordering key.
fn message(args: &PubArgs, config: &Config, payload: Vec<u8>) -> Result<Message, Failure> {
    let mut message = match &args.event_type {
        Some(event_type) if args.cloudevent => {
            let event = cloud_event(event_type, &args.source, payload)?;
            event_message(&event, &config.event_format())?
        }
        _ => Message::new(payload),
    };
    for (key, value) in &args.attributes {
        message = message.with_attribute(key.clone(), value.clone());
    }
    if let Some(key) = &args.ordering_key {
        message = message.with_ordering_key(key.clone());
    }
    Ok(message)
}

/// A CloudEvent with a fresh id: JSON data when the payload is JSON, text when it is UTF-8,
/// bytes otherwise.
fn cloud_event(event_type: &str, source: &str, payload: Vec<u8>) -> Result<Event, Failure> {
    let builder = EventBuilderV10::new()
        .id(uuid::Uuid::new_v4().to_string())
        .ty(event_type)
        .source(source);
    let builder = match serde_json::from_slice::<serde_json::Value>(&payload) {
        Ok(json) => builder.data("application/json", Data::Json(json)),
        Err(_) => match String::from_utf8(payload) {
            Ok(text) => builder.data("text/plain", Data::String(text)),
            Err(bytes) => {
                builder.data("application/octet-stream", Data::Binary(bytes.into_bytes()))
            }
        },
    };
    builder.build().map_err(|e| {
        Failure::Usage(format!(
            "not a valid CloudEvent: {e}; check --type and --source"
        ))
    })
}

/// A bar for many messages, drawn only when stderr is a terminal.
fn progress_bar(total: Option<u64>) -> ProgressBar {
    match total {
        Some(1) => ProgressBar::hidden(),
        Some(total) => {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40} {pos}/{len} published, {per_sec}, {eta} left",
            ) {
                bar.set_style(style);
            }
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {pos} published, {per_sec}")
            {
                bar.set_style(style);
            }
            bar
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_need_an_equals_sign_and_a_key() {
        assert_eq!(
            parse_attribute("severity=high").unwrap(),
            ("severity".to_string(), "high".to_string())
        );
        assert_eq!(
            parse_attribute("empty=").unwrap(),
            ("empty".to_string(), String::new())
        );
        assert_eq!(parse_attribute("a=b=c").unwrap().1, "b=c");
        assert!(parse_attribute("severity")
            .unwrap_err()
            .contains("KEY=VALUE"));
        assert!(parse_attribute("=high").unwrap_err().contains("empty key"));
    }

    #[test]
    fn rates_are_positive_numbers() {
        assert_eq!(parse_rate("2.5").unwrap(), 2.5);
        for bad in ["0", "-1", "fast", "NaN", "inf"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cloud_event_data_follows_the_payload() {
        let json = cloud_event("t", "s", br#"{"a":1}"#.to_vec()).unwrap();
        assert!(matches!(json.data(), Some(Data::Json(_))));
        let text = cloud_event("t", "s", b"hello".to_vec()).unwrap();
        assert!(matches!(text.data(), Some(Data::String(_))));
        let bytes = cloud_event("t", "s", vec![0xff, 0xfe]).unwrap();
        assert!(matches!(bytes.data(), Some(Data::Binary(_))));
    }
}
