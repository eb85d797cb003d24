//! `bus pub`, `bus sub` and `bus provision` as processes on Mosquitto and on the Pub/Sub
//! emulator; interop with paho and with Google's Python client; bad input and failures as one
//! line with exit status 2 (usage) or 1 (failure).

mod support;

use std::collections::BTreeMap;

use base64::Engine;
use bus::cloudevents::{decode_event, AttributesReader, Data};
use bus::Message;
use bus_testkit::mosquitto::Mosquitto;
use bus_testkit::process::free_port;
use support::{run_python, Env};

/// Topics of their own, so that tests on the shared broker do not meet.
struct Names {
    work: String,
    only_read: String,
}

impl Names {
    fn new() -> Names {
        let prefix = format!("cli{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        Names {
            work: format!("{prefix}/work"),
            only_read: format!("{prefix}/only-read"),
        }
    }

    /// A provisioning file: a topic only read from, and the subscription `cli`.
    fn plan(&self) -> String {
        format!(
            "[[topic]]\nname = \"{}\"\n\n[[subscription]]\ntopic = \"{}\"\nname = \"cli\"\nack_deadline_secs = 20\n",
            self.only_read, self.work
        )
    }
}

/// The message a `bus sub --json` line describes.
fn message_of(line: &serde_json::Value) -> Message {
    let payload = match (line.get("payload"), line.get("payload_base64")) {
        (Some(text), None) => text.as_str().unwrap().as_bytes().to_vec(),
        (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap(),
        _ => panic!("exactly one of payload and payload_base64: {line}"),
    };
    let attributes: BTreeMap<String, String> =
        serde_json::from_value(line["attributes"].clone()).unwrap();
    Message {
        payload: payload.into(),
        attributes,
        ordering_key: line["ordering_key"].as_str().map(str::to_string),
    }
}

/// Whether a subscription a process left gives the next process its messages promptly (the
/// `prompt_handover` capability): on Mosquitto it does; on the emulator the departed process's
/// stream stays as a phantom that takes messages for 10-120 s ("Phantom streams" in bus-gcp's
/// docs; Google's Python client meets the same), so there each step that publishes after a
/// consumer left uses a new subscription, and nothing is handed back across processes.
#[derive(Clone, Copy, PartialEq)]
enum HandedBack {
    Promptly,
    AfterMinutes,
}

/// Everything `pub` and `sub` promise, on one backend, through a provisioned subscription.
fn publish_and_subscribe(env: &Env, handed_back: HandedBack) {
    let names = Names::new();
    let work = names.work.as_str();
    let plan = env.file("plan.toml", &names.plan());
    let plan = plan.to_str().unwrap();
    env.ok(&["provision", plan]);
    // The subscription read from. On the emulator each step that publishes after a process left
    // the subscription starts on a new one (see HandedBack).
    let subscription = std::cell::RefCell::new("cli".to_string());
    let new_step = |step: &str| {
        if handed_back == HandedBack::AfterMinutes {
            let name = format!("cli-{step}");
            let plan = env.file(
                &format!("{step}.toml"),
                &format!("[[subscription]]\ntopic = \"{work}\"\nname = \"{name}\"\n"),
            );
            env.ok(&["provision", plan.to_str().unwrap()]);
            *subscription.borrow_mut() = name;
        }
    };
    let sub_in = |env: &Env, extra: &[&str]| {
        let name = subscription.borrow().clone();
        let mut args = vec!["sub", work, "--subscription", &name];
        args.extend_from_slice(extra);
        if !extra.contains(&"--timeout") {
            args.extend(["--timeout", "60"]);
        }
        env.run(&args)
    };
    let sub = |extra: &[&str]| sub_in(env, extra);

    // One message with an attribute and an ordering key; its id is printed.
    let published = env.ok(&[
        "pub",
        work,
        "hello",
        "--attr",
        "severity=high",
        "--key",
        "k1",
    ]);
    let id = published.lines()[0].clone();
    assert!(!id.is_empty());

    // Looked at without consuming, twice (left to the ack deadline, then handed back)...
    let inspections: &[&str] = match handed_back {
        HandedBack::Promptly => &["--no-ack", "--nack"],
        HandedBack::AfterMinutes => &[],
    };
    for &inspect in inspections {
        let seen = sub(&["--count", "1", "--json", inspect]);
        seen.assert_code(0);
        let line = &seen.json_lines()[0];
        assert_eq!(line["payload"], "hello", "{inspect}");
        assert_eq!(line["attributes"]["severity"], "high");
        assert_eq!(line["ordering_key"], "k1");
        assert_eq!(line["topic"], work);
        assert!(line["attempt"].as_u64().unwrap() >= 1);
        // MQTT ids are bus's own and survive; Pub/Sub's are the server's, the same too.
        assert_eq!(line["id"], id.as_str(), "{inspect}");
    }
    // ... then consumed. Delivery is at least once: on MQTT a redelivery published while a
    // joining consumer takes over the subscription's anchor session can arrive twice (see
    // bus-mqtt's docs), so every copy is consumed here, and each is this one message.
    let consumed = sub(&["--json", "--timeout", "5"]);
    consumed.assert_code(0);
    let copies = consumed.json_lines();
    assert!(!copies.is_empty(), "hello was consumed");
    for copy in &copies {
        assert_eq!(copy["id"], id.as_str());
        assert_eq!(copy["payload"], "hello");
    }

    // --count with --rate, --lines, stdin and --file.
    new_step("lines");
    let repeated = env.ok(&["pub", work, "again", "--count", "5", "--rate", "50"]);
    let ids: std::collections::BTreeSet<_> = repeated.lines().into_iter().collect();
    assert_eq!(ids.len(), 5, "five distinct ids");
    let lines = env.run_with_stdin(&["pub", work, "--lines"], b"one\ntwo\nthree\n");
    lines.assert_code(0);
    assert_eq!(lines.lines().len(), 3);
    env.run_with_stdin(&["pub", work, "-"], b"from stdin")
        .assert_code(0);
    let mut received = sub(&["--count", "9"]).lines();
    received.sort();
    assert_eq!(
        received,
        [
            "again",
            "again",
            "again",
            "again",
            "again",
            "from stdin",
            "one",
            "three",
            "two"
        ]
    );

    // Bytes that are no text: refused without --json (and handed back), base64 with it.
    let bytes = [0xff_u8, 0x00, 0x80, b'\n'];
    new_step("bytes");
    let file = env.file("payload.bin", "");
    std::fs::write(&file, bytes).unwrap();
    let binary_id = env
        .ok(&["pub", work, "--file", file.to_str().unwrap()])
        .lines()[0]
        .clone();
    if handed_back == HandedBack::Promptly {
        sub(&["--count", "1"]).assert_one_line_error(1, &["not UTF-8", "--json"]);
    }
    let as_json = sub(&["--json", "--timeout", "5"]);
    as_json.assert_code(0);
    let copies = as_json.json_lines();
    assert!(!copies.is_empty(), "the binary message was consumed");
    for copy in &copies {
        assert_eq!(copy["id"], binary_id.as_str());
        assert_eq!(&message_of(copy).payload[..], bytes);
    }

    // A CloudEvent, in the mode the config asks for, decodes as one.
    for mode in ["structured", "binary"] {
        new_step(mode);
        let env = env.with(&[("BUS_CLOUDEVENTS__MODE", mode)]);
        env.ok(&[
            "pub",
            work,
            r#"{"executable_name":"boflow1"}"#,
            "--cloudevent",
            "--type",
            "autopatch.crashdetail",
            "--source",
            "cli-test",
        ]);
        let seen = sub_in(&env, &["--count", "1", "--json"]);
        seen.assert_code(0);
        let event = decode_event(&message_of(&seen.json_lines()[0])).expect("a CloudEvent");
        assert_eq!(event.ty(), "autopatch.crashdetail", "{mode}");
        assert_eq!(event.source().to_string(), "cli-test");
        match event.data() {
            Some(Data::Json(json)) => assert_eq!(json["executable_name"], "boflow1"),
            other => panic!("{mode}: JSON data, got {other:?}"),
        }
    }

    // Nothing new is left (at most another copy of the handed-back binary message); without
    // --count a timeout is a normal end.
    let rest = sub(&["--json", "--timeout", "2"]);
    rest.assert_code(0);
    for line in rest.json_lines() {
        assert_eq!(line["id"], binary_id.as_str(), "{}", rest.stdout_text());
    }
    // With --count, too few is a failure.
    sub(&["--count", "1", "--timeout", "1"]).assert_one_line_error(1, &["received 0 of 1"]);
}

#[test]
fn pub_and_sub_on_mosquitto() {
    let broker = Mosquitto::shared();
    publish_and_subscribe(&Env::mosquitto(broker), HandedBack::Promptly);
}

#[test]
fn pub_and_sub_on_the_emulator() {
    publish_and_subscribe(&Env::emulator(), HandedBack::AfterMinutes);
}

/// `provision` is idempotent, `--dry-run` connects to nothing, and what it creates keeps
/// messages published before any consumer started; on Pub/Sub a topic only read from exists.
fn provision(env: &Env) {
    let names = Names::new();
    let (work, only_read) = (names.work.as_str(), names.only_read.as_str());
    let plan = env.file("plan.toml", &names.plan());
    let plan = plan.to_str().unwrap();
    let unreachable = env.with(&[
        (
            "BUS_MQTT__URL",
            &format!("mqtt://127.0.0.1:{}", free_port()),
        ),
        (
            "BUS_GCP__ENDPOINT",
            &format!("http://127.0.0.1:{}", free_port()),
        ),
    ]);
    let dry = unreachable.ok(&["provision", plan, "--dry-run"]);
    assert_eq!(
        dry.lines(),
        [
            format!("would create topic {only_read}"),
            format!("would create topic {work}"),
            format!("would create subscription cli on {work} (ack deadline 20 s)"),
        ]
    );
    let first = env.ok(&["provision", plan]);
    let again = env.ok(&["provision", plan]);
    assert_eq!(first.lines(), again.lines(), "idempotent");
    assert!(first.lines().contains(&format!(
        "subscription cli on {work} (ack deadline 20 s): ready"
    )));

    // Published before any consumer ever attached: kept for the provisioned subscription.
    env.ok(&["pub", work, "early", "--count", "3"]);
    // On Pub/Sub (provisioning off) this topic exists although nothing published to it yet.
    env.ok(&["pub", only_read, "fine"]);
    let early = env.run(&[
        "sub",
        work,
        "--subscription",
        "cli",
        "--count",
        "3",
        "--timeout",
        "60",
    ]);
    early.assert_code(0);
    assert_eq!(early.lines(), ["early", "early", "early"]);

    // A bad file: the key and the line.
    let bad = env.file("bad.toml", "[[topic]]\nname = \"t\"\nretention = 3\n");
    env.run(&["provision", bad.to_str().unwrap()])
        .assert_one_line_error(2, &["retention", "line 3"]);
}

#[test]
fn provision_on_mosquitto() {
    provision(&Env::mosquitto(Mosquitto::shared()));
}

#[test]
fn provision_on_the_emulator() {
    provision(&Env::emulator());
}

#[test]
fn bad_usage_is_one_line_and_exit_status_2() {
    let broker = Mosquitto::shared();
    let env = Env::mosquitto(broker);
    for (args, needles) in [
        (
            vec!["frob"],
            vec!["unrecognized subcommand 'frob'", "bus --help"],
        ),
        (
            vec!["pub", "t", "x", "--frob"],
            vec!["--frob", "bus pub --help"],
        ),
        (
            vec!["pub", "t", "x", "--attr", "severity"],
            vec!["KEY=VALUE"],
        ),
        (vec!["pub"], vec!["<TOPIC>"]),
        (vec!["pub", "t"], vec!["nothing to publish", "--file"]),
        (vec!["sub", "t"], vec!["--subscription"]),
        (vec!["pub", "bad/+/topic", "x"], vec!["wildcard"]),
        (
            vec!["sub", "t", "--subscription", "s", "--timeout", "soon"],
            vec!["seconds"],
        ),
        (
            vec!["pub", "--backend", "mqtt", "t", "x"],
            vec!["--backend goes before the subcommand"],
        ),
        (
            vec!["--backend", "memory", "pub", "t", "x"],
            vec!["memory backend lives inside one process", "--backend mqtt"],
        ),
        (
            vec![
                "--backend",
                "memory",
                "bridge",
                "--from",
                "memory",
                "--to",
                "gcp",
                "--topic",
                "t",
            ],
            vec!["memory backend lives inside one process"],
        ),
        (vec!["bridge"], vec!["no routes", "--from"]),
        (
            vec!["provision", "/no/such/plan.toml"],
            vec!["/no/such/plan.toml"],
        ),
    ] {
        env.run(&args).assert_one_line_error(2, &needles);
    }
}

#[test]
fn failures_are_one_line_and_exit_status_1() {
    // An unreachable broker.
    let nobody = format!("mqtt://127.0.0.1:{}", free_port());
    Env::default()
        .with(&[("BUS_BACKEND", "mqtt"), ("BUS_MQTT__URL", &nobody)])
        .run(&["pub", "t", "x"])
        .assert_one_line_error(1, &["could not connect", &nobody, "mqtt.url"]);
    Env::emulator_at(&format!("127.0.0.1:{}", free_port()))
        .run(&["pub", "t", "x"])
        .assert_one_line_error(1, &["no Pub/Sub answered", "emulator"]);
    // A subscription that does not exist, without provisioning.
    Env::emulator()
        .run(&[
            "sub",
            "cli/never",
            "--subscription",
            "nobody",
            "--count",
            "1",
        ])
        .assert_one_line_error(1, &["does not exist", "bus provision", "gcp.provisioning"]);
    // A bad config value: the key, the value and the allowed range.
    Env::mosquitto(Mosquitto::shared())
        .with(&[("BUS_MQTT__KEEP_ALIVE_SECS", "1")])
        .run(&["pub", "t", "x"])
        .assert_one_line_error(1, &["mqtt.keep_alive_secs = 1", "5 to 65535"]);
}

/// `bus pub` reaches a plain paho subscriber, with its attributes as user properties; what paho
/// publishes reaches `bus sub`.
#[test]
fn interop_with_paho_on_mosquitto() {
    let broker = Mosquitto::shared();
    let env = Env::mosquitto(broker);
    let topic = format!("cli/paho/{}", uuid::Uuid::new_v4().simple());
    let paho_subscriber = r#"
import json, sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
port, topic = int(sys.argv[1]), sys.argv[2]
got, ready = [], threading.Event()
def on_subscribe(client, userdata, mid, reasons, props): ready.set()
def on_message(client, userdata, msg):
    props = dict(getattr(msg.properties, "UserProperty", []) or [])
    got.append({"payload": msg.payload.decode(), "props": props})
c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.on_subscribe, c.on_message = on_subscribe, on_message
c.connect("127.0.0.1", port)
c.subscribe(topic, qos=1)
c.loop_start()
ready.wait(10)
print("subscribed", flush=True)
sys.stdin.readline()
import time
deadline = time.time() + 30
while not got and time.time() < deadline: time.sleep(0.05)
c.loop_stop()
print(json.dumps(got))
"#;
    // paho subscribes first (a plain MQTT subscriber only gets what is published after).
    let mut child = std::process::Command::new(support::python())
        .arg("-c")
        .arg(paho_subscriber)
        .args([&broker.port().to_string(), topic.as_str()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "subscribed");
    env.ok(&["pub", &topic, "to paho", "--attr", "severity=high"]);
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut got = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut got).unwrap();
    assert!(child.wait().unwrap().success());
    let got: serde_json::Value = serde_json::from_str(got.trim()).unwrap();
    assert_eq!(got[0]["payload"], "to paho", "{got}");
    assert_eq!(got[0]["props"]["severity"], "high", "{got}");

    // paho publishes to a subscription `bus provision` made.
    let plan = env.file(
        "plan.toml",
        &format!("[[subscription]]\ntopic = \"{topic}\"\nname = \"from-paho\"\n"),
    );
    env.ok(&["provision", plan.to_str().unwrap()]);
    run_python(
        &env,
        r#"
import sys
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
props = Properties(PacketTypes.PUBLISH)
props.UserProperty = ("origin", "paho")
c.publish(sys.argv[2], b"from paho", qos=1, properties=props).wait_for_publish(10)
c.loop_stop()
"#,
        &[&broker.port().to_string(), &topic],
    );
    let seen = env.run(&[
        "sub",
        &topic,
        "--subscription",
        "from-paho",
        "--count",
        "1",
        "--json",
        "--timeout",
        "60",
    ]);
    seen.assert_code(0);
    let line = &seen.json_lines()[0];
    assert_eq!(line["payload"], "from paho");
    assert_eq!(line["attributes"]["origin"], "paho");
}

/// `bus pub` reaches Google's Python client pulling the subscription `bus provision` made;
/// what Google's client publishes reaches `bus sub`.
#[test]
fn interop_with_googles_python_client_on_the_emulator() {
    let env = Env::emulator();
    let plan = env.file(
        "plan.toml",
        "[[subscription]]\ntopic = \"cli/google\"\nname = \"python\"\n\n[[subscription]]\ntopic = \"cli/google\"\nname = \"bus\"\n",
    );
    env.ok(&["provision", plan.to_str().unwrap()]);
    env.ok(&[
        "pub",
        "cli/google",
        "to python",
        "--attr",
        "severity=high",
        "--key",
        "k1",
    ]);
    // bus-gcp's names: `/` is `+s`; a subscription is `<name>++<topic>`.
    let pulled = run_python(
        &env,
        r#"
import json, os, sys
from google.cloud import pubsub_v1
project = os.environ["BUS_GCP__PROJECT"]
subscriber = pubsub_v1.SubscriberClient()
path = subscriber.subscription_path(project, "python++cli+sgoogle")
got = []
for _ in range(30):
    response = subscriber.pull(request={"subscription": path, "max_messages": 10}, timeout=10)
    for m in response.received_messages:
        got.append({"payload": m.message.data.decode(), "attributes": dict(m.message.attributes),
                    "key": m.message.ordering_key})
    if response.received_messages:
        subscriber.acknowledge(request={"subscription": path,
                                        "ack_ids": [m.ack_id for m in response.received_messages]})
        break
publisher = pubsub_v1.PublisherClient()
topic = publisher.topic_path(project, "cli+sgoogle")
publisher.publish(topic, b"from python", origin="google-client").result(timeout=30)
print(json.dumps(got))
"#,
        &[],
    );
    let pulled: serde_json::Value = serde_json::from_str(pulled.trim()).unwrap();
    assert_eq!(pulled[0]["payload"], "to python", "{pulled}");
    assert_eq!(pulled[0]["attributes"]["severity"], "high");
    assert_eq!(pulled[0]["key"], "k1");

    let seen = env.run(&[
        "sub",
        "cli/google",
        "--subscription",
        "bus",
        "--count",
        "2",
        "--json",
        "--timeout",
        "60",
    ]);
    seen.assert_code(0);
    let lines = seen.json_lines();
    let from_python = lines
        .iter()
        .find(|l| l["payload"] == "from python")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(from_python["attributes"]["origin"], "google-client");
}
