//! patch-evaluation's join, in process on the memory backend: a patch that arrives before its
//! crash, and duplicates of both, give exactly one evaluation per program.

use std::time::Duration;

use bus::cloudevents::{EventFormat, PublishEvent};
use bus::memory::{MemoryBackend, MemoryConfig};
use bus::Backend;
use bus_examples::analysis::{samples, scan, Llm, OfflineStubLlm};
use bus_examples::pipeline::PatchEvaluator;
use bus_examples::schema::*;
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
    let evaluations = evaluator
        .run(&publisher, &format, None, stop)
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
