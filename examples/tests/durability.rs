//! What a new user does with the `consume` and `publish` examples on Mosquitto, with the
//! default configuration: a broker restart while `consume` is away, and one of two `consume`
//! instances stopping (SIGTERM) or dying (SIGKILL) for good. Nothing may be lost.

mod common;

use std::io::Write;
use std::time::Instant;

use bus_testkit::mosquitto::{broker_version, Mosquitto};
use common::{BrokerEnv, Example};

const DEMO: [&str; 5] = [
    "It works",
    "messages: 2",
    "messages: 3",
    "messages: 4",
    "messages: 5",
];

fn publish_five(env: &BrokerEnv) {
    let mut publish = Example::start("publish", &["--interval-ms", "50"], env);
    publish.wait_success();
    assert_eq!(
        publish.stdout_lines().len(),
        5,
        "publish sent five messages"
    );
}

/// Waits until `consume` printed each of the five, in any order (a hand-over delivers what the
/// departed instance held after what came on time).
fn expect_all_five(consume: &Example) {
    let deadline = Instant::now() + common::STEP_TIMEOUT;
    loop {
        let printed = consume.stdout_lines();
        if DEMO.iter().all(|line| printed.iter().any(|p| p == line)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "consume did not print all of {DEMO:?} within {:?}; it printed:\n{}",
            common::STEP_TIMEOUT,
            consume.transcript()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_broker_restart_while_consume_is_away_loses_nothing_on_mosquitto() {
    let broker = Mosquitto::start();
    let env = BrokerEnv::mosquitto(&broker);
    // consume runs once, so its subscription exists, then stops.
    let mut consume = Example::start("consume", &[], &env);
    consume.expect_line("stderr", "ready");
    consume.terminate();
    consume.wait_success();
    broker.restart();
    publish_five(&env);
    let consume = Example::start("consume", &[], &env);
    expect_all_five(&consume);
}

/// Two instances share the subscription; one leaves for good; every message published after
/// reaches the other. `kill`: SIGKILL instead of SIGTERM.
fn one_of_two_leaves(kill: bool) {
    let broker = Mosquitto::start();
    let env = BrokerEnv::mosquitto(&broker);
    let staying = Example::start(
        "consume",
        &[],
        &env.with(&[("BUS_MQTT__CLIENT_ID", "consume-a")]),
    );
    let mut leaving = Example::start(
        "consume",
        &[],
        &env.with(&[("BUS_MQTT__CLIENT_ID", "consume-b")]),
    );
    staying.expect_line("stderr", "ready");
    leaving.expect_line("stderr", "ready");
    let left = Instant::now();
    if kill {
        leaving.kill();
    } else {
        leaving.terminate();
        leaving.wait_success();
    }
    publish_five(&env);
    expect_all_five(&staying);
    let _ =
        writeln!(
        std::io::stderr(),
        "mosquitto {:?}: after consume-b was {}, consume-a had all 5 messages {:?} after it went",
        broker_version(),
        if kill { "killed (SIGKILL)" } else { "stopped (SIGTERM)" },
        left.elapsed()
    );
}

#[test]
fn a_consume_instance_that_stops_hands_its_share_over_on_mosquitto() {
    one_of_two_leaves(false);
}

#[test]
fn a_killed_consume_instance_hands_its_share_over_on_mosquitto() {
    one_of_two_leaves(true);
}
