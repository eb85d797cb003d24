//! The durability protocol (see the `bus_mqtt` crate docs) against a real Mosquitto: consumers
//! that leave or die hand over what they held and what the broker queued for them; the last
//! one keeps the subscription; publishes wait (and then fail) rather than succeed for a
//! subscription that lost its members; hostile entries under `_bus/` are harmless.
//!
//! Each "process" here is a backend with a client id of its own, as separate services would be.

use std::collections::HashSet;
use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bus_core::{
    Backend, ErrorKind, Message, Publisher, Subscriber, Subscription, SubscriptionOptions, Topic,
};
use bus_mqtt::{MqttBackend, MqttConfig};
use bus_testkit::mosquitto::{broker_version, Mosquitto, INSTALL_HINT};
use bus_testkit::process::which;

fn config(broker: &Mosquitto, process: &str) -> MqttConfig {
    MqttConfig {
        url: broker.url(),
        client_id: format!("{process}-{}", std::process::id()),
        ..MqttConfig::default()
    }
}

async fn backend(broker: &Mosquitto, process: &str) -> MqttBackend {
    MqttBackend::connect(&config(broker, process))
        .await
        .unwrap_or_else(|e| panic!("{process}: {e}"))
}

fn fresh_topic(label: &str) -> Topic {
    Topic::new(format!(
        "durability/{label}/{}",
        uuid::Uuid::new_v4().simple()
    ))
    .unwrap()
}

async fn publish_many(
    publisher: &dyn Publisher,
    topic: &Topic,
    prefix: &str,
    n: usize,
) -> HashSet<String> {
    let mut sent = HashSet::new();
    for i in 0..n {
        let payload = format!("{prefix}{i}");
        publisher
            .publish(topic, Message::new(payload.clone()))
            .await
            .unwrap();
        sent.insert(payload);
    }
    sent
}

/// Receives (and acks) until every payload of `expected` arrived; panics naming what is
/// missing after `limit` without progress.
async fn receive_all(
    subscription: &dyn Subscription,
    expected: &HashSet<String>,
    limit: Duration,
) -> usize {
    let mut seen = HashSet::new();
    let mut deliveries = 0;
    while !expected.iter().all(|p| seen.contains(p)) {
        let delivery = match tokio::time::timeout(limit, subscription.receive()).await {
            Ok(Ok(delivery)) => delivery,
            Ok(Err(e)) => panic!("receive: {e}"),
            Err(_) => {
                let missing: Vec<_> = expected.difference(&seen).take(5).collect();
                panic!(
                    "{} of {} messages missing after {limit:?} without a delivery, e.g. {missing:?}",
                    expected.difference(&seen).count(),
                    expected.len()
                )
            }
        };
        seen.insert(String::from_utf8_lossy(delivery.payload()).into_owned());
        deliveries += 1;
        delivery.ack().await.unwrap();
    }
    deliveries - expected.len()
}

/// Receives (and acks) from any of `subscriptions` until every payload of `sent` is in `seen`
/// or `limit` passed; returns the payloads still missing.
async fn receive_from_any(
    subscriptions: &[&dyn Subscription],
    sent: &HashSet<String>,
    seen: &mut HashSet<String>,
    limit: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + limit;
    while !sent.iter().all(|p| seen.contains(p)) && Instant::now() < deadline {
        for subscription in subscriptions {
            if let Ok(Ok(delivery)) =
                tokio::time::timeout(Duration::from_millis(100), subscription.receive()).await
            {
                seen.insert(String::from_utf8_lossy(delivery.payload()).into_owned());
                let _ = delivery.ack().await;
            }
        }
    }
    sent.difference(seen).cloned().collect()
}

