//! Topic creation for the demo, tests and first-time set-up.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::{KafkaError, KafkaSettings};

/// Creates each `(topic, partitions)` that does not exist yet; existing topics are left as
/// they are. Topics named in `compacted` get `cleanup.policy=compact` (changelogs).
pub async fn ensure_topics(
    settings: &KafkaSettings,
    topics: &[(&str, i32)],
    compacted: &[&str],
) -> Result<(), KafkaError> {
    let mut config = settings.producer_config();
    config.remove("enable.idempotence");
    config.remove("acks");
    config.remove("linger.ms");
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            let topic = NewTopic::new(name, *partitions, TopicReplication::Fixed(1));
            if compacted.contains(name) {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::Topic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Makes sure `changelog` exists, compacted, with as many partitions as `source` (state of
/// source partition N lives in changelog partition N). Creates it when missing.
pub async fn ensure_changelog(
    settings: &KafkaSettings,
    source: &str,
    changelog: &str,
) -> Result<(), KafkaError> {
    let wanted = partition_count(settings, source)
        .await?
        .ok_or_else(|| KafkaError::Topic {
            topic: source.to_string(),
            reason: "does not exist".into(),
        })?;
    match partition_count(settings, changelog).await? {
        Some(have) if have >= wanted => Ok(()),
        Some(have) => Err(KafkaError::Topic {
            topic: changelog.to_string(),
            reason: format!(
                "has {have} partitions, fewer than the {wanted} of {source}: state of the others would have nowhere to go"
            ),
        }),
        None => ensure_topics(settings, &[(changelog, wanted)], &[changelog]).await,
    }
}

/// The topic's partition count, `None` when it does not exist. librdkafka's metadata call
/// blocks, so it runs off the async threads.
async fn partition_count(settings: &KafkaSettings, topic: &str) -> Result<Option<i32>, KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let mut config = settings.consumer_config("rekindle-admin");
    config.remove("statistics.interval.ms");
    config.remove("group.instance.id");
    let topic = topic.to_string();
    let lookup = move || -> Result<Option<i32>, KafkaError> {
        let consumer: BaseConsumer = config.create()?;
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .filter(|n| *n > 0))
    };
    tokio::task::spawn_blocking(lookup)
        .await
        .map_err(|e| KafkaError::Topic {
            topic: String::new(),
            reason: format!("metadata lookup did not finish: {e}"),
        })?
}
