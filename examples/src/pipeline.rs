//! The four autopatch services. Each is a function (or a subscribe-then-run pair) over a
//! publisher and a subscriber, so the binaries run one each and `autopatch-demo` runs all four
//! in one process.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bus::cloudevents::{
    AttributesReader, EventFormat, EventSubscription, PublishEvent, TypedEvent,
};
use bus::{ErrorKind, Publisher, Result, Subscriber, SubscriptionOptions};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::analysis::{evaluate, scan, Llm, SourceFile};
use crate::schema::*;

/// How long a held message may wait for its partner before the broker would redeliver it:
/// patch-evaluation keeps a crash unacked until the patch arrives, so a crash of the process
/// loses nothing.
const JOIN_ACK_DEADLINE: Duration = Duration::from_secs(600);

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
        println!("fuzzing-service: crash in {name} -> {topic}");
    }
    Ok(sources.len())
}

/// cpg-generator: publishes a scan result for each source file with a finding; returns how
/// many it published.
pub async fn cpg_generator(
    publisher: &dyn Publisher,
    format: &EventFormat,
    sources: &[SourceFile],
) -> Result<usize> {
    let topic = topic(SCAN_RESULT_TOPIC);
    let mut published = 0;
    for file in sources {
        let Some(result) = scan(file) else {
            println!("cpg-generator: nothing found in {}", file.name);
            continue;
        };
        let event = event(CPG_SOURCE, SCAN_RESULT_TYPE, &file.name, &result)?;
        publisher.publish_event(&topic, &event, format).await?;
        println!(
            "cpg-generator: {} line {} in {}() severity {} -> {topic}",
            file.name,
            result.vulnerable_line_number,
            result.vulnerable_function,
            result.vulnerability_severity
        );
        published += 1;
    }
    Ok(published)
}

