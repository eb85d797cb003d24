//! The whole autopatch pipeline in one process, on the configured backend (by default the
//! in-memory broker): consumers subscribe first, then the producers publish, and the demo
//! prints the evaluation summary once every program is evaluated.

use std::path::Path;

use bus_examples::analysis::{load_sources, OfflineStubLlm};
use bus_examples::pipeline::{
    cpg_generator, fuzzing_service, summary, JoinSettings, LlmDispatch, PatchEvaluator,
};
use bus_examples::runtime::{exit_on_error, shutdown_signal, stop_within, Service};
use bus_examples::store::JoinStore;

#[tokio::main]
async fn main() {
    exit_on_error("autopatch-demo", run().await);
}

async fn run() -> bus::Result<()> {
    let shutdown = shutdown_signal();
    let service = Service::start("autopatch-demo").await?;
    let sources = load_sources(service.settings.sources_dir.as_deref())
        .map_err(|e| bus::Error::config("autopatch", format!("app.sources_dir: {e}")))?;
    let (publisher, subscriber) = (&*service.bus.publisher, &*service.bus.subscriber);
    let format = &service.format;
    // Every program ends in one evaluation (one without a finding as `no_finding`).
    let expect = service.settings.expect.unwrap_or(sources.len());
    let store = JoinStore::open(
        service
            .settings
            .state_file
            .as_deref()
            .unwrap_or(Path::new(":memory:")),
    )?;
    let settings = JoinSettings {
        expect: Some(expect),
        orphan_timeout: service.settings.orphan_timeout(),
    };

    let evaluator = PatchEvaluator::subscribe(subscriber).await?;
    let dispatch = LlmDispatch::subscribe(subscriber).await?;
    let dispatch_stop = shutdown.child_token();
    let evaluate = async {
        let evaluated = evaluator
            .run(publisher, format, &store, settings, shutdown.clone())
            .await;
        // Every program is evaluated (or the demo was stopped): llm-dispatch can stop too.
        dispatch_stop.cancel();
        evaluated
    };
    let produce = async {
        fuzzing_service(publisher, format, &sources).await?;
        cpg_generator(publisher, format, &sources).await
    };
    let all = async {
        Ok(tokio::join!(
            evaluate,
            dispatch.run(
                publisher,
                format,
                &sources,
                &OfflineStubLlm,
                dispatch_stop.clone()
            ),
            produce,
        ))
    };
    let (evaluated, answered, produced) = stop_within("autopatch-demo", &shutdown, all).await?;
    let evaluated = evaluated?;
    produced?;
    answered?;
    service.bus.close().await?;
    println!();
    print!("{}", summary(&evaluated));
    Ok(())
}
