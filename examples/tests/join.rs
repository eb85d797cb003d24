//! patch-evaluation's join, in process on the memory backend: a patch that arrives before its
//! crash, and duplicates of both, give exactly one evaluation per program.

use std::time::Duration;

use bus::cloudevents::{EventFormat, PublishEvent};
use bus::memory::{MemoryBackend, MemoryConfig};
use bus::Backend;
use bus_examples::analysis::{samples, scan, Llm, OfflineStubLlm};
use bus_examples::pipeline::{JoinSettings, PatchEvaluator};
use bus_examples::schema::*;
use bus_examples::store::JoinStore;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn any_order_and_duplicates_give_one_evaluation_per_program() {
    let broker = MemoryBackend::connect(&MemoryConfig {
        name: "join-test".into(),
        ..MemoryConfig::default()
    })
    .await
    .unwrap();
    let (publisher, subscriber) = (broker.publisher(), broker.subscriber());
    let evaluator = PatchEvaluator::subscribe(&*subscriber).await.unwrap();
    let format = EventFormat::structured();

    let file = &samples()[0];
    let name = program_name(&file.name).to_string();
    let outcome = OfflineStubLlm.patch(file, &scan(file).unwrap());
    let patch = PatchResponse {
        executable_name: file.name.clone(),
        patch_snippet_base64: base64_encode(&outcome.patched_source),
        status: outcome.status,
        transformer_metadata: OfflineStubLlm.metadata(),
    };
    let crash = CrashDetail {
        executable_name: name.clone(),
        crash_detail_base64: "QUFBQQ==".into(),
        is_input_from_file: false,
    };
    let patch_event = event(LLM_DISPATCH_SOURCE, PATCH_RESPONSE_TYPE, &file.name, &patch).unwrap();
    let crash_event = event(FUZZING_SOURCE, CRASH_DETAIL_TYPE, &name, &crash).unwrap();
    // The patch first, twice; then the crash, twice (as a redelivery would).
    for (topic_name, event) in [
        (PATCH_RESPONSE_TOPIC, &patch_event),
        (PATCH_RESPONSE_TOPIC, &patch_event),
        (CRASH_DETAIL_TOPIC, &crash_event),
        (CRASH_DETAIL_TOPIC, &crash_event),
    ] {
        publisher
            .publish_event(&topic(topic_name), event, &format)
            .await
            .unwrap();
    }

    // Runs until stopped: give the duplicates time to arrive, then stop it.
    let stop = CancellationToken::new();
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.cancel();
        })
    };
    let store = JoinStore::open(std::path::Path::new(":memory:")).unwrap();
    let settings = JoinSettings {
        expect: None,
        orphan_timeout: Duration::from_secs(600),
    };
    let evaluations = evaluator
        .run(&publisher, &format, &store, settings, stop)
        .await
        .unwrap();
    stopper.await.unwrap();
    assert_eq!(evaluations.len(), 1, "{evaluations:?}");
    let evaluation = &evaluations[&name];
    assert_eq!(evaluation.verdict, Verdict::Fixed);
    assert_eq!(
        evaluation.crash_event_id,
        bus::cloudevents::AttributesReader::id(&crash_event)
    );
    assert_eq!(
        evaluation.patch_event_id,
        bus::cloudevents::AttributesReader::id(&patch_event)
    );
    publisher.close().await.unwrap();
    subscriber.close().await.unwrap();
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A memory broker of its own, a publisher and a subscriber.
async fn broker(name: &str) -> (Box<dyn bus::Publisher>, Box<dyn bus::Subscriber>) {
    let broker = MemoryBackend::connect(&MemoryConfig {
        name: format!("{name}-{}", uuid::Uuid::new_v4().simple()),
        ..MemoryConfig::default()
    })
    .await
    .unwrap();
    (broker.publisher(), broker.subscriber())
}

fn crash_for(name: &str) -> bus::cloudevents::Event {
    let crash = CrashDetail {
        executable_name: name.to_string(),
        crash_detail_base64: "QUFBQQ==".into(),
        is_input_from_file: false,
    };
    event(FUZZING_SOURCE, CRASH_DETAIL_TYPE, name, &crash).unwrap()
}

fn patch_for(file: &bus_examples::analysis::SourceFile) -> bus::cloudevents::Event {
    let outcome = OfflineStubLlm.patch(file, &scan(file).unwrap());
    let patch = PatchResponse {
        executable_name: file.name.clone(),
        patch_snippet_base64: base64_encode(&outcome.patched_source),
        status: outcome.status,
        transformer_metadata: OfflineStubLlm.metadata(),
    };
    event(LLM_DISPATCH_SOURCE, PATCH_RESPONSE_TYPE, &file.name, &patch).unwrap()
}

