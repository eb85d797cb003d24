//! The contract suite through the facade: the backend comes from configuration (`bus.toml` /
//! `BUS_BACKEND`, default memory), exactly as a service would get it.

use std::sync::Arc;

use bus::{Capabilities, Config, Publisher, Result, Subscriber};
use bus_testkit::BackendFactory;

struct ConfiguredFactory {
    config: Config,
    capabilities: Capabilities,
    name: &'static str,
}

#[async_trait::async_trait]
impl BackendFactory for ConfiguredFactory {
    fn name(&self) -> &'static str {
        self.name
    }
    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }
    async fn publisher(&self) -> Result<Box<dyn Publisher>> {
        Ok(bus::connect(&self.config).await?.publisher)
    }
    async fn subscriber(&self) -> Result<Box<dyn Subscriber>> {
        Ok(bus::connect(&self.config).await?.subscriber)
    }
}

async fn factory() -> Arc<dyn BackendFactory> {
    let config = Config::load().expect("bus configuration");
    let probe = bus::connect(&config)
        .await
        .expect("connect to the configured backend");
    Arc::new(ConfiguredFactory {
        capabilities: probe.publisher.capabilities(),
        name: config.backend.as_str(),
        config,
    })
}

bus_testkit::contract_suite!(factory());
