//! `bus bridge`: carries topics from one backend to the other while both run, so that a
//! pipeline can move from MQTT to Pub/Sub one service at a time.
//!
//! For each topic of a route the bridge consumes a durable subscription on the source
//! (`bus-bridge` unless named) and publishes each message to the same topic on the
//! destination, acking the source only once the destination confirmed: a crash, a broker
//! restart or a cut connection at any point means a redelivery, never a loss (and so, rarely,
//! a duplicate: delivery stays at-least-once).
//!
//! What crosses:
//! - payload, attributes and ordering key unchanged; the source's message id as the attribute
//!   `bus-bridge-id` (the destination assigns its own id), and the source backend as
//!   `bus-bridge-origin`;
//! - CloudEvents stay CloudEvents: structured mode needs nothing (payload and `content-type`
//!   cross as they are); binary mode renames the context attributes between the bindings,
//!   bare MQTT 5 user properties ↔ Pub/Sub's `ce-` attributes;
//! - a message whose `bus-bridge-origin` is the destination is not sent back (the loop guard),
//!   so routes in both directions on one topic carry each message once.
//!
//! Messages with the same ordering key go through one lane, in the order received; the others
//! spread over `--concurrency` lanes. Ctrl-C (or SIGTERM) stops receiving and finishes what is
//! in flight; what cannot finish within [`DRAIN_TIMEOUT`] stays unacked on the source and is
//! redelivered to the next bridge.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bus::cloudevents::{MQTT_PREFIX, PUBSUB_PREFIX};
use bus::{
    Attributes, Backend, BackendKind, Config, Delivery, ErrorKind, Message, Publisher,
    Subscription, SubscriptionOptions, Topic,
};
use clap::Args;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::{Failure, Shutdown, Stdout};

/// The attribute naming the backend a bridged message came from (the loop guard).
pub const ORIGIN_ATTRIBUTE: &str = "bus-bridge-origin";
/// The attribute carrying the message's id on the backend it came from.
pub const SOURCE_ID_ATTRIBUTE: &str = "bus-bridge-id";
/// The source subscription's name unless a route names one.
pub const DEFAULT_SUBSCRIPTION: &str = "bus-bridge";
/// Lanes per topic unless configured.
pub const DEFAULT_CONCURRENCY: usize = 64;
/// How long a stop waits for what is in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The source subscription's ack deadline (at most the backend's longest): long enough that a
/// destination outage of a few seconds does not cause redeliveries of what waits for it.
const ACK_DEADLINE: Duration = Duration::from_secs(60);

/// `bus bridge` arguments; without --from/--to/--topic the routes come from `[bridge]`.
#[derive(Debug, Args)]
pub struct BridgeArgs {
    /// The backend to consume from.
    #[arg(long, value_enum, requires_all = ["to", "topics"])]
    from: Option<crate::Backend>,
    /// The backend to publish to.
    #[arg(long, value_enum, requires_all = ["from", "topics"])]
    to: Option<crate::Backend>,
    /// A topic to carry (repeatable).
    #[arg(long = "topic", value_name = "TOPIC", requires_all = ["from", "to"])]
    topics: Vec<String>,
    /// The durable subscription the bridge consumes on the source.
    #[arg(long, value_name = "NAME")]
    subscription: Option<String>,
    /// Messages carried at once per topic.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: Option<u16>,
}

/// `[bridge]` in bus.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct BridgeConfig {
    /// The source subscription of routes that do not name one.
    subscription: Option<String>,
    /// Messages carried at once per topic.
    concurrency: Option<usize>,
    /// `[[bridge.routes]]`.
    routes: Vec<RouteConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteConfig {
    from: BackendKind,
    to: BackendKind,
    topics: Vec<String>,
    subscription: Option<String>,
}

/// One checked route.
#[derive(Debug, Clone)]
struct Route {
    from: BackendKind,
    to: BackendKind,
    topics: Vec<Topic>,
    options: SubscriptionOptions,
}

/// What the bridge did, for its summary.
#[derive(Debug, Default)]
struct Tally {
    carried: AtomicU64,
    guarded: AtomicU64,
    refused: AtomicU64,
}

