//! The four autopatch services. Each is a function (or a subscribe-then-run pair) over a
//! publisher and a subscriber, so the binaries run one each and `autopatch-demo` runs all four
//! in one process.
//!
//! Every program the fuzzer reports ends in exactly one evaluation: the code-property-graph
//! stand-in publishes a scan result for every file (a clean one says so), llm-dispatch answers
//! a clean scan with `not_needed`, and patch-evaluation gives a crash or patch that never meets
//! its partner an `unmatched` verdict after `app.orphan_timeout_secs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bus::cloudevents::{
    AttributesReader, EventFormat, EventSubscription, PublishEvent, TypedEvent,
};
use bus::telemetry::{self, TraceContext};
use bus::{printable, ErrorKind, Publisher, Result, Subscriber, SubscriptionOptions};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::analysis::{clean_scan, evaluate, has_finding, scan, Llm, SourceFile};
use crate::schema::*;
use crate::store::{Half, Held, JoinStore, Orphan};

/// The synthetic crashing input: more than any of the samples' buffers hold.
fn crash_input(file: &SourceFile) -> Vec<u8> {
    let mut input = vec![b'A'; 64 + file.name.len()];
    input.push(b'\n');
    input
}

/// fuzzing-service: publishes one crash detail per source file (a synthetic crashing input;
/// no fuzzer runs here) and returns how many it published.
pub async fn fuzzing_service(
    publisher: &dyn Publisher,
    format: &EventFormat,
    sources: &[SourceFile],
) -> Result<usize> {
    let topic = topic(CRASH_DETAIL_TOPIC);
    for file in sources {
        let name = program_name(&file.name);
        let crash = CrashDetail {
            executable_name: name.to_string(),
            crash_detail_base64: BASE64.encode(crash_input(file)),
            is_input_from_file: false,
        };
        let event = event(FUZZING_SOURCE, CRASH_DETAIL_TYPE, name, &crash)?;
        publisher.publish_event(&topic, &event, format).await?;
        println!("fuzzing-service: crash in {} -> {topic}", printable(name));
    }
    Ok(sources.len())
}

/// cpg-generator: publishes a scan result for each source file (one without a finding says
/// so: severity 0, no line) and returns how many it published.
pub async fn cpg_generator(
    publisher: &dyn Publisher,
    format: &EventFormat,
    sources: &[SourceFile],
) -> Result<usize> {
    let topic = topic(SCAN_RESULT_TOPIC);
    for file in sources {
        let result = scan(file).unwrap_or_else(|| clean_scan(file));
        let event = event(CPG_SOURCE, SCAN_RESULT_TYPE, &file.name, &result)?;
        publisher.publish_event(&topic, &event, format).await?;
        if has_finding(&result) {
            println!(
                "cpg-generator: {} line {} in {}() severity {} -> {topic}",
                printable(&file.name),
                result.vulnerable_line_number,
                result.vulnerable_function,
                result.vulnerability_severity
            );
        } else {
            println!(
                "cpg-generator: nothing found in {} -> {topic}",
                printable(&file.name)
            );
        }
    }
    Ok(sources.len())
}

/// Receives from `subscription` into a channel until `stop`, so one loop can wait on several
/// subscriptions. A delivery in hand when it stops is nacked (it comes back at once to another
/// consumer, or to the next start), so stopping never waits on a full channel.
fn forward<T, M>(
    subscription: Arc<EventSubscription<T>>,
    wrap: fn(TypedEvent<T>) -> M,
    tx: mpsc::Sender<Result<M>>,
    stop: CancellationToken,
    settle: fn(M) -> Option<bus::Delivery>,
) -> tokio::task::JoinHandle<()>
where
    T: DeserializeOwned + Send + 'static,
    M: Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => break,
                received = subscription.receive() => received,
            };
            let item = match received {
                Ok(event) => Ok(wrap(event)),
                Err(e) if e.kind() == ErrorKind::Closed => break,
                Err(mut e) if e.kind() == ErrorKind::Decode => {
                    // Not an event of this topic's schema: it would come back forever.
                    tracing::warn!(error = %e, "skipping a message that is not the expected event");
                    if let Some(delivery) = e.take_delivery() {
                        let _ = delivery.ack().await;
                    }
                    continue;
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "receive failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
                Err(e) => Err(e),
            };
            let permit = tokio::select! {
                _ = stop.cancelled() => None,
                permit = tx.reserve() => permit.ok(),
            };
            match permit {
                Some(permit) => permit.send(item),
                None => {
                    if let Ok(item) = item {
                        if let Some(delivery) = settle(item) {
                            let _ = delivery.nack().await;
                        }
                    }
                    break;
                }
            }
        }
    })
}

