//! The whole autopatch pipeline in one process, on the configured backend (by default the
//! in-memory broker): consumers subscribe first, then the producers publish, and the demo
//! prints the evaluation summary once every program is evaluated.

use bus_examples::analysis::{load_sources, scan, OfflineStubLlm};
use bus_examples::pipeline::{
    cpg_generator, fuzzing_service, summary, LlmDispatch, PatchEvaluator,
};
use bus_examples::runtime::{exit_on_error, shutdown_signal, Service};

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
    // Programs with a finding get a patch, and so an evaluation.
    let expect = service
        .settings
        .expect
        .unwrap_or_else(|| sources.iter().filter(|f| scan(f).is_some()).count());

    let evaluator = PatchEvaluator::subscribe(subscriber).await?;
    let dispatch = LlmDispatch::subscribe(subscriber).await?;
    let dispatch_stop = shutdown.child_token();
    let evaluate = async {
        let evaluated = evaluator
            .run(publisher, format, Some(expect), shutdown.clone())
            .await;
        // Every program is evaluated (or the demo was stopped): llm-dispatch can stop too.
        dispatch_stop.cancel();
        evaluated
    };
    let produce = async {
        fuzzing_service(publisher, format, &sources).await?;
        cpg_generator(publisher, format, &sources).await
    };
    let (evaluated, answered, produced) = tokio::join!(
        evaluate,
        dispatch.run(
            publisher,
            format,
            &sources,
            &OfflineStubLlm,
            dispatch_stop.clone()
        ),
        produce,
    );
    let evaluated = evaluated?;
    produced?;
    answered?;
    service.bus.close().await?;
    println!();
    print!("{}", summary(&evaluated));
    Ok(())
}
