//! The clients measured: bus on any backend, and each backend's raw client doing the same work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bus::{Message, Publisher, SubscriptionOptions, Topic};
use figment::providers::Serialized;
use figment::Figment;

use crate::measure::{stamp, wait_until, BenchResult, Params, Tracker};

/// Where the broker under test is.
#[derive(Debug, Clone)]
pub enum Broker {
    /// The in-process broker.
    Memory,
    /// Mosquitto on 127.0.0.1.
    Mqtt {
        /// Its port.
        port: u16,
    },
    /// The Pub/Sub emulator.
    Gcp {
        /// `HOST:PORT`.
        host: String,
    },
}

impl Broker {
    /// The backend's name in results.
    pub fn backend(&self) -> &'static str {
        match self {
            Broker::Memory => "memory",
            Broker::Mqtt { .. } => "mqtt",
            Broker::Gcp { .. } => "gcp",
        }
    }

    /// A bus config for this broker.
    pub fn bus_config(&self, params: &Params, run: &str) -> bus::Config {
        let figment = match self {
            Broker::Memory => Figment::new()
                .merge(Serialized::default("backend", "memory"))
                .merge(Serialized::default("memory.name", format!("bench-{run}"))),
            Broker::Mqtt { port } => Figment::new()
                .merge(Serialized::default("backend", "mqtt"))
                .merge(Serialized::default(
                    "mqtt.url",
                    format!("mqtt://127.0.0.1:{port}"),
                ))
                .merge(Serialized::default(
                    "mqtt.client_id",
                    format!("bench-{run}"),
                ))
                .merge(Serialized::default("mqtt.qos", params.qos))
                // At a window of W, bus may keep W publishes unconfirmed, as the raw client
                // does (bus's default bounds it at 1,024).
                .merge(Serialized::default(
                    "mqtt.max_in_flight_publishes",
                    params.publishers.clamp(1, usize::from(u16::MAX)),
                )),
            Broker::Gcp { host } => Figment::new()
                .merge(Serialized::default("backend", "gcp"))
                .merge(Serialized::default("gcp.project", "bench"))
                .merge(Serialized::default(
                    "gcp.endpoint",
                    format!("http://{host}"),
                ))
                .merge(Serialized::default("gcp.streams", params.streams)),
        };
        // BUS_* variables (e.g. BUS_GCP__PUBLISH_BATCH_DELAY_MS) tune the bus side.
        let figment = figment.merge(
            figment::providers::Env::prefixed("BUS_")
                .split("__")
                .filter(|key| !key.as_str().to_ascii_lowercase().starts_with("test_")),
        );
        bus::Config::from_figment(figment).expect("the bench's own config is valid")
    }
}

fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Publishers share the sequence numbers `0..messages` round-robin.
fn shares(params: &Params) -> Vec<Vec<u64>> {
    (0..params.publishers)
        .map(|task| {
            (task..params.messages)
                .step_by(params.publishers)
                .map(|seq| seq as u64)
                .collect()
        })
        .collect()
}

/// bus on any backend: `publishers` tasks publish (each waits for its confirmation),
/// `consumers` competing consumers receive and ack.
pub async fn bus(broker: &Broker, params: &Params) -> BenchResult {
    let mut result = across(broker, broker, None, params, true).await;
    result.variant = match broker {
        Broker::Memory => "bus-memory".into(),
        Broker::Mqtt { .. } => format!("bus-mqtt MQTT 5 QoS {}", params.qos),
        Broker::Gcp { .. } => format!("bus-gcp, {} stream(s)", params.streams),
    };
    if params.subscriptions > 1 {
        result.variant = format!(
            "{}, fan-out to {} subscriptions",
            result.variant, params.subscriptions
        );
    }
    if params.batch > 0 {
        result.client = "bus-batch".into();
        result.variant = format!("{}, batches of {}", result.variant, params.batch);
    }
    result
}

/// bus publishing on `from` and consuming on `to`, with the program `bus` (at `bus_program`)
/// running `bus bridge --from .. --to ..` between them: a bridge's end-to-end cost.
pub async fn bridged(
    from: &Broker,
    to: &Broker,
    bus_program: &std::path::Path,
    params: &Params,
) -> BenchResult {
    let mut result = across(from, to, Some(bus_program), params, true).await;
    result.backend = format!("{}->{}", from.backend(), to.backend());
    result.client = "bridge".into();
    result.variant = format!("bus bridge, {} stream(s)", params.streams);
    result
}