/// llm-dispatch, subscribed: turns scan results into patch responses.
#[derive(Debug)]
pub struct LlmDispatch {
    scans: Arc<EventSubscription<ScanResult>>,
}

impl LlmDispatch {
    /// Subscribes to the scan results as `llm-dispatch`.
    pub async fn subscribe(subscriber: &dyn Subscriber) -> Result<LlmDispatch> {
        let topic = topic(SCAN_RESULT_TOPIC);
        let options = SubscriptionOptions::new("llm-dispatch")?;
        let scans = subscriber.subscribe(&topic, options).await?;
        println!("llm-dispatch: ready, subscribed to {topic}");
        Ok(LlmDispatch {
            scans: Arc::new(EventSubscription::new(scans)),
        })
    }

    /// Answers each scan result with a patch from `llm` (or `not_needed` for a clean file)
    /// until `shutdown`; the message being handled is finished (published and acked) first.
    /// Returns how many it answered.
    pub async fn run(
        self,
        publisher: &dyn Publisher,
        format: &EventFormat,
        sources: &[SourceFile],
        llm: &dyn Llm,
        shutdown: CancellationToken,
    ) -> Result<usize> {
        let (tx, mut rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let pump = forward(
            self.scans.clone(),
            |event| event,
            tx,
            stop.clone(),
            |event| Some(event.delivery),
        );
        let topic = topic(PATCH_RESPONSE_TOPIC);
        let mut answered = 0;
        let result = loop {
            let scan = tokio::select! {
                _ = shutdown.cancelled() => break Ok(answered),
                next = rx.recv() => match next {
                    Some(Ok(scan)) => scan,
                    Some(Err(e)) => break Err(e),
                    None => break Ok(answered),
                },
            };
            let name = scan.data.executable_name.clone();
            let (status, patched) = match sources.iter().find(|f| f.name == name) {
                Some(_) if !has_finding(&scan.data) => (PatchStatus::NotNeeded, String::new()),
                Some(file) => {
                    let outcome = llm.patch(file, &scan.data);
                    (outcome.status, outcome.patched_source)
                }
                None => (PatchStatus::Fail, String::new()),
            };
            let response = PatchResponse {
                executable_name: name.clone(),
                patch_snippet_base64: BASE64.encode(patched),
                status,
                transformer_metadata: llm.metadata(),
            };
            let event = event(LLM_DISPATCH_SOURCE, PATCH_RESPONSE_TYPE, &name, &response)?;
            // In the scan's span: the patch response continues the scan's trace.
            let span = scan.delivery.span().clone();
            async {
                publisher.publish_event(&topic, &event, format).await?;
                scan.ack().await
            }
            .instrument(span)
            .await?;
            answered += 1;
            println!(
                "llm-dispatch: patch for {} ({:?}) -> {topic}",
                printable(&name),
                response.status
            );
        };
        stop.cancel();
        let _ = pump.await;
        // Anything still in the channel goes back for the next consumer.
        while let Ok(Ok(scan)) = rx.try_recv() {
            let _ = scan.nack().await;
        }
        self.scans.close().await?;
        result
    }
}

/// What patch-evaluation receives.
enum Incoming {
    Crash(TypedEvent<CrashDetail>),
    Patch(TypedEvent<PatchResponse>),
}

impl Incoming {
    fn delivery(self) -> Option<bus::Delivery> {
        Some(match self {
            Incoming::Crash(crash) => crash.delivery,
            Incoming::Patch(patch) => patch.delivery,
        })
    }
}

/// How patch-evaluation runs.
#[derive(Debug, Clone, Copy)]
pub struct JoinSettings {
    /// Stop after this many programs are evaluated (counting those evaluated before a
    /// restart); `None` runs until stopped.
    pub expect: Option<usize>,
    /// How long a crash or a patch waits for its partner before it is evaluated `unmatched`.
    pub orphan_timeout: Duration,
}

/// patch-evaluation, subscribed: joins crashes with patches by program name.
#[derive(Debug)]
pub struct PatchEvaluator {
    crashes: Arc<EventSubscription<CrashDetail>>,
    patches: Arc<EventSubscription<PatchResponse>>,
}

impl PatchEvaluator {
    /// Subscribes to crash details and patch responses as `patch-evaluation`.
    pub async fn subscribe(subscriber: &dyn Subscriber) -> Result<PatchEvaluator> {
        let options = SubscriptionOptions::new("patch-evaluation")?;
        let crashes = subscriber
            .subscribe(&topic(CRASH_DETAIL_TOPIC), options.clone())
            .await?;
        let patches = subscriber
            .subscribe(&topic(PATCH_RESPONSE_TOPIC), options)
            .await?;
        println!("patch-evaluation: ready, subscribed to {CRASH_DETAIL_TOPIC} and {PATCH_RESPONSE_TOPIC}");
        Ok(PatchEvaluator {
            crashes: Arc::new(EventSubscription::new(crashes)),
            patches: Arc::new(EventSubscription::new(patches)),
        })
    }

