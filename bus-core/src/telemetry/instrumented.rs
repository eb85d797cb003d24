//! [`Instrumented`]: any backend, with spans, trace context and metrics around its roles.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metrics::{Counter, Gauge, Histogram};
use tracing::field::Empty;
use tracing::{Instrument, Span};

use super::sampling::sample_root;
use super::*;
use crate::{
    Backend, Capabilities, Delivery, Message, Publisher, Result, Subscriber, Subscription,
    SubscriptionOptions, Topic,
};

/// A backend whose publishers and subscribers record spans and metrics and carry trace
/// context (see the [module docs](crate::telemetry)). Everything else is the inner backend's.
///
/// ```
/// # async fn example(backend: Box<dyn bus_core::Backend>) {
/// use bus_core::{telemetry::Instrumented, Backend};
///
/// let backend = Instrumented::new(backend);
/// let publisher = backend.publisher(); // publishes inside `send {topic}` spans
/// # }
/// ```
#[derive(Debug)]
pub struct Instrumented {
    inner: Box<dyn Backend>,
}

impl Instrumented {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Backend>) -> Instrumented {
        Instrumented { inner }
    }
}

#[async_trait]
impl Backend for Instrumented {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn messaging_system(&self) -> &'static str {
        self.inner.messaging_system()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn publisher(&self) -> Box<dyn Publisher> {
        Box::new(InstrumentedPublisher {
            inner: self.inner.publisher(),
            system: self.inner.messaging_system(),
            topics: RwLock::default(),
        })
    }

    fn subscriber(&self) -> Box<dyn Subscriber> {
        Box::new(InstrumentedSubscriber {
            inner: self.inner.subscriber(),
            system: self.inner.messaging_system(),
        })
    }

