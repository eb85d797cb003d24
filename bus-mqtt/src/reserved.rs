//! The reserved topics and sessions of bus-mqtt's durability protocol (see the crate docs):
//! their names, the retained entries kept there, and anchoring a subscription.
//!
//! Everything under `_bus/` is bus-mqtt's: bus topics start with a letter, so no user topic can
//! collide with it. Entries read from there come from the broker, so from anyone the ACL lets
//! write there: they are parsed strictly, and what does not parse is logged (escaped and cut
//! short) and skipped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus_core::{printable, Error, ErrorKind, Result, SubscriptionName, Topic};
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, LastWillProperties, PublishProperties, RetainForwardRule,
};
use rumqttc::v5::mqttbytes::QoS;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::MqttConfig;
use crate::connect::{lock, Connection, Handler, Session};

/// The prefix of every reserved topic.
pub(crate) const PREFIX: &str = "_bus/";

/// How long a probe may wait in a queue: it is only asked about once.
const PROBE_EXPIRY_SECS: u32 = 60;

/// FNV-1a: a hash that stays the same across Rust versions, for stable names.
pub(crate) fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn hex(text: &str) -> String {
    format!("{:016x}", stable_hash(text))
}

/// One subscription (a name on a topic) and the reserved names that belong to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SubscriptionKey {
    pub name: SubscriptionName,
    pub topic: Topic,
}

impl SubscriptionKey {
    pub fn new(name: SubscriptionName, topic: Topic) -> Self {
        SubscriptionKey { name, topic }
    }

    fn path(&self, kind: &str) -> String {
        format!("{PREFIX}{kind}/{}/{}", self.name, self.topic)
    }

    /// `_bus/sub/<name>/<topic>`: the registry entry (retained) that says it exists.
    pub fn registry_topic(&self) -> String {
        self.path("sub")
    }

    /// `_bus/retry/<name>/<topic>`: its redeliveries, read by its consumers only.
    pub fn retry_topic(&self) -> String {
        self.path("retry")
    }

    /// `_bus/probe/<name>/<topic>`: what publishers send to learn whether it has a member.
    pub fn probe_topic(&self) -> String {
        self.path("probe")
    }

    /// `_bus/slot/<name>/+/<topic>`: the state of every session that holds its messages.
    pub fn slot_filter(&self) -> String {
        format!("{PREFIX}slot/{}/+/{}", self.name, self.topic)
    }

    /// `_bus/slot/<name>/<hash of client id>/<topic>`: the state of one such session.
    pub fn slot_topic(&self, client_id: &str) -> String {
        format!(
            "{PREFIX}slot/{}/{}/{}",
            self.name,
            hex(client_id),
            self.topic
        )
    }

    /// What a consumer subscribes to: its share of the topic, of its retry topic and of its
    /// probe topic (last, so that a probe only matches once the others are in place), and the
    /// session states.
    pub fn consumer_filters(&self, qos: QoS) -> Vec<Filter> {
        let share = |topic: String| Filter::new(format!("$share/{}/{topic}", self.name), qos);
        vec![
            share(self.topic.to_string()),
            share(self.retry_topic()),
            share(self.probe_topic()),
            Filter::new(self.slot_filter(), QoS::AtLeastOnce),
        ]
    }

    /// What the anchor session subscribes to: plain subscriptions, which (unlike shared ones)
    /// Mosquitto restores after a restart. Retained messages of the topic are not taken in.
    pub fn anchor_filters(&self, qos: QoS) -> Vec<Filter> {
        let plain = |topic: String| {
            let mut filter = Filter::new(topic, qos);
            filter.retain_forward_rule = RetainForwardRule::Never;
            filter
        };
        vec![
            plain(self.topic.to_string()),
            plain(self.retry_topic()),
            plain(self.probe_topic()),
        ]
    }

    /// The filters a hand-over takes away from a session that was in `state`, in the order it
    /// unsubscribes them: the reverse of subscribing, so the probe filter goes first. A
    /// hand-over cut short between two UNSUBSCRIBEs must never leave a session whose probe
    /// filter still answers for the subscription while its topic filter is gone: an anchor
    /// keeps its plain subscriptions across a broker restart, and with only its probe left,
    /// publishers would take the subscription for protected while every message published
    /// until a consumer is back missed it. Found on Mosquitto 2.1.2 under restarts; the same
    /// on every version when a hand-over is cut there (`tests/faults.rs` does it on purpose).
    pub fn handover_unsubscribes(&self, state: SlotState) -> Vec<String> {
        let filters = match state {
            SlotState::Anchor => self.anchor_filters(QoS::AtLeastOnce),
            _ => self.consumer_filters(QoS::AtLeastOnce),
        };
        filters
            .into_iter()
            .rev()
            .map(|filter| filter.path)
            .collect()
    }