    /// Evaluates each program once both its crash and its patch have arrived, in any order,
    /// and publishes the evaluation. Every message is written to `store` before it is acked;
    /// duplicates, and messages for programs evaluated already, are acked and ignored. A half
    /// that waits longer than the orphan timeout is evaluated `unmatched`. Stops on `shutdown`
    /// or once `expect` programs are evaluated; returns every evaluation in the store.
    pub async fn run(
        self,
        publisher: &dyn Publisher,
        format: &EventFormat,
        store: &JoinStore,
        settings: JoinSettings,
        shutdown: CancellationToken,
    ) -> Result<BTreeMap<String, PatchEvaluation>> {
        let (tx, mut rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let pumps = [
            forward(
                self.crashes.clone(),
                Incoming::Crash,
                tx.clone(),
                stop.clone(),
                Incoming::delivery,
            ),
            forward(
                self.patches.clone(),
                Incoming::Patch,
                tx,
                stop.clone(),
                Incoming::delivery,
            ),
        ];
        let topic = topic(PATCH_EVALUATION_TOPIC);
        let sweep_every = (settings.orphan_timeout / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        let mut sweep = tokio::time::interval(sweep_every);
        let result = loop {
            if settings
                .expect
                .is_some_and(|n| store.evaluated_count().unwrap_or(0) >= n)
            {
                break Ok(());
            }
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = sweep.tick() => {
                    if let Err(e) = self.expire_orphans(publisher, format, store, settings.orphan_timeout).await {
                        break Err(e);
                    }
                    continue;
                }
                next = rx.recv() => match next {
                    Some(Ok(incoming)) => incoming,
                    Some(Err(e)) => break Err(e),
                    None => break Ok(()),
                },
            };
            if let Err(e) = self.take(incoming, publisher, format, store, &topic).await {
                break Err(e);
            }
        };
        stop.cancel();
        for pump in pumps {
            let _ = pump.await;
        }
        while let Ok(Ok(incoming)) = rx.try_recv() {
            if let Some(delivery) = incoming.delivery() {
                let _ = delivery.nack().await;
            }
        }
        self.crashes.close().await?;
        self.patches.close().await?;
        result?;
        store.evaluations()
    }

    /// Stores one message (then acks it) and evaluates its program if both halves are there.
    async fn take(
        &self,
        incoming: Incoming,
        publisher: &dyn Publisher,
        format: &EventFormat,
        store: &JoinStore,
        topic: &bus::Topic,
    ) -> Result<()> {
        let (name, half, held, delivery) = match incoming {
            Incoming::Crash(crash) => (
                program_name(&crash.data.executable_name).to_string(),
                Half::Crash,
                held(&crash)?,
                crash.delivery,
            ),
            Incoming::Patch(patch) => (
                program_name(&patch.data.executable_name).to_string(),
                Half::Patch,
                held(&patch)?,
                patch.delivery,
            ),
        };
        let shown = printable(&name);
        if store.is_evaluated(&name)? {
            println!("patch-evaluation: duplicate for {shown} ignored");
            return delivery.ack().await;
        }
        store.hold(&name, half, &held)?;
        delivery.ack().await?;
        println!(
            "patch-evaluation: {} for {shown} received",
            match half {
                Half::Crash => "crash detail",
                Half::Patch => "patch response",
            }
        );
        let Some((crash, patch)) = store.pair(&name)? else {
            return Ok(());
        };
        let response: PatchResponse = serde_json::from_str(&patch.data).map_err(|e| {
            bus::Error::new(ErrorKind::Internal, "patch-evaluation", "a stored patch")
                .with_source(e)
        })?;
        let patched = BASE64
            .decode(&response.patch_snippet_base64)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        let (verdict, reason) = evaluate(response.status, patched.as_deref());
        let span = evaluation_span(&name, Some(&crash), Some(&patch));
        let evaluation = PatchEvaluation {
            executable_name: name.clone(),
            verdict,
            reason,
            llm_name: response.transformer_metadata.llm_name.clone(),
            crash_event_id: crash.event_id,
            patch_event_id: patch.event_id,
        };
        self.publish(publisher, format, store, topic, evaluation)
            .instrument(span)
            .await
    }

    /// Evaluates, as `unmatched`, what waited for its partner longer than `timeout`.
    async fn expire_orphans(
        &self,
        publisher: &dyn Publisher,
        format: &EventFormat,
        store: &JoinStore,
        timeout: Duration,
    ) -> Result<()> {
        let topic = topic(PATCH_EVALUATION_TOPIC);
        for Orphan {
            program: name,
            crash,
            patch,
        } in store.orphans(timeout)?
        {
            let reason = match (&crash, &patch) {
                (Some(_), _) => format!("no patch arrived within {timeout:?} of the crash"),
                _ => format!("no crash arrived within {timeout:?} of the patch"),
            };
            let span = evaluation_span(&name, crash.as_ref(), patch.as_ref());
            let evaluation = PatchEvaluation {
                executable_name: name,
                verdict: Verdict::Unmatched,
                reason,
                llm_name: String::new(),
                crash_event_id: crash.map(|c| c.event_id).unwrap_or_default(),
                patch_event_id: patch.map(|p| p.event_id).unwrap_or_default(),
            };
            self.publish(publisher, format, store, &topic, evaluation)
                .instrument(span)
                .await?;
        }
        Ok(())
    }

    async fn publish(
        &self,
        publisher: &dyn Publisher,
        format: &EventFormat,
        store: &JoinStore,
        topic: &bus::Topic,
        evaluation: PatchEvaluation,
    ) -> Result<()> {
        let name = evaluation.executable_name.clone();
        let event = event(EVALUATION_SOURCE, PATCH_EVALUATION_TYPE, &name, &evaluation)?;
        publisher.publish_event(topic, &event, format).await?;
        store.record(&evaluation)?;
        println!(
            "patch-evaluation: {}: {} ({}) -> {topic}",
            printable(&name),
            evaluation.verdict,
            printable(&evaluation.reason)
        );
        Ok(())
    }
}

/// One half of a join as stored: its event id, its data as JSON and its trace context.
fn held<T: serde::Serialize>(event: &TypedEvent<T>) -> Result<Held> {
    let data = &event.data;
    Ok(Held {
        event_id: event.event.id().to_string(),
        traceparent: event.trace_context().map(|c| c.traceparent().to_string()),
        data: serde_json::to_string(data).map_err(|e| {
            bus::Error::new(
                ErrorKind::Internal,
                "patch-evaluation",
                "event data as JSON",
            )
            .with_source(e)
        })?,
    })
}

/// The span an evaluation is published in. It continues the crash's trace (the fuzzer's report
/// starts a program's story) and links the patch's (the scan's trace, through llm-dispatch);
/// a half without trace context is left out.
fn evaluation_span(name: &str, crash: Option<&Held>, patch: Option<&Held>) -> tracing::Span {
    let span = tracing::info_span!(parent: None, "evaluate", program = %printable(name));
    let contexts = [crash, patch]
        .into_iter()
        .flatten()
        .filter_map(|held| held.traceparent.as_deref())
        .filter_map(|traceparent| TraceContext::parse(traceparent, None));
    for (i, context) in contexts.enumerate() {
        if i == 0 {
            telemetry::continue_trace(&span, &context);
        } else {
            telemetry::link(&span, &context);
        }
    }
    span
}

/// The evaluation summary as a table.
pub fn summary(evaluations: &BTreeMap<String, PatchEvaluation>) -> String {
    let mut text = format!("{:<12} {:<13} {:<14} reason\n", "program", "verdict", "llm");
    for evaluation in evaluations.values() {
        text.push_str(&format!(
            "{:<12} {:<13} {:<14} {}\n",
            printable(&evaluation.executable_name),
            evaluation.verdict.to_string(),
            printable(&evaluation.llm_name),
            printable(&evaluation.reason)
        ));
    }
    let fixed = evaluations
        .values()
        .filter(|e| e.verdict == Verdict::Fixed)
        .count();
    text.push_str(&format!("{fixed} of {} fixed\n", evaluations.len()));
    text
}