/// Receives from `subscription` into a channel until it closes, so one loop can wait on
/// several subscriptions and on shutdown without dropping a receive half-way.
fn forward<T, M>(
    subscription: Arc<EventSubscription<T>>,
    wrap: fn(TypedEvent<T>) -> M,
    tx: mpsc::Sender<Result<M>>,
) -> tokio::task::JoinHandle<()>
where
    T: DeserializeOwned + Send + 'static,
    M: Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let item = match subscription.receive().await {
                Ok(event) => Ok(wrap(event)),
                Err(e) if e.kind() == ErrorKind::Closed => break,
                Err(mut e) if e.kind() == ErrorKind::Decode => {
                    // Not an event of this topic's schema: it would come back forever.
                    eprintln!("skipping a message that is not the expected event: {e}");
                    if let Some(delivery) = e.take_delivery() {
                        let _ = delivery.ack().await;
                    }
                    continue;
                }
                Err(e) if e.is_retryable() => {
                    eprintln!("receive failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => Err(e),
            };
            if tx.send(item).await.is_err() {
                break;
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

    /// Answers each scan result with a patch from `llm` until `shutdown`; the message being
    /// handled is finished (published and acked) first. Returns how many it answered.
    pub async fn run(
        self,
        publisher: &dyn Publisher,
        format: &EventFormat,
        sources: &[SourceFile],
        llm: &dyn Llm,
        shutdown: CancellationToken,
    ) -> Result<usize> {
        let (tx, mut rx) = mpsc::channel(1);
        let pump = forward(self.scans.clone(), |event| event, tx);
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
            let response = match sources.iter().find(|f| f.name == name) {
                Some(file) => {
                    let outcome = llm.patch(file, &scan.data);
                    PatchResponse {
                        executable_name: name.clone(),
                        patch_snippet_base64: BASE64.encode(outcome.patched_source),
                        status: outcome.status,
                        transformer_metadata: llm.metadata(),
                    }
                }
                None => PatchResponse {
                    executable_name: name.clone(),
                    patch_snippet_base64: String::new(),
                    status: PatchStatus::Fail,
                    transformer_metadata: llm.metadata(),
                },
            };
            let event = event(LLM_DISPATCH_SOURCE, PATCH_RESPONSE_TYPE, &name, &response)?;
            publisher.publish_event(&topic, &event, format).await?;
            scan.ack().await?;
            answered += 1;
            println!(
                "llm-dispatch: patch for {name} ({:?}) -> {topic}",
                response.status
            );
        };
        self.scans.close().await?;
        let _ = pump.await;
        result
    }
}

/// What patch-evaluation receives.
enum Incoming {
    Crash(TypedEvent<CrashDetail>),
    Patch(TypedEvent<PatchResponse>),
}

/// A program's crash and patch, while one of them is still missing.
#[derive(Default)]
struct Join {
    crash: Option<TypedEvent<CrashDetail>>,
    patch: Option<TypedEvent<PatchResponse>>,
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
        let options =
            SubscriptionOptions::new("patch-evaluation")?.with_ack_deadline(JOIN_ACK_DEADLINE);
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
    /// and publishes the evaluation; duplicates are acked and ignored. Both messages stay
    /// unacked until the evaluation is published. Stops on `shutdown` or after `expect`
    /// programs; returns the evaluations by program name.
    pub async fn run(
        self,
        publisher: &dyn Publisher,
        format: &EventFormat,
        expect: Option<usize>,
        shutdown: CancellationToken,
    ) -> Result<BTreeMap<String, PatchEvaluation>> {
        let (tx, mut rx) = mpsc::channel(1);
        let pumps = [
            forward(self.crashes.clone(), Incoming::Crash, tx.clone()),
            forward(self.patches.clone(), Incoming::Patch, tx),
        ];
        let topic = topic(PATCH_EVALUATION_TOPIC);
        let mut joins: HashMap<String, Join> = HashMap::new();
        let mut evaluated: BTreeMap<String, PatchEvaluation> = BTreeMap::new();
        let result = loop {
            if expect.is_some_and(|n| evaluated.len() >= n) {
                break Ok(());
            }
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                next = rx.recv() => match next {
                    Some(Ok(incoming)) => incoming,
                    Some(Err(e)) => break Err(e),
                    None => break Ok(()),
                },
            };
            let name = match &incoming {
                Incoming::Crash(crash) => program_name(&crash.data.executable_name),
                Incoming::Patch(patch) => program_name(&patch.data.executable_name),
            }
            .to_string();
            if evaluated.contains_key(&name) {
                println!("patch-evaluation: duplicate for {name} ignored");
                let acked = match incoming {
                    Incoming::Crash(crash) => crash.ack().await,
                    Incoming::Patch(patch) => patch.ack().await,
                };
                if let Err(e) = acked {
                    break Err(e);
                }
                continue;
            }
            let join = joins.entry(name.clone()).or_default();
            // A second copy replaces the first, whose delivery is settled now.
            let replaced = match incoming {
                Incoming::Crash(crash) => {
                    println!("patch-evaluation: crash detail for {name} received");
                    join.crash.replace(crash).map(|old| old.delivery)
                }
                Incoming::Patch(patch) => {
                    println!("patch-evaluation: patch response for {name} received");
                    join.patch.replace(patch).map(|old| old.delivery)
                }
            };
            if let Some(old) = replaced {
                let _ = old.ack().await;
            }
            if join.crash.is_none() || join.patch.is_none() {
                continue;
            }
            let Some(Join {
                crash: Some(crash),
                patch: Some(patch),
            }) = joins.remove(&name)
            else {
                continue;
            };
            let patched = BASE64
                .decode(&patch.data.patch_snippet_base64)
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            let (verdict, reason) = evaluate(patch.data.status, patched.as_deref());
            let evaluation = PatchEvaluation {
                executable_name: name.clone(),
                verdict,
                reason,
                llm_name: patch.data.transformer_metadata.llm_name.clone(),
                crash_event_id: crash.event.id().to_string(),
                patch_event_id: patch.event.id().to_string(),
            };
            let event = event(EVALUATION_SOURCE, PATCH_EVALUATION_TYPE, &name, &evaluation)?;
            publisher.publish_event(&topic, &event, format).await?;
            crash.ack().await?;
            patch.ack().await?;
            println!(
                "patch-evaluation: {name}: {} ({}) -> {topic}",
                evaluation.verdict, evaluation.reason
            );
            evaluated.insert(name, evaluation);
        };
        // Held messages go back: another instance (or the next start) evaluates them.
        for join in joins.into_values() {
            if let Some(crash) = join.crash {
                let _ = crash.nack().await;
            }
            if let Some(patch) = join.patch {
                let _ = patch.nack().await;
            }
        }
        self.crashes.close().await?;
        self.patches.close().await?;
        for pump in pumps {
            let _ = pump.await;
        }
        result.map(|()| evaluated)
    }
}

/// The evaluation summary as a table.
pub fn summary(evaluations: &BTreeMap<String, PatchEvaluation>) -> String {
    let mut text = format!("{:<12} {:<13} {:<14} reason\n", "program", "verdict", "llm");
    for evaluation in evaluations.values() {
        text.push_str(&format!(
            "{:<12} {:<13} {:<14} {}\n",
            evaluation.executable_name,
            evaluation.verdict.to_string(),
            evaluation.llm_name,
            evaluation.reason
        ));
    }
    let fixed = evaluations
        .values()
        .filter(|e| e.verdict == Verdict::Fixed)
        .count();
    text.push_str(&format!("{fixed} of {} fixed\n", evaluations.len()));
    text
}
