//! Sends `Hello`, then `messages: 2` … `messages: 5` to `python/mqtt`, one per interval.

use std::time::Duration;

use bus::{Message, Topic};
use bus_examples::runtime::{exit_on_error, Service};
use bus_examples::DEMO_TOPIC;
use clap::Parser;

/// Publishes the seed's five demo messages.
#[derive(Parser)]
struct Args {
    /// Pause between messages, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    exit_on_error("publish", run(args).await);
}

async fn run(args: Args) -> bus::Result<()> {
    let service = Service::start("publish").await?;
    let topic = Topic::new(DEMO_TOPIC)?;
    for n in 1..=5 {
        let text = if n == 1 {
            "Hello".to_string()
        } else {
            format!("messages: {n}")
        };
        service
            .bus
            .publisher
            .publish(&topic, Message::new(text.clone()))
            .await?;
        println!("Send `{text}` to topic `{topic}`");
        if n < 5 {
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
    }
    service.bus.close().await
}