fn routes(config: &Config, args: &BridgeArgs) -> Result<(Vec<Route>, usize), Failure> {
    let section: BridgeConfig = config
        .section("bridge")
        .map_err(|e| Failure::Usage(crate::one_line(&e.to_string())))?;
    let concurrency = args
        .concurrency
        .map(usize::from)
        .or(section.concurrency)
        .unwrap_or(DEFAULT_CONCURRENCY);
    if concurrency == 0 {
        return Err(Failure::Usage(
            "bridge.concurrency = 0: at least one message must be carried at a time".into(),
        ));
    }
    let default_subscription = args
        .subscription
        .clone()
        .or(section.subscription)
        .unwrap_or_else(|| DEFAULT_SUBSCRIPTION.to_string());
    let configured: Vec<RouteConfig> = match (args.from, args.to) {
        (Some(from), Some(to)) => vec![RouteConfig {
            from: from.kind(),
            to: to.kind(),
            topics: args.topics.clone(),
            subscription: None,
        }],
        _ => section.routes,
    };
    if configured.is_empty() {
        return Err(Failure::Usage(
            "no routes: give --from BACKEND --to BACKEND --topic TOPIC, or [[bridge.routes]] in bus.toml".into(),
        ));
    }
    let mut routes = Vec::new();
    for (index, route) in configured.into_iter().enumerate() {
        let at = format!(
            "route {} ({} -> {})",
            index + 1,
            route.from.as_str(),
            route.to.as_str()
        );
        if route.from == route.to {
            return Err(Failure::Usage(format!(
                "{at}: a bridge carries messages between two different backends"
            )));
        }
        if route.from == BackendKind::Memory || route.to == BackendKind::Memory {
            return Err(Failure::Usage(format!(
                "{at}: the memory backend lives inside one process, so no other process can publish to or consume from it; bridge mqtt and gcp"
            )));
        }
        if route.topics.is_empty() {
            return Err(Failure::Usage(format!(
                "{at}: no topics; add --topic TOPIC"
            )));
        }
        let topics = route
            .topics
            .iter()
            .map(|topic| Topic::new(topic).map_err(|e| Failure::Usage(format!("{at}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let name = route
            .subscription
            .unwrap_or_else(|| default_subscription.clone());
        let options =
            SubscriptionOptions::new(&name).map_err(|e| Failure::Usage(format!("{at}: {e}")))?;
        routes.push(Route {
            from: route.from,
            to: route.to,
            topics,
            options,
        });
    }
    Ok((routes, concurrency))
}

/// Runs `bus bridge` until a signal, then drains.
pub async fn run(config: &Config, args: BridgeArgs, shutdown: &Shutdown) -> Result<(), Failure> {
    let (routes, concurrency) = routes(config, &args)?;
    let mut backends: BTreeMap<&'static str, Arc<dyn Backend>> = BTreeMap::new();
    for kind in routes.iter().flat_map(|route| [route.from, route.to]) {
        if !backends.contains_key(kind.as_str()) {
            let mut on = config.clone();
            on.backend = kind;
            let backend = bus::connect_backend(&on).await?;
            backends.insert(kind.as_str(), Arc::from(backend));
        }
    }
    let tally = Arc::new(Tally::default());
    let mut carriers = JoinSet::new();
    let mut subscriptions = Vec::new();
    let mut publishers: Vec<Arc<dyn Publisher>> = Vec::new();
    let mut described = Vec::new();
    let outcome = async {
        for route in &routes {
            let source = &backends[route.from.as_str()];
            let destination = &backends[route.to.as_str()];
            let capabilities = source.capabilities();
            let options = route
                .options
                .clone()
                .with_ordering(capabilities.ordering)
                .with_ack_deadline(
                    ACK_DEADLINE
                        .clamp(capabilities.min_ack_deadline, capabilities.max_ack_deadline),
                );
            let publisher: Arc<dyn Publisher> = Arc::from(destination.publisher());
            publishers.push(publisher.clone());
            let subscriber = source.subscriber();
            for topic in &route.topics {
                destination.create_topic(topic).await.or_else(|e| {
                    // Creating needs admin rights a bridge may lack; a missing topic then
                    // shows as publish errors naming it.
                    tracing::warn!(
                        "cannot make sure {topic} exists on {}: {e}",
                        route.to.as_str()
                    );
                    Ok::<_, Failure>(())
                })?;
                let subscription: Arc<dyn Subscription> =
                    Arc::from(subscriber.subscribe(topic, options.clone()).await?);
                subscriptions.push(subscription.clone());
                described.push(format!(
                    "{} -> {} {topic} (subscription {})",
                    route.from.as_str(),
                    route.to.as_str(),
                    options.name
                ));
                let lane = Lane {
                    route: route.clone(),
                    topic: topic.clone(),
                    publisher: publisher.clone(),
                    tally: tally.clone(),
                    shutdown: shutdown.clone(),
                };
                carriers.spawn(carry(subscription, lane, concurrency));
            }
        }
        Ok::<_, Failure>(())
    }
    .await;
    if outcome.is_ok() {
        Stdout::new().line(format!("bus bridge: ready: {}", described.join("; ")).as_bytes());
    }
    // Runs until a signal or until a subscription fails for good.
    let mut failure = outcome.err();
    if failure.is_none() {
        tokio::select! {
            _ = shutdown.requested() => {}
            Some(Ok(Err(e))) = carriers.join_next() => {
                failure = Some(e);
                shutdown.request();
            }
        }
    }
    shutdown.request();
    eprintln!("bus bridge: stopping: finishing what is in flight");
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(result) = carriers.join_next().await {
            if let Ok(Err(e)) = result {
                failure.get_or_insert(e);
            }
        }
    })
    .await;
    if drained.is_err() {
        carriers.abort_all();
        eprintln!(
            "bus bridge: what did not finish within {} s stays on the source, unacked, for the next bridge",
            DRAIN_TIMEOUT.as_secs()
        );
    }
    for subscription in subscriptions {
        let _ = subscription.close().await;
    }
    for publisher in publishers {
        let _ = publisher.close().await;
    }
    for backend in backends.values() {
        let _ = backend.close().await;
    }
    // Whoever read stdout may be gone by now (`bus bridge | head -1`): not worth a panic.
    Stdout::new().line(
        format!(
            "bus bridge: stopped: {} carried, {} not sent back (loop guard), {} refused by the destination",
            tally.carried.load(Ordering::Relaxed),
            tally.guarded.load(Ordering::Relaxed),
            tally.refused.load(Ordering::Relaxed)
        )
        .as_bytes(),
    );
    failure.map_or(Ok(()), Err)
}

/// What a lane needs to carry one topic of a route.
#[derive(Clone)]
struct Lane {
    route: Route,
    topic: Topic,
    publisher: Arc<dyn Publisher>,
    tally: Arc<Tally>,
    shutdown: Shutdown,
}

/// Receives from one subscription and hands each delivery to a lane: by ordering key, so that
/// one key's messages stay in order, else round robin.
async fn carry(
    subscription: Arc<dyn Subscription>,
    lane: Lane,
    concurrency: usize,
) -> Result<(), Failure> {
    let mut lanes = Vec::with_capacity(concurrency);
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (tx, mut rx) = mpsc::channel::<Delivery>(1);
        lanes.push(tx);
        let lane = lane.clone();
        workers.spawn(async move {
            while let Some(delivery) = rx.recv().await {
                lane.forward(delivery).await;
            }
        });
    }
    let mut next = 0usize;
    let mut backoff = Backoff::default();
    let outcome = loop {
        let delivery = tokio::select! {
            biased;
            _ = lane.shutdown.requested() => break Ok(()),
            delivery = subscription.receive() => delivery,
        };
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(e) if e.kind() == ErrorKind::Closed => break Ok(()),
            Err(e) if e.is_retryable() => {
                tracing::warn!("bus bridge: receiving from {}: {e}; retrying", lane.topic);
                backoff.wait(&lane.shutdown).await;
                continue;
            }
            Err(e) => break Err(Failure::from(e).context(&format!("receiving {}", lane.topic))),
        };
        backoff = Backoff::default();
        let index = match delivery.ordering_key() {
            Some(key) => {
                let mut hasher = DefaultHasher::new();
                key.hash(&mut hasher);
                hasher.finish() as usize % lanes.len()
            }
            None => {
                next = (next + 1) % lanes.len();
                next
            }
        };
        if lanes[index].send(delivery).await.is_err() {
            break Err(Failure::Failed("a bridge lane stopped".into()));
        }
    };
    // Closing the lanes lets each finish what it holds.
    drop(lanes);
    while workers.join_next().await.is_some() {}
    outcome
}

