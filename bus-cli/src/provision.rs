//! `bus provision FILE`: creates the topics and subscriptions a deployment needs, from a TOML
//! file, before any service starts; running it again changes nothing.
//!
//! On Pub/Sub topics and subscriptions are resources (a subscription only keeps what is
//! published after it exists); on MQTT a subscription is made durable by bus-mqtt's anchor
//! session, which keeps its messages until the first consumer attaches.

use std::path::PathBuf;
use std::time::Duration;

use bus::{Config, SubscriptionOptions, Topic};
use clap::Args;
use serde::Deserialize;

use crate::{connect, Failure};

/// `bus provision` arguments.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// The TOML file listing `[[topic]]` and `[[subscription]]` entries.
    file: PathBuf,
    /// Check the file and print what would be created, without connecting.
    #[arg(long)]
    dry_run: bool,
}

/// The provisioning file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plan {
    #[serde(default)]
    topic: Vec<TopicEntry>,
    #[serde(default)]
    subscription: Vec<SubscriptionEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicEntry {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionEntry {
    topic: String,
    name: String,
    ack_deadline_secs: Option<u64>,
    #[serde(default)]
    ordered: bool,
    dead_letter_topic: Option<String>,
    max_delivery_attempts: Option<u32>,
}

/// What the file asks for, checked.
#[derive(Debug)]
struct Checked {
    topics: Vec<Topic>,
    subscriptions: Vec<(Topic, SubscriptionOptions)>,
}

fn check(file: &str, plan: Plan) -> Result<Checked, Failure> {
    let bad = |what: String, e: bus::Error| Failure::Usage(format!("{file}: {what}: {e}"));
    let mut topics = Vec::new();
    for (index, entry) in plan.topic.iter().enumerate() {
        let topic = Topic::new(&entry.name)
            .map_err(|e| bad(format!("topic[{index}].name = {:?}", entry.name), e))?;
        topics.push(topic);
    }
    let mut subscriptions = Vec::new();
    for (index, entry) in plan.subscription.into_iter().enumerate() {
        let at = |key: &str| format!("subscription[{index}].{key}");
        let topic = Topic::new(&entry.topic)
            .map_err(|e| bad(format!("{} = {:?}", at("topic"), entry.topic), e))?;
        let mut options = SubscriptionOptions::new(&entry.name)
            .map_err(|e| bad(format!("{} = {:?}", at("name"), entry.name), e))?
            .with_ordering(entry.ordered);
        if let Some(secs) = entry.ack_deadline_secs {
            options = options.with_ack_deadline(Duration::from_secs(secs));
        }
        match (entry.dead_letter_topic, entry.max_delivery_attempts) {
            (Some(dead_letter), attempts) => {
                let dead_letter = Topic::new(&dead_letter).map_err(|e| {
                    bad(format!("{} = {dead_letter:?}", at("dead_letter_topic")), e)
                })?;
                // The dead-letter topic must exist for the subscription to use it.
                if !topics.contains(&dead_letter) {
                    topics.push(dead_letter.clone());
                }
                options = options.with_dead_letter(
                    dead_letter,
                    attempts.unwrap_or(bus::DEFAULT_MAX_DELIVERY_ATTEMPTS),
                );
            }
            (None, Some(_)) => {
                return Err(Failure::Usage(format!(
                    "{file}: {} is set without {}; add the dead-letter topic or remove it",
                    at("max_delivery_attempts"),
                    at("dead_letter_topic")
                )))
            }
            (None, None) => {}
        }
        // A subscription's topic exists too, so that publishers can publish to it at once.
        if !topics.contains(&topic) {
            topics.push(topic.clone());
        }
        subscriptions.push((topic, options));
    }
    Ok(Checked {
        topics,
        subscriptions,
    })
}

fn describe(options: &SubscriptionOptions, topic: &Topic) -> String {
    let mut text = format!(
        "subscription {} on {topic} (ack deadline {} s",
        options.name,
        options.ack_deadline.as_secs()
    );
    if options.ordered {
        text.push_str(", ordered");
    }
    if let Some(policy) = &options.dead_letter {
        text.push_str(&format!(
            ", dead-letter to {} after {} attempts",
            policy.topic, policy.max_delivery_attempts
        ));
    }
    text.push(')');
    text
}

/// Runs `bus provision`.
pub async fn run(config: &Config, args: ProvisionArgs) -> Result<(), Failure> {
    let file = bus::printable(&args.file.display().to_string());
    let text = std::fs::read_to_string(&args.file).map_err(|e| {
        Failure::Usage(format!(
            "{file}: {e}; give the path of a provisioning TOML file"
        ))
    })?;
    let plan: Plan = toml::from_str(&text)
        .map_err(|e| Failure::Usage(format!("{file}: {}", one_line(&e.to_string()))))?;
    let checked = check(&file, plan)?;
    if args.dry_run {
        for topic in &checked.topics {
            println!("would create topic {topic}");
        }
        for (topic, options) in &checked.subscriptions {
            println!("would create {}", describe(options, topic));
        }
        return Ok(());
    }
    let backend = connect(config, "provision").await?;
    let capabilities = backend.capabilities();
    for (topic, options) in &checked.subscriptions {
        options
            .check(backend.name(), &capabilities)
            .map_err(|e| Failure::Usage(format!("{file}: {}: {e}", describe(options, topic))))?;
    }
    let outcome = async {
        for topic in &checked.topics {
            backend
                .create_topic(topic)
                .await
                .map_err(|e| Failure::from(e).context(&format!("topic {topic}")))?;
            println!("topic {topic}: ready");
        }
        let subscriber = backend.subscriber();
        for (topic, options) in &checked.subscriptions {
            subscriber
                .create_subscription(topic, options.clone())
                .await
                .map_err(|e| Failure::from(e).context(&describe(options, topic)))?;
            println!("{}: ready", describe(options, topic));
        }
        subscriber.close().await?;
        Ok::<_, Failure>(())
    }
    .await;
    let _ = backend.close().await;
    outcome
}

/// TOML errors span several lines (a snippet of the file); the first names key and line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(text: &str) -> Result<Checked, Failure> {
        check("plan.toml", toml::from_str(text).unwrap())
    }

    #[test]
    fn topics_of_subscriptions_and_dead_letters_are_created_too() {
        let plan = checked(
            r#"
            [[subscription]]
            topic = "autopatch/crash_detail"
            name = "patch-evaluation"
            dead_letter_topic = "autopatch/dead-letter"
            "#,
        )
        .unwrap();
        let names: Vec<_> = plan.topics.iter().map(|t| t.as_str()).collect();
        assert_eq!(names, ["autopatch/dead-letter", "autopatch/crash_detail"]);
        let policy = plan.subscriptions[0].1.dead_letter.clone().unwrap();
        assert_eq!(
            policy.max_delivery_attempts,
            bus::DEFAULT_MAX_DELIVERY_ATTEMPTS
        );
    }

    #[test]
    fn bad_entries_name_their_key() {
        let Err(Failure::Usage(message)) = checked(
            r#"
            [[topic]]
            name = "fine"
            [[topic]]
            name = "bad/+/wildcard"
            "#,
        ) else {
            panic!("a wildcard topic is refused")
        };
        assert!(message.contains("topic[1].name"), "{message}");

        let Err(Failure::Usage(message)) = checked(
            r#"
            [[subscription]]
            topic = "t"
            name = "s"
            max_delivery_attempts = 5
            "#,
        ) else {
            panic!("attempts without a dead-letter topic are refused")
        };
        assert!(
            message.contains("subscription[0].dead_letter_topic"),
            "{message}"
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_the_line() {
        let error = toml::from_str::<Plan>("[[topic]]\nname = \"t\"\nretention = 3\n").unwrap_err();
        let message = one_line(&error.to_string());
        assert!(message.contains("retention"), "{message}");
        assert!(message.contains("line 3"), "{message}");
    }
}