    async fn create_topic(&self, topic: &Topic) -> Result<()> {
        self.inner.create_topic(topic).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// A publisher's metric handles for one topic, registered on first use.
#[derive(Debug)]
struct PublishMetrics {
    /// `send {topic}`, made once: the span name (formatting it per message shows in profiles).
    span_name: Box<str>,
    ok: Counter,
    error: Counter,
    duration: Histogram,
}

impl PublishMetrics {
    fn new(system: &'static str, topic: &Topic) -> PublishMetrics {
        let topic = topic.to_string();
        PublishMetrics {
            span_name: format!("send {topic}").into(),
            ok: metrics::counter!(PUBLISHED_TOTAL, "system" => system, "topic" => topic.clone(), "outcome" => "ok"),
            error: metrics::counter!(PUBLISHED_TOTAL, "system" => system, "topic" => topic.clone(), "outcome" => "error"),
            duration: metrics::histogram!(PUBLISH_DURATION_SECONDS, "system" => system, "topic" => topic),
        }
    }
}

#[derive(Debug)]
struct InstrumentedPublisher {
    inner: Box<dyn Publisher>,
    system: &'static str,
    topics: RwLock<HashMap<Topic, Arc<PublishMetrics>, foldhash::fast::RandomState>>,
}

impl InstrumentedPublisher {
    fn metrics(&self, topic: &Topic) -> Arc<PublishMetrics> {
        if let Some(found) = self.topics.read().ok().and_then(|t| t.get(topic).cloned()) {
            return found;
        }
        let made = Arc::new(PublishMetrics::new(self.system, topic));
        if let Ok(mut topics) = self.topics.write() {
            topics.entry(topic.clone()).or_insert_with(|| made.clone());
        }
        made
    }
}

impl InstrumentedPublisher {
    /// The `send {topic}` span of one message (`body_size`) or a batch (`count`).
    fn send_span(
        &self,
        topic: &Topic,
        metrics: &PublishMetrics,
        body_size: Option<usize>,
        count: Option<usize>,
    ) -> Span {
        tracing::info_span!(
            target: "bus",
            "send",
            otel.name = &*metrics.span_name,
            otel.kind = "producer",
            otel.status_code = Empty,
            messaging.system = self.system,
            messaging.destination.name = topic.as_str(),
            messaging.operation.type = "send",
            messaging.operation.name = "publish",
            messaging.message.body.size = body_size,
            messaging.batch.message_count = count,
            messaging.message.id = Empty,
            error.type = Empty,
        )
    }

    /// Sets the trace context `message` carries: from `span`, or, without a span (a trace bus
    /// does not record), a context whose sampled flag is off.
    fn carry_context(span: Option<&Span>, message: &mut Message) {
        #[cfg(feature = "otel")]
        match span {
            Some(span) => super::otel::inject(span, &mut message.attributes),
            // A message that carries its own trace context (a bridge's) keeps it.
            None if !message.attributes.contains_key(TRACEPARENT) => {
                super::sampling::unsampled_context().write_to(&mut message.attributes)
            }
            None => {}
        }
        #[cfg(not(feature = "otel"))]
        let _ = (span, message);
    }

    /// Runs `send` inside `span`, if there is one.
    async fn in_span<T>(span: Option<&Span>, send: impl std::future::Future<Output = T>) -> T {
        match span {
            Some(span) => send.instrument(span.clone()).await,
            None => send.await,
        }
    }
}

impl PublishMetrics {
    /// Counts one publish's `result`, which took `elapsed`; returns the kind of its error.
    fn record<T>(&self, elapsed: Duration, result: &Result<T>) -> Option<crate::ErrorKind> {
        self.duration.record(elapsed.as_secs_f64());
        match result {
            Ok(_) => {
                self.ok.increment(1);
                None
            }
            Err(e) => {
                self.error.increment(1);
                Some(e.kind())
            }
        }
    }
}

/// Marks `span` failed with an error of `kind`.
fn mark_failed(span: &Span, kind: crate::ErrorKind) {
    span.record("error.type", kind.as_str());
    span.record("otel.status_code", "ERROR");
}

/// Whether a publish made now is recorded (gets a `send` span): inside a span of the
/// application, the OpenTelemetry sampler decides from its parent; inside a delivery of an
/// unsampled trace, never; outside any span the trace starts here, and bus's ratio decides.
fn publish_recorded() -> bool {
    match Span::current().metadata() {
        Some(metadata) => metadata.target() != UNSAMPLED_TARGET,
        None => sample_root(),
    }
}

#[async_trait]
impl Publisher for InstrumentedPublisher {
    async fn publish(&self, topic: &Topic, mut message: Message) -> Result<String> {
        let metrics = self.metrics(topic);
        let span = publish_recorded()
            .then(|| self.send_span(topic, &metrics, Some(message.payload.len()), None));
        Self::carry_context(span.as_ref(), &mut message);
        let started = Instant::now();
        let result = Self::in_span(span.as_ref(), self.inner.publish(topic, message)).await;
        let failed = metrics.record(started.elapsed(), &result);
        match (&span, &result, failed) {
            (Some(span), _, Some(kind)) => mark_failed(span, kind),
            (Some(span), Ok(id), None) => {
                span.record("messaging.message.id", id.as_str());
            }
            _ => {}
        }
        result
    }

    /// One span for the batch: every message carries its context.
    async fn publish_batch(
        &self,
        topic: &Topic,
        mut messages: Vec<Message>,
    ) -> Vec<Result<String>> {
        let metrics = self.metrics(topic);
        let span =
            publish_recorded().then(|| self.send_span(topic, &metrics, None, Some(messages.len())));
        for message in &mut messages {
            Self::carry_context(span.as_ref(), message);
        }
        let started = Instant::now();
        let results = Self::in_span(span.as_ref(), self.inner.publish_batch(topic, messages)).await;
        let elapsed = started.elapsed();
        let mut failed = None;
        for result in &results {
            failed = metrics.record(elapsed, result).or(failed);
        }
        if let (Some(span), Some(kind)) = (&span, failed) {
            mark_failed(span, kind);
        }
        results
    }

    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

#[derive(Debug)]
struct InstrumentedSubscriber {
    inner: Box<dyn Subscriber>,
    system: &'static str,
}

#[async_trait]
impl Subscriber for InstrumentedSubscriber {
    async fn subscribe(
        &self,
        topic: &Topic,
        options: SubscriptionOptions,
    ) -> Result<Box<dyn Subscription>> {
        let telemetry = Arc::new(SubscriptionTelemetry::new(
            self.system,
            topic,
            options.name.as_str(),
        ));
        let inner = self.inner.subscribe(topic, options).await?;
        Ok(Box::new(InstrumentedSubscription { inner, telemetry }))
    }

    async fn create_subscription(&self, topic: &Topic, options: SubscriptionOptions) -> Result<()> {
        self.inner.create_subscription(topic, options).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}

/// What one subscription records with, registered at subscribe.
#[derive(Debug)]
struct SubscriptionTelemetry {
    /// The span names, made once: `process {topic}`, `ack {subscription}`, `nack
    /// {subscription}`.
    process_name: Box<str>,
    ack_name: Box<str>,
    nack_name: Box<str>,
    system: &'static str,
    topic: Topic,
    subscription: String,
    delivered: Counter,
    redelivered: Counter,
    acked: Counter,
    nacked: Counter,
    in_flight: Gauge,
}

impl SubscriptionTelemetry {
    fn new(system: &'static str, topic: &Topic, subscription: &str) -> SubscriptionTelemetry {
        let labels = [
            ("system", system.to_string()),
            ("topic", topic.to_string()),
            ("subscription", subscription.to_string()),
        ];
        SubscriptionTelemetry {
            process_name: format!("process {topic}").into(),
            ack_name: format!("ack {subscription}").into(),
            nack_name: format!("nack {subscription}").into(),
            system,
            topic: topic.clone(),
            subscription: subscription.to_string(),
            delivered: metrics::counter!(DELIVERED_TOTAL, &labels),
            redelivered: metrics::counter!(REDELIVERED_TOTAL, &labels),
            acked: metrics::counter!(ACKED_TOTAL, &labels),
            nacked: metrics::counter!(NACKED_TOTAL, &labels),
            in_flight: metrics::gauge!(IN_FLIGHT, &labels),
        }
    }
}

#[derive(Debug)]
struct InstrumentedSubscription {
    inner: Box<dyn Subscription>,
    telemetry: Arc<SubscriptionTelemetry>,
}

#[async_trait]
impl Subscription for InstrumentedSubscription {
    async fn receive(&self) -> Result<Delivery> {
        let delivery = self.inner.receive().await?;
        Ok(self.observe(delivery))
    }

    async fn receive_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        let batch = self.inner.receive_batch(max, wait).await?;
        Ok(batch.into_iter().map(|d| self.observe(d)).collect())
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

impl InstrumentedSubscription {
    /// `delivery` in a `process` span of its own, counted and settled through the telemetry.
    fn observe(&self, delivery: Delivery) -> Delivery {
        let t = &self.telemetry;
        // The trace the message carries decides; without one the trace starts here. Read only
        // when bus's spans go anywhere (a library user who set up nothing pays nothing).
        #[cfg(feature = "otel")]
        let (context, recorded) = if tracing::enabled!(target: "bus", tracing::Level::INFO) {
            let context = delivery.trace_context();
            let recorded = context
                .as_ref()
                .map_or_else(sample_root, TraceContext::sampled);
            (context, recorded)
        } else {
            (None, true)
        };
        #[cfg(not(feature = "otel"))]
        let recorded = sample_root();
        if !recorded {
            // A marker span for what runs inside it, left out of every exporter; its parent
            // is the unsampled context, so a pipeline that does export it samples it out.
            let span = tracing::info_span!(target: "bus::unsampled", parent: None, "process");
            #[cfg(feature = "otel")]
            super::otel::continue_trace(
                &span,
                &context.unwrap_or_else(super::sampling::unsampled_context),
            );
            return self.count(delivery, span, false);
        }
        // A new root unless the message carries a trace: the consumer's loop is not its parent.
        let span = tracing::info_span!(
            target: "bus",
            parent: None,
            "process",
            otel.name = &*t.process_name,
            otel.kind = "consumer",
            messaging.system = t.system,
            messaging.destination.name = t.topic.as_str(),
            messaging.destination.subscription.name = t.subscription.as_str(),
            messaging.operation.type = "process",
            messaging.message.id = delivery.id(),
            messaging.message.body.size = delivery.payload().len(),
            messaging.delivery.attempt = delivery.attempt(),
        );
        #[cfg(feature = "otel")]
        if let Some(context) = &context {
            super::otel::continue_trace(&span, context);
        }
        self.count(delivery, span, true)
    }

    /// Counts `delivery` and wraps it to run in `span` and settle through the telemetry (with
    /// `settle` spans when `recorded`).
    fn count(&self, delivery: Delivery, span: Span, recorded: bool) -> Delivery {
        let t = &self.telemetry;
        t.delivered.increment(1);
        if delivery.attempt() > 1 {
            t.redelivered.increment(1);
            tracing::info!(target: "bus", parent: &span, attempt = delivery.attempt(), "redelivery");
        }
        t.in_flight.increment(1.0);
        let settlement = Settlement {
            span: recorded.then(|| span.clone()),
            telemetry: t.clone(),
            settled: false,
        };
        delivery.instrumented(span, settlement)
    }
}

/// What the telemetry layer adds to settling a delivery: a `settle` span (for a recorded
/// trace), the counters, and the in-flight gauge, given back when the delivery is dropped
/// unsettled. Held by the delivery itself, so that instrumenting costs no acker of its own.
#[derive(Debug)]
pub(crate) struct Settlement {
    /// The delivery's `process` span; `None` for a trace bus does not record.
    span: Option<Span>,
    telemetry: Arc<SubscriptionTelemetry>,
    settled: bool,
}

impl Settlement {
    /// Settles through `settling` (the backend's ack, or nack when not `ack`), recorded.
    pub(crate) async fn settle(
        self,
        ack: bool,
        settling: impl std::future::Future<Output = Result<()>>,
    ) -> Result<()> {
        let recording = self.start(ack);
        let result = match &recording.span {
            Some(span) => settling.instrument(span.clone()).await,
            None => settling.await,
        };
        recording.finish(&result);
        result
    }

    /// Starts recording a settlement that the caller carries out (alone or in a batch), then
    /// reports with [`SettleRecording::finish`].
    pub(crate) fn start(self, ack: bool) -> SettleRecording {
        let t = &self.telemetry;
        let operation = if ack { "ack" } else { "nack" };
        let span = self.span.as_ref().map(|parent| {
            tracing::info_span!(
                target: "bus",
                parent: parent,
                "settle",
                otel.name = if ack { &*t.ack_name } else { &*t.nack_name },
                otel.status_code = Empty,
                messaging.system = t.system,
                messaging.destination.subscription.name = t.subscription.as_str(),
                messaging.operation.type = "settle",
                messaging.operation.name = operation,
                error.type = Empty,
            )
        });
        SettleRecording {
            settlement: self,
            span,
            ack,
        }
    }
}

/// A settlement under way: its `settle` span (for a recorded trace) is open until
/// [`finish`](Self::finish).
pub(crate) struct SettleRecording {
    settlement: Settlement,
    span: Option<Span>,
    ack: bool,
}

impl SettleRecording {
    /// Counts the outcome, marks the span of a failure, and gives the in-flight gauge back.
    pub(crate) fn finish(mut self, result: &Result<()>) {
        let t = &self.settlement.telemetry;
        match (result, &self.span) {
            (Ok(()), _) if self.ack => t.acked.increment(1),
            (Ok(()), _) => t.nacked.increment(1),
            (Err(e), Some(span)) => mark_failed(span, e.kind()),
            (Err(_), None) => {}
        }
        self.settlement.settled = true;
        t.in_flight.decrement(1.0);
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        // Dropped unsettled: the backend redelivers it after the ack deadline.
        if !self.settled {
            self.telemetry.in_flight.decrement(1.0);
        }
    }
}