impl Lane {
    /// Publishes one delivery to the destination and settles it on the source: ack once the
    /// destination confirmed; retry while the destination is unavailable; nack what it
    /// refuses, so that the source redelivers (or dead-letters) it.
    async fn forward(&self, delivery: Delivery) {
        let to = self.route.to.as_str();
        if delivery
            .attributes()
            .get(ORIGIN_ATTRIBUTE)
            .map(String::as_str)
            == Some(to)
        {
            // It came from the destination: sending it back would loop.
            self.tally.guarded.fetch_add(1, Ordering::Relaxed);
            settle(delivery.ack().await, "ack");
            return;
        }
        let message = translate(
            delivery.message().clone(),
            self.route.from,
            self.route.to,
            delivery.id(),
        );
        let mut backoff = Backoff::default();
        loop {
            match self.publisher.publish(&self.topic, message.clone()).await {
                Ok(_) => {
                    self.tally.carried.fetch_add(1, Ordering::Relaxed);
                    settle(delivery.ack().await, "ack");
                    return;
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(
                        "bus bridge: publishing {} to {to}: {e}; retrying",
                        self.topic
                    );
                    // Retried while stopping too, within the drain timeout.
                    tokio::time::sleep(backoff.next()).await;
                }
                Err(e) => {
                    eprintln!(
                        "bus bridge: {to} refused message {} on {}: {}; handed back to {} (nack)",
                        bus::printable(delivery.id()),
                        self.topic,
                        bus::printable(&e.to_string()),
                        self.route.from.as_str()
                    );
                    self.tally.refused.fetch_add(1, Ordering::Relaxed);
                    settle(delivery.nack().await, "nack");
                    // The source redelivers at once: do not spin on a message that cannot go.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return;
                }
            }
        }
    }
}

