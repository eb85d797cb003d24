//! The bus contract suite against the in-memory backend.

use bus_memory::{MemoryBackend, MemoryConfig};
use bus_testkit::Target;

async fn target() -> Target {
    let config = MemoryConfig {
        name: "contract".into(),
        ..MemoryConfig::default()
    };
    Target::new(
        MemoryBackend::connect(&config)
            .await
            .expect("default config is valid"),
    )
}

bus_testkit::contract_suite!(target());
