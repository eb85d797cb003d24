//! Provisioning: topics and subscriptions created with the subscription options when
//! `gcp.provisioning` is on, looked up (a clear `NotFound`) when it is off.

use bus_core::{Error, ErrorKind, Result, SubscriptionOptions, Topic};
use google_cloud_gax::error::rpc::Code;
use google_cloud_pubsub::model::DeadLetterPolicy;

use crate::errors::{is_code, map_error};
use crate::{lock, names, GcpBackend, BACKEND};

impl GcpBackend {
    /// Makes sure the topic exists: created when provisioning, else assumed (a publish to a
    /// missing topic fails with `NotFound`).
    pub(crate) async fn ensure_topic(&self, topic: &Topic) -> Result<String> {
        if !self.inner.provisioning {
            return self.topic_path(topic);
        }
        self.create_topic_now(topic).await
    }

    /// Creates the topic (whatever `gcp.provisioning` says), unless it is known to exist.
    pub(crate) async fn create_topic_now(&self, topic: &Topic) -> Result<String> {
        let path = self.topic_path(topic)?;
        if lock(&self.inner.known_topics).contains(&path) {
            return Ok(path);
        }
        match self
            .inner
            .topic_admin
            .create_topic()
            .set_name(path.clone())
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if is_code(&e, Code::AlreadyExists) => {}
            Err(e) => return Err(map_error(&e, &format!("creating topic {path} for {topic}"))),
        }
        lock(&self.inner.known_topics).insert(path.clone());
        Ok(path)
    }

    /// Makes sure the subscription exists, created with the options when provisioning.
    pub(crate) async fn ensure_subscription(
        &self,
        topic: &Topic,
        options: &SubscriptionOptions,
    ) -> Result<String> {
        let topic_path = self.ensure_topic(topic).await?;
        let path = self.subscription_path(options, topic)?;
        let admin = &self.inner.subscription_admin;
        if !self.inner.provisioning {
            return match admin.get_subscription().set_subscription(path.clone()).send().await {
                Ok(_) => Ok(path),
                Err(e) if is_code(&e, Code::NotFound) => Err(Error::new(
                    ErrorKind::NotFound,
                    BACKEND,
                    format!(
                        "subscription {} on {topic} (Pub/Sub {path}) does not exist and gcp.provisioning is off; create it (`bus provision FILE`, or gcloud pubsub subscriptions create {} --topic {}) or set gcp.provisioning = true",
                        options.name,
                        names::subscription_id(&options.name, topic)?,
                        names::topic_id(topic)?
                    ),
                )),
                Err(e) => Err(map_error(&e, &format!("looking up subscription {path}"))),
            };
        }
        let deadline_secs = options.ack_deadline.as_secs_f64().ceil().clamp(10.0, 600.0) as i32;
        let mut create = admin
            .create_subscription()
            .set_name(path.clone())
            .set_topic(topic_path)
            .set_ack_deadline_seconds(deadline_secs)
            .set_enable_message_ordering(options.ordered);
        if let Some(policy) = &options.dead_letter {
            let dead_letter_topic = self.ensure_topic(&policy.topic).await?;
            create = create.set_dead_letter_policy(
                DeadLetterPolicy::new()
                    .set_dead_letter_topic(dead_letter_topic)
                    .set_max_delivery_attempts(policy.max_delivery_attempts as i32),
            );
        }
        match create.send().await {
            Ok(_) => Ok(path),
            Err(e) if is_code(&e, Code::AlreadyExists) => Ok(path),
            Err(e) => Err(map_error(&e, &format!("creating subscription {path}"))),
        }
    }
}