/// What patch-evaluation saw and evaluated is kept in its store: after a restart the second
/// half of a join still finds the first, duplicates of evaluated programs are ignored, and
/// `expect` counts what was evaluated before the restart.
#[tokio::test]
async fn a_restarted_evaluator_remembers_what_it_saw_and_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("join.sqlite3");
    let (publisher, subscriber) = broker("restart").await;
    let format = EventFormat::structured();
    let samples = samples();
    let (first, second) = (&samples[0], &samples[1]);
    let settings = |expect| JoinSettings {
        expect,
        orphan_timeout: Duration::from_secs(600),
    };
    let publish = |topic_name: &'static str, event: bus::cloudevents::Event| {
        let (publisher, format) = (&publisher, &format);
        async move {
            publisher
                .publish_event(&topic(topic_name), &event, format)
                .await
                .unwrap();
        }
    };

    // First run: the first program is evaluated, the second one's crash is held.
    let evaluator = PatchEvaluator::subscribe(&*subscriber).await.unwrap();
    publish(CRASH_DETAIL_TOPIC, crash_for(program_name(&first.name))).await;
    publish(PATCH_RESPONSE_TOPIC, patch_for(first)).await;
    publish(CRASH_DETAIL_TOPIC, crash_for(program_name(&second.name))).await;
    let store = JoinStore::open(&path).unwrap();
    let stop = CancellationToken::new();
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.cancel();
        })
    };
    let evaluated = evaluator
        .run(&*publisher, &format, &store, settings(None), stop)
        .await
        .unwrap();
    stopper.await.unwrap();
    assert_eq!(evaluated.len(), 1, "{evaluated:?}");
    drop(store);

    // Second run, same store: the first program's crash comes again (a redelivery), the
    // second program's patch arrives; expect = 2 is met by the earlier evaluation plus one.
    let evaluator = PatchEvaluator::subscribe(&*subscriber).await.unwrap();
    publish(CRASH_DETAIL_TOPIC, crash_for(program_name(&first.name))).await;
    publish(PATCH_RESPONSE_TOPIC, patch_for(second)).await;
    let store = JoinStore::open(&path).unwrap();
    let evaluated = tokio::time::timeout(
        Duration::from_secs(10),
        evaluator.run(
            &*publisher,
            &format,
            &store,
            settings(Some(2)),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("expect = 2 is met across the restart")
    .unwrap();
    assert_eq!(evaluated.len(), 2, "{evaluated:?}");
    assert!(
        evaluated.values().all(|e| e.verdict == Verdict::Fixed),
        "{evaluated:?}"
    );
}

/// A crash that never gets a patch ends in an `unmatched` evaluation after the orphan
/// timeout, instead of being held (and redelivered) for ever.
#[tokio::test]
async fn an_orphan_is_evaluated_unmatched_after_the_timeout() {
    let (publisher, subscriber) = broker("orphan").await;
    let format = EventFormat::structured();
    let evaluator = PatchEvaluator::subscribe(&*subscriber).await.unwrap();
    publisher
        .publish_event(&topic(CRASH_DETAIL_TOPIC), &crash_for("nopatch"), &format)
        .await
        .unwrap();
    let store = JoinStore::open(std::path::Path::new(":memory:")).unwrap();
    let settings = JoinSettings {
        expect: Some(1),
        orphan_timeout: Duration::from_secs(1),
    };
    let evaluated = tokio::time::timeout(
        Duration::from_secs(10),
        evaluator.run(
            &*publisher,
            &format,
            &store,
            settings,
            CancellationToken::new(),
        ),
    )
    .await
    .expect("the orphan is evaluated")
    .unwrap();
    let evaluation = &evaluated["nopatch"];
    assert_eq!(evaluation.verdict, Verdict::Unmatched);
    assert!(
        evaluation.reason.contains("no patch"),
        "{}",
        evaluation.reason
    );
}

/// Stopping with messages pending and more queued behind them returns promptly (it used to
/// wait for ever on a full channel nobody read).
#[tokio::test]
async fn stopping_with_messages_pending_returns_promptly() {
    let (publisher, subscriber) = broker("stop").await;
    let format = EventFormat::structured();
    let evaluator = PatchEvaluator::subscribe(&*subscriber).await.unwrap();
    for i in 0..200 {
        publisher
            .publish_event(
                &topic(CRASH_DETAIL_TOPIC),
                &crash_for(&format!("p{i}")),
                &format,
            )
            .await
            .unwrap();
    }
    let store = JoinStore::open(std::path::Path::new(":memory:")).unwrap();
    let stop = CancellationToken::new();
    let stopper = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.cancel();
        })
    };
    let settings = JoinSettings {
        expect: None,
        orphan_timeout: Duration::from_secs(600),
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        evaluator.run(&*publisher, &format, &store, settings, stop),
    )
    .await
    .expect("stops within 10 s")
    .unwrap();
    stopper.await.unwrap();
}
