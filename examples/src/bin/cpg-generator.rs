//! Publishes a scan result for each vulnerable C file of `app.sources_dir` (or the samples).

use bus_examples::analysis::load_sources;
use bus_examples::pipeline::cpg_generator;
use bus_examples::runtime::{exit_on_error, Service};

#[tokio::main]
async fn main() {
    exit_on_error("cpg-generator", run().await);
}

async fn run() -> bus::Result<()> {
    let service = Service::start("cpg-generator").await?;
    let sources = load_sources(service.settings.sources_dir.as_deref())
        .map_err(|e| bus::Error::config("autopatch", format!("app.sources_dir: {e}")))?;
    cpg_generator(&*service.bus.publisher, &service.format, &sources).await?;
    service.bus.close().await
}