/// Takes what is delivered within `quiet`, acking nothing; returns the deliveries.
async fn hold(subscription: &dyn Subscription, quiet: Duration) -> Vec<bus_core::Delivery> {
    let mut held = Vec::new();
    while let Ok(Ok(delivery)) = tokio::time::timeout(quiet, subscription.receive()).await {
        held.push(delivery);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_leaves_hands_over_what_it_held_and_what_was_queued_for_it() {
    let broker = Mosquitto::shared();
    let topic = fresh_topic("leave");
    let options = SubscriptionOptions::new("workers").unwrap();
    // Small windows, so that the broker queues messages in the leaving consumer's session.
    let leaving = MqttBackend::connect(&MqttConfig {
        receive_maximum: 5,
        ..config(broker, "leaving")
    })
    .await
    .unwrap();
    let staying = backend(broker, "staying").await;
    let leaving_sub = leaving
        .subscriber()
        .subscribe(&topic, options.clone())
        .await
        .unwrap();
    let staying_sub = staying
        .subscriber()
        .subscribe(&topic, options.clone())
        .await
        .unwrap();
    let publisher = backend(broker, "leave-publisher").await.publisher();
    let mut sent = publish_many(&publisher, &topic, "before ", 60).await;

    let held = hold(&*leaving_sub, Duration::from_millis(500)).await;
    assert!(!held.is_empty(), "the leaving consumer got its share");
    leaving_sub.close().await.unwrap();
    let started = Instant::now();
    drop(held);
    sent.extend(publish_many(&publisher, &topic, "after ", 40).await);
    let duplicates = receive_all(&*staying_sub, &sent, Duration::from_secs(10)).await;
    let _ = writeln!(
        std::io::stderr(),
        "mosquitto {:?}: a leaving consumer's messages reached the other in {:?} ({duplicates} duplicates)",
        broker_version(),
        started.elapsed()
    );
    staying_sub.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_dies_hands_over_within_the_handover_delay() {
    let broker = Mosquitto::shared();
    let topic = fresh_topic("death");
    let options = SubscriptionOptions::new("workers").unwrap();
    let dying = backend(broker, "dying").await;
    let surviving = backend(broker, "surviving").await;
    let dying_sub = dying
        .subscriber()
        .subscribe(&topic, options.clone())
        .await
        .unwrap();
    let surviving_sub = surviving
        .subscriber()
        .subscribe(&topic, options.clone())
        .await
        .unwrap();
    let publisher = backend(broker, "death-publisher").await.publisher();
    let sent = publish_many(&publisher, &topic, "job ", 40).await;
    let held = hold(&*dying_sub, Duration::from_millis(500)).await;
    assert!(!held.is_empty(), "the dying consumer got its share");
    // A crash: the connection ends without DISCONNECT (no close, nothing settled).
    let died = Instant::now();
    drop(held);
    drop(dying_sub);
    drop(dying);
    let duplicates = receive_all(&*surviving_sub, &sent, Duration::from_secs(15)).await;
    let took = died.elapsed();
    let _ = writeln!(
        std::io::stderr(),
        "mosquitto {:?}: a dead consumer's messages reached the survivor in {took:?} ({duplicates} duplicates)",
        broker_version()
    );
    surviving_sub.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_consumer_to_leave_keeps_the_subscription() {
    let broker = Mosquitto::shared();
    let topic = fresh_topic("last");
    let options = SubscriptionOptions::new("keeper").unwrap();
    let first = backend(broker, "first").await;
    let subscription = first
        .subscriber()
        .subscribe(&topic, options.clone())
        .await
        .unwrap();
    subscription.close().await.unwrap();
    let publisher = backend(broker, "last-publisher").await.publisher();
    let sent = publish_many(&publisher, &topic, "while away ", 50).await;
    // Another process attaches: it takes over the departed session's messages.
    let next = backend(broker, "next").await;
    let subscription = next.subscriber().subscribe(&topic, options).await.unwrap();
    receive_all(&*subscription, &sent, Duration::from_secs(10)).await;
    subscription.close().await.unwrap();
}

/// A publish right after a restart, while the only consumer has not resubscribed yet (it waits
/// 2 s before reconnecting), is held until it is back, not discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_waits_for_a_consumer_that_is_coming_back() {
    let broker = Mosquitto::start();
    let topic = fresh_topic("barrier");
    let slow = MqttConfig {
        reconnect_min_ms: 2_000,
        reconnect_max_ms: 2_000,
        ..config(&broker, "slow-consumer")
    };
    let consumer = MqttBackend::connect(&slow).await.unwrap();
    let subscription = consumer
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("returning").unwrap())
        .await
        .unwrap();
    let publisher_config = MqttConfig {
        restore_grace_ms: 20_000,
        reconnect_max_ms: 200,
        ..config(&broker, "barrier-publisher")
    };
    let publisher = MqttBackend::connect(&publisher_config)
        .await
        .unwrap()
        .publisher();
    broker.restart();
    let id = publisher
        .publish(&topic, Message::new("right after the restart"))
        .await
        .expect("held until the subscription is back, then published");
    let delivery = tokio::time::timeout(Duration::from_secs(20), subscription.receive())
        .await
        .expect("the held message arrives")
        .unwrap();
    assert_eq!(delivery.id(), id);
    delivery.ack().await.unwrap();
}

/// When a registered subscription cannot get a member back within publish_timeout_ms, the
/// publish fails with a retryable error that says why, instead of succeeding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_that_cannot_reach_a_registered_subscription_fails_retryably() {
    let broker = Mosquitto::start();
    let topic = fresh_topic("held");
    let away = MqttConfig {
        reconnect_min_ms: 60_000,
        reconnect_max_ms: 60_000,
        ..config(&broker, "gone-for-long")
    };
    let consumer = MqttBackend::connect(&away).await.unwrap();
    let _subscription = consumer
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("unrestorable").unwrap())
        .await
        .unwrap();
    let publisher_config = MqttConfig {
        // The consumer is "live" as far as anyone knows: wait for it far longer than we may.
        restore_grace_ms: 600_000,
        publish_timeout_ms: 2_000,
        reconnect_max_ms: 200,
        ..config(&broker, "held-publisher")
    };
    let publisher = MqttBackend::connect(&publisher_config)
        .await
        .unwrap()
        .publisher();
    broker.restart();
    let err = publisher
        .publish(&topic, Message::new("nobody to take it"))
        .await
        .expect_err("no subscription member: the publish must not succeed");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(
        err.to_string().contains("unrestorable"),
        "names the subscription: {err}"
    );
}

