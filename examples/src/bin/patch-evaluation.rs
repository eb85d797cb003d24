//! Joins crash details with patch responses and publishes evaluations, until Ctrl-C, SIGTERM
//! or `app.expect` programs are evaluated; then prints the summary.

use bus_examples::pipeline::{summary, PatchEvaluator};
use bus_examples::runtime::{exit_on_error, shutdown_signal, Service};

#[tokio::main]
async fn main() {
    exit_on_error("patch-evaluation", run().await);
}

async fn run() -> bus::Result<()> {
    let shutdown = shutdown_signal();
    let service = Service::start("patch-evaluation").await?;
    let evaluator = PatchEvaluator::subscribe(&*service.bus.subscriber).await?;
    let evaluations = evaluator
        .run(
            &*service.bus.publisher,
            &service.format,
            service.settings.expect,
            shutdown,
        )
        .await?;
    service.bus.close().await?;
    print!("{}", summary(&evaluations));
    Ok(())
}
