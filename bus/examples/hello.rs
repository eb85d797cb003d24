//! The smallest bus program: a consumer and a publisher in one process, on whatever backend the
//! configuration names (`bus.toml` / `BUS_BACKEND`; the default is the in-memory broker).
//!
//! ```text
//! cargo run -p bus --example hello
//! ```

use std::time::Duration;

use bus::{Config, Message, SubscriptionOptions, Topic};

#[tokio::main]
async fn main() -> bus::Result<()> {
    let config = Config::load()?;
    println!(
        "backend: {} (from {})",
        config.backend.as_str(),
        config.backend_origin()
    );
    let bus = bus::connect(&config).await?;
    let topic = Topic::new("python/mqtt")?;
    let subscription = bus
        .subscriber
        .subscribe(&topic, SubscriptionOptions::new("hello-consumer")?)
        .await?;

    let messages = ["Hello".to_string()]
        .into_iter()
        .chain((2..=5).map(|n| format!("messages: {n}")));
    for text in messages {
        bus.publisher
            .publish(&topic, Message::new(text.clone()))
            .await?;
        println!("Send `{text}` to topic `{topic}`");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for _ in 0..5 {
        let delivery = subscription.receive().await?;
        match delivery.payload().as_ref() {
            b"Hello" => println!("It works"),
            other => println!("Received `{}`", String::from_utf8_lossy(other)),
        }
        delivery.ack().await?;
    }
    bus.close().await
}
