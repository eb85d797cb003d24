//! Joins crash details with patch responses and publishes evaluations, until Ctrl-C, SIGTERM
//! or `app.expect` programs are evaluated; then prints the summary. Its join state is an
//! SQLite file (`app.state_file`), so a restart remembers what it saw and evaluated.

use std::path::PathBuf;

use bus_examples::pipeline::{summary, JoinSettings, PatchEvaluator};
use bus_examples::runtime::{exit_on_error, shutdown_signal, stop_within, Service};
use bus_examples::store::JoinStore;

#[tokio::main]
async fn main() {
    exit_on_error("patch-evaluation", run().await);
}

async fn run() -> bus::Result<()> {
    let shutdown = shutdown_signal();
    let service = Service::start("patch-evaluation").await?;
    let path = service
        .settings
        .state_file
        .clone()
        .unwrap_or_else(|| PathBuf::from("patch-evaluation.sqlite3"));
    let store = JoinStore::open(&path)?;
    let evaluator = PatchEvaluator::subscribe(&*service.bus.subscriber).await?;
    let settings = JoinSettings {
        expect: service.settings.expect,
        orphan_timeout: service.settings.orphan_timeout(),
    };
    let evaluations = stop_within(
        "patch-evaluation",
        &shutdown,
        evaluator.run(
            &*service.bus.publisher,
            &service.format,
            &store,
            settings,
            shutdown.clone(),
        ),
    )
    .await?;
    service.bus.close().await?;
    print!("{}", summary(&evaluations));
    Ok(())
}