fn mosquitto_pub(broker: &Mosquitto, args: &[&str]) {
    let path = which("mosquitto_pub").unwrap_or_else(|| {
        panic!("`mosquitto_pub` (mosquitto-clients) is not installed: {INSTALL_HINT}")
    });
    let status = Command::new(path)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port().to_string(),
            "-V",
            "mqttv5",
            "-q",
            "1",
        ])
        .args(args)
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success());
}

/// Junk and forged entries under `_bus/` from a foreign client: skipped with a log line, and a
/// forged "gone" naming a live consumer costs it a reconnect, not a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reserved_entries_are_harmless() {
    let broker = Mosquitto::shared();
    let topic = fresh_topic("hostile");
    let options = SubscriptionOptions::new("target").unwrap();
    for (at, junk) in [
        (format!("_bus/sub/target/{topic}"), "{not json".to_string()),
        (
            format!("_bus/sub/other/{topic}"),
            "\u{1b}[31mFORGED\nLINE".to_string(),
        ),
        (
            format!("_bus/slot/target/0000000000000000/{topic}"),
            "x".repeat(100_000),
        ),
        (format!("_bus/slot/target/zzzz/{topic}"), "{}".to_string()),
        (
            "_bus/mark/0000000000000000".to_string(),
            "nonce".to_string(),
        ),
        ("_bus/probe/target/x".to_string(), String::new()),
    ] {
        mosquitto_pub(broker, &["-r", "-t", &at, "-m", &junk]);
    }
    let consumer = backend(broker, "hostile-consumer").await;
    let subscription = consumer
        .subscriber()
        .subscribe(&topic, options)
        .await
        .unwrap();
    let publisher = backend(broker, "hostile-publisher").await.publisher();
    let mut sent = publish_many(&publisher, &topic, "a", 20).await;
    // A forged "gone" for the live consumer's own session: another client takes it over
    // briefly; the consumer comes back and nothing is lost.
    let victim = format!("hostile-consumer-{}-target-", std::process::id());
    let forged_id = format!("{victim}{:016x}-0", fnv(topic.as_str()));
    let forged = format!(r#"{{"v":1,"client_id":"{forged_id}","state":"gone"}}"#);
    let forged_topic = format!("_bus/slot/target/{:016x}/{topic}", fnv(&forged_id));
    let drainer = backend(broker, "hostile-drainer").await;
    let other = drainer
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("target").unwrap())
        .await
        .unwrap();
    mosquitto_pub(broker, &["-r", "-t", &forged_topic, "-m", &forged]);
    sent.extend(publish_many(&publisher, &topic, "b", 20).await);
    let mut seen = HashSet::new();
    let missing = receive_from_any(
        &[&*subscription, &*other],
        &sent,
        &mut seen,
        Duration::from_secs(20),
    )
    .await;
    assert!(missing.is_empty(), "lost {missing:?}");
    subscription.close().await.unwrap();
    other.close().await.unwrap();
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A broker whose ACL hides `_bus/#`: connecting fails with PermissionDenied naming the line
/// to add, within the connect timeout (Mosquitto 2.0 grants the subscription and delivers
/// nothing, so bus-mqtt notices its marker never comes back).
#[tokio::test]
async fn an_acl_without_the_reserved_topics_is_a_clear_error() {
    let broker = Mosquitto::start_with(|dir| {
        std::fs::write(dir.join("acl"), "topic readwrite app/#\n").unwrap();
        format!("acl_file {}/acl\n", dir.display())
    });
    let started = Instant::now();
    let err = MqttBackend::connect(&MqttConfig {
        connect_timeout_ms: 3_000,
        ..config(&broker, "acl")
    })
    .await
    .expect_err("the registry cannot be read");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.to_string().contains("topic readwrite _bus/#"),
        "names the ACL line: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// Mosquitto fires the wills of connected clients when it stops, so after a restart every
/// consumer looks gone to the others. A consumer that is slow to come back must not take over
/// (and unsubscribe) a peer that is already back while its own subscription is not in place:
/// the subscription would be left without any member, and a publish matched by another
/// subscription of the topic would succeed and be lost for this one. (Whether the slow
/// consumer's hand-over reaches the restarted broker first depends on timing: ten restarts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_not_back_after_a_restart_takes_no_peer_over() {
    let broker = Arc::new(Mosquitto::start());
    let topic = fresh_topic("slow-return");
    let options = SubscriptionOptions::new("workers").unwrap();
    let slow = MqttBackend::connect(&MqttConfig {
        reconnect_min_ms: 2_000,
        reconnect_max_ms: 2_000,
        ..config(&broker, "slow")
    })
    .await
    .unwrap();
    let quick = backend(&broker, "quick").await;
    let slow_sub = slow
        .subscriber()
        .subscribe(&topic, options.clone())
        .await
        .unwrap();
    let quick_sub = quick
        .subscriber()
        .subscribe(&topic, options.clone())
        .await
        .unwrap();
    // Another subscription of the topic, always there: a publish is matched (PUBACK success)
    // even when "workers" has no member.
    let other = backend(&broker, "other").await;
    let _other_sub = other
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("others").unwrap())
        .await
        .unwrap();
    let publisher = backend(&broker, "slow-return-publisher").await.publisher();
    let mut sent = HashSet::new();
    let mut seen = HashSet::new();
    for round in 0..10 {
        let restarting = broker.clone();
        tokio::task::spawn_blocking(move || restarting.restart())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_millis(2_500);
        let mut n = 0;
        while Instant::now() < deadline {
            let payload = format!("round {round} message {n}");
            publisher
                .publish(&topic, Message::new(payload.clone()))
                .await
                .unwrap();
            sent.insert(payload);
            n += 1;
            for subscription in [&slow_sub, &quick_sub] {
                if let Ok(Ok(delivery)) =
                    tokio::time::timeout(Duration::from_millis(10), subscription.receive()).await
                {
                    seen.insert(String::from_utf8_lossy(delivery.payload()).into_owned());
                    let _ = delivery.ack().await;
                }
            }
        }
    }
    let missing = receive_from_any(
        &[&*slow_sub, &*quick_sub],
        &sent,
        &mut seen,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        missing.is_empty(),
        "{} of {} lost: {missing:?}",
        missing.len(),
        sent.len()
    );
}

