//! Answers each scan result with a patch response, until Ctrl-C or SIGTERM.

use bus_examples::analysis::{load_sources, OfflineStubLlm};
use bus_examples::pipeline::LlmDispatch;
use bus_examples::runtime::{exit_on_error, shutdown_signal, stop_within, Service};

#[tokio::main]
async fn main() {
    exit_on_error("llm-dispatch", run().await);
}

async fn run() -> bus::Result<()> {
    let shutdown = shutdown_signal();
    let service = Service::start("llm-dispatch").await?;
    let sources = load_sources(service.settings.sources_dir.as_deref())
        .map_err(|e| bus::Error::config("autopatch", format!("app.sources_dir: {e}")))?;
    let dispatch = LlmDispatch::subscribe(&*service.bus.subscriber).await?;
    let answered = stop_within(
        "llm-dispatch",
        &shutdown,
        dispatch.run(
            &*service.bus.publisher,
            &service.format,
            &sources,
            &OfflineStubLlm,
            shutdown.clone(),
        ),
    )
    .await?;
    service.bus.close().await?;
    println!("llm-dispatch: stopped after {answered} patches");
    Ok(())
}
