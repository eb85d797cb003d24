//! `bus sub`: attaches to a subscription and prints what arrives: the payload as a line, or one
//! JSON object per message. Each message is acked once printed, unless `--nack` or `--no-ack`
//! asks to look without consuming.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use bus::{Config, Delivery, ErrorKind, Subscription, SubscriptionOptions, Topic};
use clap::Args;
use tokio::time::Instant;

use crate::{connect, Failure, Shutdown, Stdout};

/// `bus sub` arguments.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// The topic, e.g. autopatch/crash_detail.
    topic: String,
    /// The subscription: consumers with the same name share its messages, and it keeps
    /// messages for them while none is attached.
    #[arg(long, value_name = "NAME")]
    subscription: String,
    /// Stop after this many messages.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Stop after this many seconds (with --count: fail if fewer arrived).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    timeout: Option<Duration>,
    /// One JSON object per line: payload (UTF-8 text) or payload_base64, attributes, id,
    /// attempt, ordering_key, topic.
    #[arg(long)]
    json: bool,
    /// Do not consume: hand every message back (nack) when done, for immediate redelivery.
    #[arg(long, conflicts_with = "no_ack")]
    nack: bool,
    /// Do not consume: leave every message unsettled, to be redelivered after the ack deadline.
    #[arg(long)]
    no_ack: bool,
    /// Where the subscription sends messages that failed --max-attempts times (where the
    /// backend supports dead-lettering).
    #[arg(long, value_name = "TOPIC")]
    dead_letter_topic: Option<String>,
    /// Deliveries before a message is dead-lettered (with --dead-letter-topic).
    #[arg(long, value_name = "N", requires = "dead_letter_topic", default_value_t = bus::DEFAULT_MAX_DELIVERY_ATTEMPTS)]
    max_attempts: u32,
    /// The subscription's ack deadline.
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    ack_deadline: Option<Duration>,
    /// Ask for messages with the same ordering key in publish order.
    #[arg(long)]
    ordered: bool,
}

pub(crate) fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs < 1e9 => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

impl SubArgs {
    fn options(&self) -> Result<(Topic, SubscriptionOptions), Failure> {
        let usage = |e: bus::Error| Failure::Usage(e.to_string());
        let topic = Topic::new(&self.topic).map_err(usage)?;
        let mut options = SubscriptionOptions::new(&self.subscription)
            .map_err(usage)?
            .with_ordering(self.ordered);
        if let Some(deadline) = self.ack_deadline {
            options = options.with_ack_deadline(deadline);
        }
        if let Some(dead_letter) = &self.dead_letter_topic {
            let dead_letter = Topic::new(dead_letter).map_err(usage)?;
            options = options.with_dead_letter(dead_letter, self.max_attempts);
        }
        Ok((topic, options))
    }

    /// Whether messages are consumed (acked once printed).
    fn consumes(&self) -> bool {
        !self.nack && !self.no_ack
    }
}

/// Runs `bus sub`.
pub async fn run(config: &Config, args: SubArgs, shutdown: &Shutdown) -> Result<(), Failure> {
    let (topic, options) = args.options()?;
    let backend = connect(config, "sub").await?;
    let subscriber = backend.subscriber();
    options
        .check(backend.name(), &backend.capabilities())
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let subscription = subscriber.subscribe(&topic, options).await?;
    let outcome = consume(&args, &*subscription, shutdown).await;
    let _ = subscription.close().await;
    let _ = subscriber.close().await;
    let _ = backend.close().await;
    outcome
}

async fn consume(
    args: &SubArgs,
    subscription: &dyn Subscription,
    shutdown: &Shutdown,
) -> Result<(), Failure> {
    let deadline = args.timeout.map(|timeout| Instant::now() + timeout);
    let mut stdout = Stdout::new();
    let mut received = 0u64;
    // Deliveries looked at but not consumed (--nack, --no-ack): held until the end, so that
    // each is printed once; settled (or left) when the command stops.
    let mut held: Vec<Delivery> = Vec::new();
    let mut held_ids = HashSet::new();
    let outcome = loop {
        if args.count.is_some_and(|count| received >= count) {
            break Ok(());
        }
        let delivery = tokio::select! {
            delivery = subscription.receive() => delivery,
            _ = shutdown.requested() => break Ok(()),
            _ = sleep_until(deadline) => {
                break match args.count {
                    Some(count) => Err(Failure::Failed(format!(
                        "received {received} of {count} messages within the --timeout"
                    ))),
                    None => Ok(()),
                };
            }
        };
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(e) if e.kind() == ErrorKind::Closed => break Ok(()),
            Err(e) => break Err(e.into()),
        };
        if !args.consumes() && held_ids.contains(delivery.id()) {
            // A redelivery of one already shown (its ack deadline passed while held).
            continue;
        }
        let line = match render(args.json, &delivery) {
            Ok(line) => line,
            Err(failure) => {
                let _ = delivery.nack().await;
                break Err(failure);
            }
        };
        if !stdout.line(&line) {
            let _ = delivery.nack().await;
            break Ok(());
        }
        received += 1;
        if args.consumes() {
            if let Err(e) = delivery.ack().await {
                break Err(Failure::from(e).context("acking a printed message"));
            }
        } else {
            held_ids.insert(delivery.id().to_string());
            held.push(delivery);
        }
    };
    if args.nack {
        for delivery in held {
            let id = delivery.id().to_string();
            if let Err(e) = delivery.nack().await {
                // Not fatal: a message not handed back is redelivered after its ack deadline.
                eprintln!(
                    "bus: warning: handing message {} back (nack) failed: {}",
                    bus::printable(&id),
                    crate::one_line(&e.to_string())
                );
            }
        }
    }
    outcome
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// One output line: the payload as text, or the whole delivery as JSON.
fn render(json: bool, delivery: &Delivery) -> Result<Vec<u8>, Failure> {
    let text = std::str::from_utf8(delivery.payload());
    if !json {
        return match text {
            Ok(_) => Ok(delivery.payload().to_vec()),
            Err(_) => Err(Failure::Failed(format!(
                "message {} on {} is not UTF-8 text ({} bytes), so it cannot be printed as a line; it was handed back (nack). Use --json to print payloads as base64",
                bus::printable(delivery.id()),
                delivery.topic(),
                delivery.payload().len()
            ))),
        };
    }
    let mut object = serde_json::json!({
        "topic": delivery.topic().as_str(),
        "id": delivery.id(),
        "attempt": delivery.attempt(),
        "ordering_key": delivery.ordering_key(),
        "attributes": delivery.attributes(),
    });
    match text {
        Ok(text) => object["payload"] = text.into(),
        Err(_) => {
            object["payload_base64"] = base64::engine::general_purpose::STANDARD
                .encode(delivery.payload())
                .into()
        }
    }
    Ok(object.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_positive_and_finite() {
        assert_eq!(parse_seconds("1.5").unwrap(), Duration::from_millis(1500));
        for bad in ["0", "-3", "soon", "inf", "NaN", "1e300"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }
}
