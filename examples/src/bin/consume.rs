//! Prints what arrives on `python/mqtt`; answers `Hello` with `HI` on `test`. Stops on Ctrl-C
//! or SIGTERM after finishing the message in hand.

use bus::{ErrorKind, Message, SubscriptionOptions, Topic};
use bus_examples::runtime::{exit_on_error, shutdown_signal, stop_within, Service};
use bus_examples::{DEMO_TOPIC, REPLY_TOPIC};

#[tokio::main]
async fn main() {
    exit_on_error("consume", run().await);
}

async fn run() -> bus::Result<()> {
    let shutdown = shutdown_signal();
    let service = Service::start("consume").await?;
    let topic = Topic::new(DEMO_TOPIC)?;
    let reply = Topic::new(REPLY_TOPIC)?;
    let subscription = service
        .bus
        .subscriber
        .subscribe(&topic, SubscriptionOptions::new("consume")?)
        .await?;
    eprintln!("consume: ready, subscribed to {topic}");
    let receiving = async {
        Ok(loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                delivery = subscription.receive() => delivery,
            };
            let delivery = match delivery {
                Ok(delivery) => delivery,
                Err(e) if e.kind() == ErrorKind::Closed => break Ok(()),
                Err(e) if e.is_retryable() => {
                    eprintln!("consume: receive failed, retrying: {e}");
                    continue;
                }
                Err(e) => break Err(e),
            };
            let payload = bus::printable(&String::from_utf8_lossy(delivery.payload()));
            if payload == "Hello" {
                service
                    .bus
                    .publisher
                    .publish(&reply, Message::new("HI"))
                    .await?;
                println!("It works");
            } else {
                println!("{payload}");
            }
            delivery.ack().await?;
        })
    };
    let result = stop_within("consume", &shutdown, receiving).await?;
    subscription.close().await?;
    service.bus.close().await?;
    eprintln!("consume: stopped");
    result
}
