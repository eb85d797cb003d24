//! Publishes a crash detail for each C file of `app.sources_dir` (or the built-in samples).

use bus_examples::analysis::load_sources;
use bus_examples::pipeline::fuzzing_service;
use bus_examples::runtime::{exit_on_error, Service};

#[tokio::main]
async fn main() {
    exit_on_error("fuzzing-service", run().await);
}

async fn run() -> bus::Result<()> {
    let service = Service::start("fuzzing-service").await?;
    let sources = load_sources(service.settings.sources_dir.as_deref())
        .map_err(|e| bus::Error::config("autopatch", format!("app.sources_dir: {e}")))?;
    fuzzing_service(&*service.bus.publisher, &service.format, &sources).await?;
    service.bus.close().await
}