/// The variables that point `bus` (the bridge) at `broker`.
fn bus_environment(broker: &Broker, params: &Params, run: &str) -> Vec<(String, String)> {
    let pairs: Vec<(&str, String)> = match broker {
        Broker::Memory => vec![],
        Broker::Mqtt { port } => vec![
            ("BUS_MQTT__URL", format!("mqtt://127.0.0.1:{port}")),
            ("BUS_MQTT__CLIENT_ID", format!("bridge-{run}")),
            ("BUS_MQTT__QOS", params.qos.to_string()),
        ],
        Broker::Gcp { host } => vec![
            ("BUS_GCP__PROJECT", "bench".into()),
            ("BUS_GCP__ENDPOINT", format!("http://{host}")),
            ("BUS_GCP__STREAMS", params.streams.to_string()),
        ],
    };
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Starts `bus bridge` for `topic` and waits until it says it is ready.
async fn start_bridge(
    bus_program: &std::path::Path,
    from: &Broker,
    to: &Broker,
    topic: &Topic,
    params: &Params,
    run: &str,
) -> std::process::Child {
    use std::io::BufRead as _;
    let mut command = std::process::Command::new(bus_program);
    command
        .args(["bridge", "--from", from.backend(), "--to", to.backend()])
        .args(["--topic", topic.as_str()])
        // As many publishes in flight as the sides measured alone have.
        .args(["--concurrency", &params.publishers.to_string()])
        .envs(bus_environment(from, params, run))
        .envs(bus_environment(to, params, run))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let mut child = command.spawn().expect("start bus bridge");
    let stdout = child.stdout.take().expect("the bridge's stdout");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    // Reads on to the end, so that the bridge's last line finds a reader.
    std::thread::spawn(move || {
        let mut ready_tx = Some(ready_tx);
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("bus bridge: ready") {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    let ready = tokio::time::timeout(Duration::from_secs(60), ready_rx).await;
    assert!(
        matches!(ready, Ok(Ok(()))),
        "bus bridge did not get ready within 60 s"
    );
    child
}

/// Stops the bridge gracefully (SIGTERM) and waits for it.
fn stop_bridge(mut child: std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// bus without its telemetry layer (the backend crate's own `connect`): what the layer costs
/// when no subscriber or recorder is installed.
pub async fn bus_without_telemetry(broker: &Broker, params: &Params) -> BenchResult {
    let mut result = across(broker, broker, None, params, false).await;
    result.variant = format!("bus on {}, no telemetry layer", broker.backend());
    result
}

/// Connects as `bus::connect` does, with or without the telemetry layer.
async fn connect(config: &bus::Config, instrumented: bool) -> bus::Bus {
    if instrumented {
        return bus::connect(config).await.expect("bus connects");
    }
    let backend: Box<dyn bus::Backend> = match config.backend {
        bus::BackendKind::Memory => Box::new(
            bus::memory::MemoryBackend::connect(&config.memory)
                .await
                .expect("memory"),
        ),
        bus::BackendKind::Mqtt => Box::new(
            bus::mqtt::MqttBackend::connect(&config.section("mqtt").expect("mqtt section"))
                .await
                .expect("bus connects"),
        ),
        bus::BackendKind::Gcp => Box::new(
            bus::gcp::GcpBackend::connect(&config.section("gcp").expect("gcp section"))
                .await
                .expect("bus connects"),
        ),
        other => panic!("no backend {other:?} in the bench"),
    };
    bus::Bus::new(backend)
}

async fn across(
    from: &Broker,
    to: &Broker,
    bridge: Option<&std::path::Path>,
    params: &Params,
    instrumented: bool,
) -> BenchResult {
    let run = run_id();
    let connection = connect(&to.bus_config(params, &format!("{run}-to")), instrumented).await;
    let topic = Topic::new(format!("bench/{run}")).expect("topic");
    // Each subscription gets every message (fan-out); its consumers compete. Copy `c` of the
    // tracker counts subscription `c`'s deliveries.
    let mut consumers = Vec::new();
    for copy in 0..params.subscriptions.max(1) {
        let name = match copy {
            0 => "bench".to_string(),
            _ => format!("bench-{copy}"),
        };
        let options = SubscriptionOptions::new(name).expect("name");
        // Publish only: no subscription, so the broker keeps nothing (the emulator would hold
        // every run's messages in memory); the topic is made on the first publish.
        if params.publish_only {
            continue;
        }
        for _ in 0..params.consumers {
            let subscription = connection
                .subscriber
                .subscribe(&topic, options.clone())
                .await
                .expect("subscribe");
            consumers.push((copy, Arc::new(subscription)));
        }
    }
    let bridge = match bridge {
        Some(program) => Some(start_bridge(program, from, to, &topic, params, &run).await),
        None => None,
    };
    let source = match bridge {
        Some(_) => Some(
            bus::connect(&from.bus_config(params, &format!("{run}-from")))
                .await
                .expect("bus connects"),
        ),
        None => None,
    };
    let publisher: Arc<dyn Publisher> = match &source {
        Some(source) => Arc::from(source.backend().publisher()),
        None => Arc::from(connection.backend().publisher()),
    };
    let label = match bridge {
        Some(_) => format!("{}->{} bridge", from.backend(), to.backend()),
        None => format!("{} bus", to.backend()),
    };
    let tracker = Arc::new(Tracker::fan_out(
        params.messages,
        params.subscriptions.max(1),
        &label,
    ));
    let start = Instant::now();
    let receivers: Vec<_> = consumers
        .iter()
        .map(|(copy, consumer)| {
            spawn_consumer(consumer.clone(), tracker.clone(), *copy, params.batch)
        })
        .collect();
    let publishers: Vec<_> = shares(params)
        .into_iter()
        .map(|share| {
            let (publisher, topic, size) = (publisher.clone(), topic.clone(), params.payload);
            let batch = params.batch;
            tokio::spawn(async move {
                if batch > 0 {
                    for seqs in share.chunks(batch) {
                        let messages = seqs
                            .iter()
                            .map(|seq| Message::new(stamp(*seq, size)))
                            .collect();
                        for result in publisher.publish_batch(&topic, messages).await {
                            result.expect("publish_batch");
                        }
                    }
                    return;
                }
                for seq in share {
                    publisher
                        .publish(&topic, Message::new(stamp(seq, size)))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    let (published, delivered) = published_and_delivered(start, publishers, &tracker, params).await;
    for (_, consumer) in &consumers {
        let _ = consumer.close().await;
    }
    for task in receivers {
        let _ = task.await;
    }
    let _ = publisher.close().await;
    if let Some(child) = bridge {
        tokio::task::spawn_blocking(move || stop_bridge(child))
            .await
            .expect("stop the bridge");
    }
    if let Some(source) = source {
        let _ = source.close().await;
    }
    let _ = connection.close().await;
    tracker.finish((to.backend(), "bus"), params, published, delivered)
}

/// Awaits every publishing task, then every message (or the idle timeout without progress;
/// nothing for a publish-only run): how long after `start` the last publish was confirmed and
/// the last message arrived (zero for a publish-only run).
async fn published_and_delivered(
    start: Instant,
    publishers: Vec<tokio::task::JoinHandle<()>>,
    tracker: &Tracker,
    params: &Params,
) -> (Duration, Duration) {
    for task in publishers {
        task.await.expect("publisher task");
    }
    let published = start.elapsed();
    if params.publish_only {
        return (published, Duration::ZERO);
    }
    wait_until(
        || tracker.complete(),
        || tracker.distinct(),
        params.idle_timeout,
    )
    .await;
    (published, start.elapsed())
}

/// Receives and acks on `consumer` until `tracker` has every message, recording each delivery
/// as copy `copy`: one by one, or `batch` at a time through the batch calls when `batch > 0`.
pub(crate) fn spawn_consumer(
    consumer: Arc<Box<dyn bus::Subscription>>,
    tracker: Arc<Tracker>,
    copy: usize,
    batch: usize,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(1024);
        while !tracker.complete() {
            if batch > 0 {
                let Ok(deliveries) = consumer
                    .receive_batch(batch, Duration::from_millis(100))
                    .await
                else {
                    break;
                };
                for delivery in &deliveries {
                    tracker.record_copy(copy, delivery.payload(), &mut latencies);
                }
                let _ = bus::ack_all(deliveries).await;
                continue;
            }
            let Ok(delivery) = consumer.receive().await else {
                break;
            };
            tracker.record_copy(copy, delivery.payload(), &mut latencies);
            let _ = delivery.ack().await;
        }
        tracker.flush(&mut latencies);
    })
}

/// A bounded `tokio::sync::mpsc` hand-off to one consumer: what an in-process queue costs
/// without acks, redelivery or fan-out.
pub async fn raw_memory(params: &Params) -> BenchResult {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1024);
    let tracker = Arc::new(Tracker::new(params.messages, "memory raw"));
    let start = Instant::now();
    let consumer = tokio::spawn({
        let tracker = tracker.clone();
        async move {
            let mut latencies = Vec::with_capacity(1024);
            while let Some(payload) = rx.recv().await {
                tracker.record(&payload, &mut latencies);
            }
            tracker.flush(&mut latencies);
        }
    });
    let publishers: Vec<_> = shares(params)
        .into_iter()
        .map(|share| {
            let (tx, size) = (tx.clone(), params.payload);
            tokio::spawn(async move {
                for seq in share {
                    tx.send(stamp(seq, size)).await.expect("send");
                }
            })
        })
        .collect();
    drop(tx);
    for task in publishers {
        task.await.expect("publisher task");
    }
    let published = start.elapsed();
    consumer.await.expect("consumer");
    let delivered = start.elapsed();
    let mut result = tracker.finish(("memory", "raw"), params, published, delivered);
    result.variant = "tokio mpsc (no acks)".into();
    result
}

/// MQTT protocol version of the raw rumqttc client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    /// MQTT 5.
    V5,
    /// MQTT 3.1.1.
    V311,
}

/// When the raw MQTT consumer acknowledges a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawAcks {
    /// rumqttc's default: the PUBACK goes out as the message is read, before the consumer has
    /// it (several in one write), so a consumer that dies loses what it was handed.
    OnReceipt,
    /// Manual acks: the PUBACK goes out after the consumer recorded the message, as bus does
    /// (at least once). rumqttc writes each one in a write of its own.
    AfterProcessing,
}

/// Raw rumqttc: one publishing connection (publishes pipelined, confirmations counted from
/// PUBACKs) and one subscribing connection, acking as `acks` says.
pub async fn raw_mqtt(
    port: u16,
    version: MqttVersion,
    acks: RawAcks,
    params: &Params,
) -> BenchResult {
    let run = run_id();
    let topic = format!("bench/raw/{run}");
    let tracker = Arc::new(Tracker::new(params.messages, "mqtt raw"));
    let manual_acks = acks == RawAcks::AfterProcessing;
    let (published, delivered) = match version {
        MqttVersion::V5 => raw_mqtt5(port, &topic, &run, manual_acks, params, &tracker).await,
        MqttVersion::V311 => raw_mqtt4(port, &topic, &run, manual_acks, params, &tracker).await,
    };
    let mut result = tracker.finish(("mqtt", "raw"), params, published, delivered);
    result.variant = match version {
        MqttVersion::V5 => format!("rumqttc MQTT 5 QoS {}", params.qos),
        MqttVersion::V311 => format!("rumqttc MQTT 3.1.1 QoS {}", params.qos),
    };
    if manual_acks {
        result.client = "raw-acked".into();
        result.variant.push_str(", acked after processing");
    }
    result
}

/// The same loop for both protocol versions: their types differ, their shape does not.
macro_rules! raw_mqtt_run {
    ($name:ident, $module:path, $max_packet:expr) => {
        async fn $name(
            port: u16,
            topic: &str,
            run: &str,
            manual_acks: bool,
            params: &Params,
            tracker: &Arc<Tracker>,
        ) -> (Duration, Duration) {
            use mqtt::{AsyncClient, Event, Incoming, MqttOptions};
            use $module as mqtt;
            let qos = match params.qos {
                0 => mqtt::mqttbytes::QoS::AtMostOnce,
                2 => mqtt::mqttbytes::QoS::ExactlyOnce,
                _ => mqtt::mqttbytes::QoS::AtLeastOnce,
            };
            let options = |role: &str| {
                let mut options =
                    MqttOptions::new(format!("bench-{role}-{run}"), "127.0.0.1", port);
                $max_packet(&mut options);
                options.set_keep_alive(Duration::from_secs(30));
                options
            };
            let mut sub_options = options("sub");
            sub_options.set_manual_acks(manual_acks);
            let (subscriber, mut sub_loop) = AsyncClient::new(sub_options, 1024);
            subscriber.subscribe(topic, qos).await.expect("subscribe");
            loop {
                if let Ok(Event::Incoming(Incoming::SubAck(_))) = sub_loop.poll().await {
                    break;
                }
            }
            let (publisher, mut pub_loop) = AsyncClient::new(options("pub"), 1024);
            let messages = params.messages;
            let start = Instant::now();
            let confirmations = tokio::spawn(async move {
                let mut confirmed = 0;
                while confirmed < messages {
                    match pub_loop.poll().await {
                        Ok(Event::Incoming(Incoming::PubAck(_)))
                        | Ok(Event::Incoming(Incoming::PubComp(_))) => confirmed += 1,
                        Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_)))
                            if qos == mqtt::mqttbytes::QoS::AtMostOnce =>
                        {
                            confirmed += 1
                        }
                        Ok(_) => {}
                        Err(e) => panic!("raw publisher connection: {e}"),
                    }
                }
                start.elapsed()
            });
            let producer = tokio::spawn({
                let (topic, size) = (topic.to_string(), params.payload);
                async move {
                    for seq in 0..messages as u64 {
                        publisher
                            .publish(topic.clone(), qos, false, stamp(seq, size))
                            .await
                            .expect("publish");
                    }
                }
            });
            // With manual acks the event loop runs in a task of its own, handing messages to
            // the consumer, which acks each after recording it: an ack is a request the event
            // loop must be polled to send, so one task doing both would wait on itself.
            let mut event_loop = None;
            let consumer: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
                if manual_acks {
                    let (handed, mut deliveries) = tokio::sync::mpsc::unbounded_channel();
                    event_loop = Some(tokio::spawn(async move {
                        loop {
                            match sub_loop.poll().await {
                                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                                    if handed.send(publish).is_err() {
                                        break;
                                    }
                                }
                                Ok(_) => {}
                                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        }
                    }));
                    let tracker = tracker.clone();
                    Box::pin(async move {
                        let mut latencies = Vec::with_capacity(1024);
                        while !tracker.complete() {
                            let Some(publish) = deliveries.recv().await else {
                                break;
                            };
                            tracker.record(&publish.payload, &mut latencies);
                            subscriber.ack(&publish).await.expect("ack");
                        }
                        tracker.flush(&mut latencies);
                    })
                } else {
                    let tracker = tracker.clone();
                    Box::pin(async move {
                        let mut latencies = Vec::with_capacity(1024);
                        while !tracker.complete() {
                            if let Ok(Event::Incoming(Incoming::Publish(publish))) =
                                sub_loop.poll().await
                            {
                                tracker.record(&publish.payload, &mut latencies);
                            }
                        }
                        tracker.flush(&mut latencies);
                    })
                };
            let idle = params.idle_timeout;
            let _ = tokio::time::timeout(idle * 10, consumer).await;
            if let Some(event_loop) = event_loop {
                event_loop.abort();
            }
            let delivered = start.elapsed();
            producer.await.expect("producer");
            let published = confirmations.await.expect("confirmations");
            (published, delivered)
        }
    };
}

raw_mqtt_run!(
    raw_mqtt5,
    rumqttc::v5,
    |o: &mut rumqttc::v5::MqttOptions| {
        o.set_max_packet_size(Some(16 * 1024 * 1024));
    }
);
raw_mqtt_run!(raw_mqtt4, rumqttc, |o: &mut rumqttc::MqttOptions| {
    o.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
});

/// Raw google-cloud-pubsub: one `Publisher` (its default batching) and one `Subscriber`
/// stream. Topic and subscription are made by bus-gcp beforehand (setup, not measured).
pub async fn raw_gcp(host: &str, params: &Params) -> BenchResult {
    use google_cloud_pubsub::client::{Publisher as RawPublisher, Subscriber as RawSubscriber};
    use google_cloud_pubsub::model::Message as RawMessage;

    let run = run_id();
    let setup = Broker::Gcp {
        host: host.to_string(),
    };
    let config: bus::gcp::GcpConfig = setup
        .bus_config(params, &run)
        .section("gcp")
        .expect("gcp section");
    let backend = bus::gcp::GcpBackend::connect(&config)
        .await
        .expect("connect");
    let topic = Topic::new(format!("bench/raw-{run}")).expect("topic");
    let options = SubscriptionOptions::new("bench").expect("name");
    let endpoint = format!("http://{host}");
    let anonymous = || google_cloud_auth_anonymous();
    if params.publish_only {
        // The topic alone, as bus makes it on its first publish: no subscription keeps the
        // messages.
        google_cloud_pubsub::client::TopicAdmin::builder()
            .with_endpoint(endpoint.clone())
            .with_credentials(anonymous())
            .build()
            .await
            .expect("raw topic admin")
            .create_topic()
            .set_name(backend.topic_path(&topic).expect("path"))
            .send()
            .await
            .expect("create the topic");
    } else {
        // The admin API only: a consumer attached and closed here would leave a phantom
        // stream on the emulator, competing with the raw stream measured below.
        bus::Backend::subscriber(&backend)
            .create_subscription(&topic, options.clone())
            .await
            .expect("provision");
    }
    // Batched as bus batches (`gcp.publish_batch_delay_ms`, 1 ms unless set; the crate's own
    // default is 10 ms), so the two publish with the same latency budget.
    let publisher = RawPublisher::builder(backend.topic_path(&topic).expect("path"))
        .with_endpoint(endpoint.clone())
        .with_credentials(anonymous())
        .set_delay_threshold(Duration::from_millis(config.publish_batch_delay_ms))
        .build()
        .await
        .expect("raw publisher");
    let subscriber = RawSubscriber::builder()
        .with_endpoint(endpoint)
        .with_credentials(anonymous())
        .build()
        .await
        .expect("raw subscriber");
    // One streaming pull per `params.streams`, each in a task of its own, all on the one
    // subscription: what the raw client reaches with as many streams as bus is given.
    let path = backend.subscription_path(&options, &topic).expect("path");
    let tracker = Arc::new(Tracker::new(params.messages, "gcp raw"));
    let mut shutdowns = Vec::new();
    let streams = if params.publish_only {
        0
    } else {
        params.streams.max(1)
    };
    let consumers: Vec<_> = (0..streams)
        .map(|_| {
            let mut stream = subscriber.subscribe(path.clone()).build();
            shutdowns.push(stream.shutdown_token());
            let tracker = tracker.clone();
            // Runs until its stream is shut down: `next` is not cut short by a timeout, which
            // could drop a message the stream had already taken.
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1024);
                while let Some(Ok((message, handler))) = stream.next().await {
                    tracker.record(&message.data, &mut latencies);
                    handler.ack();
                }
                tracker.flush(&mut latencies);
            })
        })
        .collect();
    let start = Instant::now();
    let publishers: Vec<_> = shares(params)
        .into_iter()
        .map(|share| {
            let (publisher, size) = (publisher.clone(), params.payload);
            tokio::spawn(async move {
                for seq in share {
                    publisher
                        .publish(RawMessage::new().set_data(stamp(seq, size)))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    let (published, delivered) = published_and_delivered(start, publishers, &tracker, params).await;
    for shutdown in &shutdowns {
        shutdown.shutdown().await;
    }
    for consumer in consumers {
        let _ = consumer.await;
    }
    let mut result = tracker.finish(("gcp", "raw"), params, published, delivered);
    result.variant = format!("google-cloud-pubsub, {} stream(s)", params.streams.max(1));
    result
}

fn google_cloud_auth_anonymous() -> google_cloud_auth::credentials::Credentials {
    google_cloud_auth::credentials::anonymous::Builder::new().build()
}