    /// The prefix of its consumers' client ids in a process: `<client_id>-<name>-<topic hash>`.
    pub fn slot_base(&self, client_id: &str) -> String {
        format!("{client_id}-{}-{}", self.name, hex(self.topic.as_str()))
    }

    /// The client id of its anchor session.
    pub fn anchor_client_id(&self) -> String {
        format!("bus-anchor-{}-{}", self.name, hex(self.topic.as_str()))
    }

    /// Whether `client_id` names a session of this subscription (a consumer slot or the
    /// anchor): a state entry naming any other session is not acted on.
    pub fn owns_client_id(&self, client_id: &str) -> bool {
        if client_id == self.anchor_client_id() {
            return true;
        }
        let suffix = format!("-{}-{}-", self.name, hex(self.topic.as_str()));
        match client_id.rfind(&suffix) {
            Some(at) => {
                let index = &client_id[at + suffix.len()..];
                at > 0 && !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit())
            }
            None => false,
        }
    }
}

/// `_bus/mark/<hash of client id>`: where a connection sends itself a marker to learn that
/// everything queued for it before has arrived.
pub(crate) fn mark_topic(client_id: &str) -> String {
    format!("{PREFIX}mark/{}", hex(client_id))
}

/// A registry entry: the subscription exists (a retained message at its registry topic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegistryEntry {
    pub v: u32,
    pub subscription: String,
    pub topic: String,
}

/// What a session of a subscription is doing (a retained message at its slot topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SlotState {
    /// Its consumer is connected.
    Live,
    /// Its consumer closed: what the session holds is to be handed over.
    Left,
    /// Its consumer's connection ended without a DISCONNECT (its will): a crash, a cut
    /// connection, or a broker shutdown (Mosquitto sends pending wills when it stops).
    Gone,
    /// The anchor holds the subscription's messages while no consumer was there.
    Anchor,
    /// A consumer is handing its messages over (its will puts back the state before).
    Draining,
}

/// A slot state entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SlotEntry {
    pub v: u32,
    pub client_id: String,
    pub state: SlotState,
}

impl SlotEntry {
    pub fn new(client_id: &str, state: SlotState) -> Self {
        SlotEntry {
            v: 1,
            client_id: client_id.to_string(),
            state,
        }
    }

    pub fn payload(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// A reserved topic a message arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reserved {
    Registry { key: SubscriptionKey },
    Slot { key: SubscriptionKey, hash: String },
    Probe,
    Mark,
    Retry,
    Unknown,
}

/// Classifies a reserved topic; None for a topic outside the prefix.
pub(crate) fn classify(topic: &str) -> Option<Reserved> {
    let rest = topic.strip_prefix(PREFIX)?;
    let (kind, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let key = |rest: &str| -> Option<SubscriptionKey> {
        let (name, rest) = rest.split_once('/')?;
        Some(SubscriptionKey::new(
            SubscriptionName::new(name).ok()?,
            Topic::new(rest).ok()?,
        ))
    };
    Some(match kind {
        "sub" => match key(rest) {
            Some(key) => Reserved::Registry { key },
            None => Reserved::Unknown,
        },
        "slot" => {
            let parsed = rest.split_once('/').and_then(|(name, rest)| {
                let (hash, topic) = rest.split_once('/')?;
                let valid = hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit());
                valid.then_some(())?;
                Some(Reserved::Slot {
                    key: SubscriptionKey::new(
                        SubscriptionName::new(name).ok()?,
                        Topic::new(topic).ok()?,
                    ),
                    hash: hash.to_string(),
                })
            });
            parsed.unwrap_or(Reserved::Unknown)
        }
        "probe" => Reserved::Probe,
        "mark" => Reserved::Mark,
        "retry" => Reserved::Retry,
        _ => Reserved::Unknown,
    })
}

/// Parses a slot state entry; an empty payload (a deleted entry) is None. Anything malformed,
/// or naming a session that does not belong to `key`, is logged and skipped.
pub(crate) fn parse_slot(key: &SubscriptionKey, hash: &str, payload: &[u8]) -> Option<SlotEntry> {
    if payload.is_empty() {
        return None;
    }
    match serde_json::from_slice::<SlotEntry>(payload) {
        Ok(entry)
            if entry.v == 1
                && hex(&entry.client_id) == hash
                && key.owns_client_id(&entry.client_id) =>
        {
            Some(entry)
        }
        Ok(entry) => {
            tracing::warn!(
                subscription = %key.name, topic = %key.topic,
                entry = %printable(&format!("{entry:?}")),
                "skipping a hand-over state entry that names a session of another subscription"
            );
            None
        }
        Err(e) => {
            tracing::warn!(
                subscription = %key.name, topic = %key.topic, error = %e,
                payload = %printable(&String::from_utf8_lossy(payload)),
                "skipping a malformed hand-over state entry under _bus/slot"
            );
            None
        }
    }
}

/// Parses a registry entry; an empty payload (a deleted entry) is None.
pub(crate) fn parse_registry(key: &SubscriptionKey, payload: &[u8]) -> Option<RegistryEntry> {
    if payload.is_empty() {
        return None;
    }
    match serde_json::from_slice::<RegistryEntry>(payload) {
        Ok(entry)
            if entry.v == 1
                && entry.subscription == key.name.as_str()
                && entry.topic == key.topic.as_str() =>
        {
            Some(entry)
        }
        _ => {
            tracing::warn!(
                subscription = %key.name, topic = %key.topic,
                payload = %printable(&String::from_utf8_lossy(payload)),
                "skipping a malformed subscription registry entry under _bus/sub"
            );
            None
        }
    }
}

/// The registry entry for `key`.
pub(crate) fn registry_payload(key: &SubscriptionKey) -> Bytes {
    let entry = RegistryEntry {
        v: 1,
        subscription: key.name.to_string(),
        topic: key.topic.to_string(),
    };
    Bytes::from(serde_json::to_vec(&entry).unwrap_or_default())
}

/// The properties of a probe: marked as one, and expiring unread.
pub(crate) fn probe_properties() -> PublishProperties {
    PublishProperties {
        message_expiry_interval: Some(PROBE_EXPIRY_SECS),
        user_properties: vec![(crate::PROBE_PROPERTY.to_string(), "1".to_string())],
        ..PublishProperties::default()
    }
}

/// The will that sets a session's state entry to `state` if its connection ends without a
/// DISCONNECT, `delay` seconds later (unless the session is resumed sooner).
pub(crate) fn state_will(
    key: &SubscriptionKey,
    client_id: &str,
    state: SlotState,
    delay: u32,
) -> LastWill {
    LastWill::new(
        key.slot_topic(client_id),
        SlotEntry::new(client_id, state).payload().to_vec(),
        QoS::AtLeastOnce,
        true,
        Some(LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        }),
    )
}

