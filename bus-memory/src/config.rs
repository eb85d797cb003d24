//! `[memory]` configuration.

use bus_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::{BACKEND, PER_MESSAGE_OVERHEAD};

/// Configuration of the in-memory backend (`[memory]` in `bus.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Brokers are shared by name within a process (see
    /// [`MemoryBackend::connect`](crate::MemoryBackend::connect)), so services that run in one
    /// process talk to each other. Default `default`.
    #[serde(deserialize_with = "bus_core::config::string")]
    pub name: String,
    /// Most bytes of unacked messages one subscription holds before publishers wait.
    /// Default 64 MiB.
    pub max_queued_bytes: usize,
    /// How long a publish waits for room before it fails with a retryable timeout error;
    /// 0 waits forever. Default 30,000 ms.
    pub publish_timeout_ms: u64,
    /// Largest message accepted (payload plus attributes and ordering key). Default 10 MiB,
    /// Pub/Sub's limit, so what works here works there.
    pub max_message_bytes: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            name: "default".to_string(),
            max_queued_bytes: 64 * 1024 * 1024,
            publish_timeout_ms: 30_000,
            max_message_bytes: 10 * 1024 * 1024,
        }
    }
}

impl MemoryConfig {
    /// Checks every value, naming the key and the fix.
    pub fn validate(&self) -> Result<()> {
        if self.max_message_bytes == 0 {
            return Err(Error::config(
                BACKEND,
                "memory.max_message_bytes = 0 would reject every message; set it to at least 1 (default 10485760)",
            ));
        }
        let smallest = self.max_message_bytes.saturating_add(PER_MESSAGE_OVERHEAD);
        if self.max_queued_bytes < smallest {
            return Err(Error::config(
                BACKEND,
                format!(
                    "memory.max_queued_bytes = {} cannot hold one message of memory.max_message_bytes = {} (plus {PER_MESSAGE_OVERHEAD} bytes overhead); set it to at least {smallest}",
                    self.max_queued_bytes, self.max_message_bytes
                ),
            ));
        }
        if self.max_queued_bytes > Semaphore::MAX_PERMITS {
            return Err(Error::config(
                BACKEND,
                format!(
                    "memory.max_queued_bytes = {} is larger than the supported maximum {}",
                    self.max_queued_bytes,
                    Semaphore::MAX_PERMITS
                ),
            ));
        }
        Ok(())
    }
}