/// Mosquitto fires the wills of connected consumers when it stops, so after a restart each
/// consumer reads `gone` for its peers (often as an ordinary message the broker queued for it,
/// not a retained one) while they are on their way back. Taken at its word, a consumer drained
/// a peer that was back a moment later; two consumers could drain each other at once, both lost
/// their shares, and the subscription had no member for a moment: the soak lost 19 of 11,000
/// messages that way (a publish matched by another subscription of the topic succeeds). A
/// `gone` is acted on only if it still holds `mqtt.handover_delay_secs` later: a peer back
/// within that (here after 1 s) is not taken over, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_back_within_the_handover_delay_after_a_restart_is_not_taken_over() {
    let broker = Arc::new(Mosquitto::start());
    let topic = fresh_topic("back-in-time");
    let options = SubscriptionOptions::new("workers").unwrap();
    let quick = backend(&broker, "quick").await;
    let later = MqttBackend::connect(&MqttConfig {
        reconnect_min_ms: 1_000,
        reconnect_max_ms: 1_000,
        ..config(&broker, "later")
    })
    .await
    .unwrap();
    let subscriptions = [
        quick
            .subscriber()
            .subscribe(&topic, options.clone())
            .await
            .unwrap(),
        later
            .subscriber()
            .subscribe(&topic, options.clone())
            .await
            .unwrap(),
    ];
    let other = backend(&broker, "others").await;
    let _other_sub = other
        .subscriber()
        .subscribe(&topic, SubscriptionOptions::new("others").unwrap())
        .await
        .unwrap();
    let publisher = backend(&broker, "back-in-time-publisher").await.publisher();
    let mut sent = publish_many(&publisher, &topic, "before ", 20).await;
    let restarting = broker.clone();
    tokio::task::spawn_blocking(move || restarting.restart())
        .await
        .unwrap();
    // Every session state written from now on: `draining` means a session was taken over.
    let sub = which("mosquitto_sub").unwrap_or_else(|| {
        panic!("`mosquitto_sub` (mosquitto-clients) is not installed: {INSTALL_HINT}")
    });
    let watcher = Command::new(sub)
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(["-V", "mqttv5", "-v", "-W", "5", "-t"])
        .arg(format!("_bus/slot/workers/+/{topic}"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run mosquitto_sub");
    for round in 0..30 {
        sent.extend(publish_many(&publisher, &topic, &format!("after {round} "), 5).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let states = tokio::task::spawn_blocking(move || watcher.wait_with_output())
        .await
        .unwrap()
        .expect("mosquitto_sub output");
    let states = String::from_utf8_lossy(&states.stdout);
    assert!(
        !states.contains(r#""state":"draining""#),
        "a consumer back within the handover delay was taken over:\n{states}"
    );
    let mut seen = HashSet::new();
    let missing = receive_from_any(
        &subscriptions.iter().map(|s| &**s).collect::<Vec<_>>(),
        &sent,
        &mut seen,
        Duration::from_secs(20),
    )
    .await;
    assert!(missing.is_empty(), "lost {missing:?}");
}

/// A consumer that takes over a departed session and leaves before the hand-over finished
/// (here: right after its first delivery) gives the session back: the next consumer gets
/// everything. (Found with `bus sub --count 1`: the leaving drainer's `draining` could land
/// after its restored state, and the session's messages then waited for no one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_leaves_in_the_middle_of_a_hand_over_gives_the_session_back() {
    let broker = Mosquitto::shared();
    let topic = fresh_topic("drain-left");
    let options = SubscriptionOptions::new("workers").unwrap();
    for round in 0..5 {
        let first = backend(broker, &format!("first-{round}")).await;
        first
            .subscriber()
            .subscribe(&topic, options.clone())
            .await
            .unwrap()
            .close()
            .await
            .unwrap();
        first.close().await.unwrap();
        let producer = backend(broker, &format!("producer-{round}")).await;
        let sent = publish_many(&*producer.publisher(), &topic, &format!("r{round}-"), 3).await;

        // Takes the first one's session over and leaves at its first delivery, unsettled.
        let brief = backend(broker, &format!("brief-{round}")).await;
        let brief_sub = brief
            .subscriber()
            .subscribe(&topic, options.clone())
            .await
            .unwrap();
        let held = tokio::time::timeout(Duration::from_secs(30), brief_sub.receive())
            .await
            .expect("the brief consumer gets the queued messages")
            .unwrap();
        brief_sub.close().await.unwrap();
        drop(held);
        brief.close().await.unwrap();

        let last = backend(broker, &format!("last-{round}")).await;
        let last_sub = last
            .subscriber()
            .subscribe(&topic, options.clone())
            .await
            .unwrap();
        receive_all(&*last_sub, &sent, Duration::from_secs(30)).await;
        last_sub.close().await.unwrap();
        last.close().await.unwrap();
        producer.close().await.unwrap();
    }
}
