//! The bus contract suite against the in-memory backend.

use std::sync::Arc;

use bus_core::{Capabilities, Publisher, Result, Subscriber};
use bus_memory::{MemoryBroker, MemoryConfig};
use bus_testkit::BackendFactory;

struct MemoryFactory(MemoryBroker);

#[async_trait::async_trait]
impl BackendFactory for MemoryFactory {
    fn name(&self) -> &'static str {
        bus_memory::BACKEND
    }
    fn capabilities(&self) -> Capabilities {
        self.0.publisher().capabilities()
    }
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok(Box::new(self.0.publisher()))
    }
    async fn subscriber(&self) -> Result<Box<dyn Subscriber>> {
        Ok(Box::new(self.0.subscriber()))
    }
}

async fn factory() -> Arc<dyn BackendFactory> {
    Arc::new(MemoryFactory(
        MemoryBroker::new(MemoryConfig::default()).expect("default config is valid"),
    ))
}

bus_testkit::contract_suite!(factory());