/// A failed ack or nack means a redelivery, never a loss; it is logged.
fn settle(result: bus::Result<()>, what: &str) {
    if let Err(e) = result {
        tracing::warn!(
            "bus bridge: {what} on the source failed ({e}); the message will be delivered again"
        );
    }
}

/// The message as it goes to the destination: origin and source id added, binary-mode
/// CloudEvents attributes renamed for the destination's binding.
fn translate(mut message: Message, from: BackendKind, to: BackendKind, id: &str) -> Message {
    message.attributes = rename_event_attributes(message.attributes, prefix(from), prefix(to));
    message
        .attributes
        .entry(ORIGIN_ATTRIBUTE.to_string())
        .or_insert_with(|| from.as_str().to_string());
    message
        .attributes
        .entry(SOURCE_ID_ATTRIBUTE.to_string())
        .or_insert_with(|| id.to_string());
    message
}

/// The attribute prefix of the CloudEvents binding a backend speaks.
fn prefix(kind: BackendKind) -> &'static str {
    match kind {
        BackendKind::Mqtt => MQTT_PREFIX,
        _ => PUBSUB_PREFIX,
    }
}

/// A binary-mode event's context attributes (named `{from}name`) renamed to `{to}name`; other
/// attributes, and messages that are no binary-mode event, are left alone.
fn rename_event_attributes(attributes: Attributes, from: &str, to: &str) -> Attributes {
    if from == to || !attributes.contains_key(&format!("{from}specversion")) {
        return attributes;
    }
    let mut renamed = Attributes::new();
    let mut others = Vec::new();
    for (key, value) in attributes {
        match key
            .strip_prefix(from)
            .filter(|name| is_context_attribute(name))
        {
            Some(name) => {
                renamed.insert(format!("{to}{name}"), value);
            }
            None => others.push((key, value)),
        }
    }
    for (key, value) in others {
        // On a clash the event's attribute wins: the event must stay valid.
        renamed.entry(key).or_insert(value);
    }
    renamed
}

