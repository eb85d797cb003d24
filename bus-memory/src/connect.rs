//! The broker: topics and their subscriptions, shared by name within the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use bus_core::{Backend, Capabilities, Publisher, Result, Subscriber, Topic};

use crate::subscriber::SubscriptionState;
use crate::{
    capabilities, lock, read, write, MemoryConfig, MemoryPublisher, MemorySubscriber, BACKEND,
};

/// An in-process broker. Cheap to clone; clones share the same topics and subscriptions.
#[derive(Clone)]
pub struct MemoryBackend {
    pub(crate) inner: Arc<BrokerInner>,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

pub(crate) struct BrokerInner {
    pub config: MemoryConfig,
    pub capabilities: Capabilities,
    topics: RwLock<HashMap<Topic, Arc<TopicState>, foldhash::fast::RandomState>>,
    pub next_message_id: AtomicU64,
}

#[derive(Default)]
pub(crate) struct TopicState {
    pub subscriptions: RwLock<BTreeMap<String, Arc<SubscriptionState>>>,
    /// The same subscriptions as a list that publishers clone without allocating; rebuilt on
    /// the (rare) subscribe that adds one.
    pub fan_out: RwLock<Arc<[Arc<SubscriptionState>]>>,
}

impl MemoryBackend {
    /// The process-wide broker named `config.name`, made with `config` on first use. Later
    /// calls with the same name return the same broker (and ignore the rest of `config`), so
    /// services running in one process reach each other through it; a name of its own gives a
    /// broker of its own.
    pub async fn connect(config: &MemoryConfig) -> Result<Self> {
        static REGISTRY: OnceLock<Mutex<HashMap<String, MemoryBackend>>> = OnceLock::new();
        let mut registry = lock(REGISTRY.get_or_init(Default::default));
        if let Some(broker) = registry.get(&config.name) {
            return Ok(broker.clone());
        }
        config.validate()?;
        let broker = MemoryBackend {
            inner: Arc::new(BrokerInner {
                config: config.clone(),
                capabilities: capabilities(config),
                topics: RwLock::default(),
                next_message_id: AtomicU64::new(1),
            }),
        };
        registry.insert(config.name.clone(), broker.clone());
        Ok(broker)
    }

    /// The configuration the broker was made with.
    pub fn config(&self) -> &MemoryConfig {
        &self.inner.config
    }

    pub(crate) fn topic(&self, topic: &Topic) -> Arc<TopicState> {
        if let Some(state) = read(&self.inner.topics).get(topic) {
            return state.clone();
        }
        write(&self.inner.topics)
            .entry(topic.clone())
            .or_default()
            .clone()
    }
}

impl BrokerInner {
    pub fn publish_timeout(&self) -> Option<Duration> {
        match self.config.publish_timeout_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities.clone()
    }

    fn publisher(&self) -> Box<dyn Publisher> {
        Box::new(MemoryPublisher::new(self.clone()))
    }

    fn subscriber(&self) -> Box<dyn Subscriber> {
        Box::new(MemorySubscriber::new(self.clone()))
    }

    /// Nothing to release: the broker lives as long as the process (it is shared by name).
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