/// Publishes a retained entry (or deletes it, with an empty payload) and waits for the broker.
pub(crate) async fn put_retained(
    connection: &Connection,
    topic: &str,
    payload: Bytes,
    deadline: Instant,
) -> Result<()> {
    connection
        .publish(
            topic,
            QoS::AtLeastOnce,
            true,
            payload,
            PublishProperties::default(),
            deadline,
        )
        .await
        .map(|_| ())
}

/// Hears only whether a short session operation's subscriptions were accepted.
#[derive(Default)]
struct SubscribedOnce(Mutex<Option<oneshot::Sender<Result<()>>>>);

impl Handler for SubscribedOnce {
    fn on_subscribed(&self, _epoch: u64, result: Result<()>) {
        if let Some(tx) = lock(&self.0).take() {
            let _ = tx.send(result);
        }
    }
}

/// Anchors `key`: its anchor session takes plain subscriptions to the topic, the retry topic
/// and the probe topic (which survive broker restarts), the registry entry is written, and the
/// anchor's state entry says it holds messages (so that live consumers take them over). Fails
/// if another client holds the anchor session meanwhile (the caller retries).
pub(crate) async fn anchor(config: &MqttConfig, key: &SubscriptionKey) -> Result<()> {
    let client_id = key.anchor_client_id();
    let (tx, rx) = oneshot::channel();
    let handler = Arc::new(SubscribedOnce(Mutex::new(Some(tx))));
    let session = Session {
        client_id: client_id.clone(),
        clean_start: false,
        session_expiry_secs: config.session_expiry_secs,
        // Its subscriptions exist from the SUBACK on, its state entry only a round trip
        // later: should the connection die in between (a broker restart, this process
        // killed), the will says `anchor`, or the anchor would hold messages no one drains.
        will: Some(state_will(key, &client_id, SlotState::Anchor, 0)),
        subscriptions: key.anchor_filters(crate::connect::qos(config.qos)),
        reconnect: false,
        manual_acks: true,
    };
    let connection = Connection::open(config, session, handler).await?;
    let deadline = Instant::now() + Duration::from_millis(config.connect_timeout_ms);
    let result = async {
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result?,
            _ => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    crate::BACKEND,
                    format!(
                        "anchoring subscription {} on {}: no SUBACK",
                        key.name, key.topic
                    ),
                ))
            }
        }
        put_retained(
            &connection,
            &key.registry_topic(),
            registry_payload(key),
            deadline,
        )
        .await?;
        let entry = SlotEntry::new(&client_id, SlotState::Anchor).payload();
        put_retained(&connection, &key.slot_topic(&client_id), entry, deadline).await
    }
    .await;
    match result {
        Ok(()) => connection.close().await,
        // The will writes the state entry this attempt may not have written.
        Err(_) => connection.abandon(),
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SubscriptionKey {
        SubscriptionKey::new(
            SubscriptionName::new("patch-evaluation").unwrap(),
            Topic::new("autopatch/crash_detail").unwrap(),
        )
    }

    #[test]
    fn reserved_topics_parse_back() {
        let key = key();
        assert_eq!(
            classify(&key.registry_topic()),
            Some(Reserved::Registry { key: key.clone() })
        );
        let slot = key.slot_topic("svc-patch-evaluation-0123456789abcdef-0");
        match classify(&slot) {
            Some(Reserved::Slot { key: parsed, hash }) => {
                assert_eq!(parsed, key);
                assert_eq!(hash, hex("svc-patch-evaluation-0123456789abcdef-0"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(classify(&key.probe_topic()), Some(Reserved::Probe));
        assert_eq!(classify("autopatch/crash_detail"), None);
        assert_eq!(
            classify("_bus/slot/x/nothex!!!!!!!!!!!/t"),
            Some(Reserved::Unknown)
        );
        assert_eq!(classify("_bus/sub/bad name/t"), Some(Reserved::Unknown));
    }

    #[test]
    fn only_sessions_of_the_subscription_are_owned() {
        let key = key();
        let base = key.slot_base("llm-dispatch");
        assert!(key.owns_client_id(&format!("{base}-0")));
        assert!(key.owns_client_id(&format!("{base}-12")));
        assert!(key.owns_client_id(&key.anchor_client_id()));
        assert!(!key.owns_client_id(&format!("{base}-x")));
        assert!(!key.owns_client_id(&format!("{base}-")));
        assert!(!key.owns_client_id("somebody-else"));
        let other =
            SubscriptionKey::new(SubscriptionName::new("other").unwrap(), key.topic.clone());
        assert!(!other.owns_client_id(&format!("{base}-0")));
    }

    #[test]
    fn a_hand_over_lets_go_of_the_probe_before_the_topic() {
        let key = key();
        let share = format!("$share/{}/", key.name);
        for state in [SlotState::Anchor, SlotState::Left, SlotState::Gone] {
            let order = key.handover_unsubscribes(state);
            let position = |topic: &str| {
                order
                    .iter()
                    .position(|filter| filter.strip_prefix(&share).unwrap_or(filter) == topic)
                    .unwrap_or_else(|| panic!("{state:?}: {topic} not in {order:?}"))
            };
            let probe = position(&key.probe_topic());
            assert!(probe < position(key.topic.as_str()), "{state:?}: {order:?}");
            assert!(probe < position(&key.retry_topic()), "{state:?}: {order:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn classifying_and_parsing_any_entry_never_panics(
            topic in "(_bus/(sub|slot|probe|mark|retry)/)?.{0,80}",
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let key = key();
            match classify(&topic) {
                Some(Reserved::Slot { key, hash }) => { let _ = parse_slot(&key, &hash, &payload); }
                Some(Reserved::Registry { key }) => { let _ = parse_registry(&key, &payload); }
                _ => {}
            }
            let _ = parse_slot(&key, &"0".repeat(16), &payload);
            let _ = parse_registry(&key, &payload);
        }
    }

    #[test]
    fn hostile_entries_are_skipped() {
        let key = key();
        let id = format!("{}-0", key.slot_base("svc"));
        let hash = hex(&id);
        let good = SlotEntry::new(&id, SlotState::Gone);
        assert_eq!(parse_slot(&key, &hash, &good.payload()), Some(good));
        assert_eq!(parse_slot(&key, &hash, b""), None);
        for junk in [
            &b"{not json"[..],
            br#"{"v":2,"client_id":"x","state":"gone"}"#,
            br#"{"v":1,"client_id":"someone-else","state":"gone"}"#,
            br#"{"v":1,"client_id":"x","state":"exploded"}"#,
            &[0xff, 0xfe, b'\n', 0][..],
        ] {
            assert_eq!(parse_slot(&key, &hash, junk), None);
        }
        // An entry whose topic hash does not match the client id it names.
        let foreign = SlotEntry::new(&id, SlotState::Gone).payload();
        assert_eq!(parse_slot(&key, &"0".repeat(16), &foreign), None);
        assert!(parse_registry(&key, &registry_payload(&key)).is_some());
        assert!(parse_registry(&key, br#"{"v":1,"subscription":"x","topic":"y"}"#).is_none());
    }
}