/// CloudEvents context attribute names: lower-case ASCII letters and digits.
fn is_context_attribute(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Exponential backoff, 100 ms doubling up to 5 s.
#[derive(Debug)]
struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        wait
    }

    async fn wait(&mut self, shutdown: &Shutdown) {
        let wait = self.next();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.requested() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use bus::cloudevents::{decode_event, event_message, AttributesReader, EventBuilder};
    use bus::cloudevents::{EventBuilderV10, EventFormat};

    use super::*;

    fn event() -> bus::cloudevents::Event {
        EventBuilderV10::new()
            .id("e-1")
            .source("autopatch.fuzzing-service")
            .ty("autopatch.crashdetail")
            .extension(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .data(
                "application/json",
                serde_json::json!({"executable_name": "boflow1"}),
            )
            .build()
            .unwrap()
    }

    #[test]
    fn binary_events_change_binding_both_ways() {
        let on_mqtt = event_message(&event(), &EventFormat::binary(MQTT_PREFIX))
            .unwrap()
            .with_attribute("severity-level", "high")
            .with_ordering_key("boflow1");
        let on_gcp = translate(on_mqtt.clone(), BackendKind::Mqtt, BackendKind::Gcp, "m-1");
        assert_eq!(on_gcp.attributes["ce-specversion"], "1.0");
        assert_eq!(on_gcp.attributes["ce-type"], "autopatch.crashdetail");
        assert_eq!(on_gcp.attributes["ce-traceparent"].len(), 55);
        assert!(!on_gcp.attributes.contains_key("specversion"));
        assert_eq!(on_gcp.attributes["content-type"], "application/json");
        assert_eq!(on_gcp.attributes["severity-level"], "high");
        assert_eq!(on_gcp.attributes[ORIGIN_ATTRIBUTE], "mqtt");
        assert_eq!(on_gcp.attributes[SOURCE_ID_ATTRIBUTE], "m-1");
        assert_eq!(on_gcp.ordering_key.as_deref(), Some("boflow1"));
        assert_eq!(on_gcp.payload, on_mqtt.payload);
        let decoded = decode_event(&on_gcp).unwrap();
        assert_eq!(decoded.id(), "e-1");
        assert_eq!(decoded.ty(), "autopatch.crashdetail");

        let back = translate(on_gcp, BackendKind::Gcp, BackendKind::Mqtt, "g-1");
        assert_eq!(back.attributes["specversion"], "1.0");
        assert!(!back.attributes.contains_key("ce-specversion"));
        assert_eq!(
            back.attributes[ORIGIN_ATTRIBUTE], "mqtt",
            "the first origin is kept"
        );
        assert_eq!(back.attributes[SOURCE_ID_ATTRIBUTE], "m-1");
        assert_eq!(decode_event(&back).unwrap().id(), "e-1");
    }

    #[test]
    fn structured_events_and_plain_messages_cross_unchanged() {
        let structured = event_message(&event(), &EventFormat::structured()).unwrap();
        let crossed = translate(
            structured.clone(),
            BackendKind::Gcp,
            BackendKind::Mqtt,
            "g-2",
        );
        assert_eq!(crossed.payload, structured.payload);
        assert_eq!(
            crossed.attributes["content-type"],
            "application/cloudevents+json"
        );
        assert_eq!(decode_event(&crossed).unwrap().id(), "e-1");

        // Lower-case attributes of a message that is no event keep their names.
        let plain = Message::new("x").with_attribute("severity", "high");
        let crossed = translate(plain, BackendKind::Mqtt, BackendKind::Gcp, "m-2");
        assert_eq!(crossed.attributes["severity"], "high");
        assert!(!crossed.attributes.contains_key("ce-severity"));
    }

    #[test]
    fn routes_refuse_memory_and_same_backend() {
        let config = Config::default();
        let args = |from, to| BridgeArgs {
            from: Some(from),
            to: Some(to),
            topics: vec!["t".into()],
            subscription: None,
            concurrency: None,
        };
        use crate::Backend::*;
        for (from, to, needle) in [
            (Memory, Gcp, "memory backend lives inside one process"),
            (Mqtt, Memory, "memory backend lives inside one process"),
            (Mqtt, Mqtt, "two different backends"),
        ] {
            match routes(&config, &args(from, to)) {
                Err(Failure::Usage(message)) => assert!(message.contains(needle), "{message}"),
                other => panic!("{from:?} -> {to:?}: {other:?}"),
            }
        }
        let (routes, concurrency) = routes(&config, &args(Mqtt, Gcp)).unwrap();
        assert_eq!(concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(routes[0].options.name.as_str(), DEFAULT_SUBSCRIPTION);
    }
}
