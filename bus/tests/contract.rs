//! The contract suite through the facade: the backend comes from configuration (`bus.toml` /
//! `BUS_BACKEND`, default memory), exactly as a service would get it.

use bus::Config;
use bus_testkit::Target;

async fn target() -> Target {
    let config = Config::load().expect("bus configuration");
    let backend = bus::connect_backend(&config)
        .await
        .expect("connect to the configured backend");
    Target::shared(backend.into())
}

bus_testkit::contract_suite!(target());
