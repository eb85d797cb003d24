//! Settling: ack and nack go through the client's handler (the client sends them in batches
//! and, for an ack, forgets the message's attempt count).

use std::sync::Mutex;

use async_trait::async_trait;
use bus_core::{Acker, Result};
use google_cloud_pubsub::subscriber::handler::Handler;

use crate::connect::AttemptCounts;
use crate::lock;

/// Settles one delivery.
pub(crate) struct GcpAcker {
    handler: Mutex<Option<Handler>>,
    attempts: AttemptCounts,
    id: String,
}

impl GcpAcker {
    pub(crate) fn new(handler: Handler, attempts: AttemptCounts, id: String) -> Self {
        GcpAcker {
            handler: Mutex::new(Some(handler)),
            attempts,
            id,
        }
    }
}

#[async_trait]
impl Acker for GcpAcker {
    async fn ack(&self) -> Result<()> {
        if let Some(handler) = lock(&self.handler).take() {
            handler.ack();
            lock(&self.attempts).remove(&self.id);
        }
        Ok(())
    }

    async fn nack(&self) -> Result<()> {
        if let Some(handler) = lock(&self.handler).take() {
            handler.nack();
        }
        Ok(())
    }
}
