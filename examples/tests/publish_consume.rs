//! `publish` → `consume` as two processes, on Mosquitto and on the Pub/Sub emulator: `consume`
//! prints `It works` for `Hello` and the four other messages, answers `HI` on `test`, and stops
//! gracefully on SIGTERM.

mod common;

use std::time::Duration;

use bus::{SubscriptionOptions, Topic};
use bus_testkit::mosquitto::Mosquitto;
use common::{BrokerEnv, Example};

async fn publish_then_consume(env: BrokerEnv) {
    // The test listens on `test` for consume's answer.
    let bus = bus::connect(&env.config()).await.expect("test connects");
    let replies = bus
        .subscriber
        .subscribe(
            &Topic::new("test").unwrap(),
            SubscriptionOptions::new("test-observer").unwrap(),
        )
        .await
        .expect("subscribe to test");

    let mut consume = Example::start("consume", &[], &env);
    consume.expect_line("stderr", "ready");
    let mut publish = Example::start("publish", &["--interval-ms", "200"], &env);
    publish.wait_success();
    let sent = publish.stdout_lines();
    assert_eq!(
        sent,
        [
            "Send `Hello` to topic `python/mqtt`",
            "Send `messages: 2` to topic `python/mqtt`",
            "Send `messages: 3` to topic `python/mqtt`",
            "Send `messages: 4` to topic `python/mqtt`",
            "Send `messages: 5` to topic `python/mqtt`",
        ],
        "{}: publish printed",
        env.name
    );

    consume.expect_line("stdout", "It works");
    for n in 2..=5 {
        consume.expect_line("stdout", &format!("messages: {n}"));
    }
    let reply = tokio::time::timeout(Duration::from_secs(60), replies.receive())
        .await
        .expect("HI arrives on test")
        .expect("receive HI");
    assert_eq!(reply.payload().as_ref(), b"HI");
    reply.ack().await.unwrap();

    consume.terminate();
    consume.wait_success();
    assert!(
        consume.transcript().contains("consume: stopped"),
        "{}: consume stops gracefully on SIGTERM",
        env.name
    );
    // Everything was printed once or more (at least once), and nothing else.
    for line in consume.stdout_lines() {
        assert!(
            line == "It works" || line.starts_with("messages: "),
            "{}: unexpected output {line:?}",
            env.name
        );
    }
    replies.close().await.unwrap();
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_consume_on_mosquitto() {
    let broker = Mosquitto::start();
    publish_then_consume(BrokerEnv::mosquitto(&broker)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_then_consume_on_the_pubsub_emulator() {
    publish_then_consume(BrokerEnv::emulator()).await;
}
