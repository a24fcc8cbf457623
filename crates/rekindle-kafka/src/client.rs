use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// librdkafka's `fetch.queue.backoff.ms` for the worker's consumers (its default is 1,000).
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// Connection settings shared by every client rekindle creates. Its `Debug` output redacts
/// the values of properties that hold secrets.
#[derive(Clone, Default)]
pub struct KafkaSettings {
    pub brokers: String,
    /// librdkafka properties applied to every client (security settings belong here).
    pub common: BTreeMap<String, String>,
    /// librdkafka properties for consumers only, applied after `common`.
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties for producers only, applied after `common`.
    pub producer: BTreeMap<String, String>,
}

/// Property names whose values are secrets (passwords, keys, tokens, JAAS lines).
fn is_secret_property(name: &str) -> bool {
    ["password", "secret", "key.pem", "token", "jaas"]
        .iter()
        .any(|word| name.contains(word))
}

fn redacted(map: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    map.iter()
        .map(|(k, v)| {
            let shown = if is_secret_property(k) {
                "<redacted>"
            } else {
                v.as_str()
            };
            (k.as_str(), shown)
        })
        .collect()
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("common", &redacted(&self.common))
            .field("consumer", &redacted(&self.consumer))
            .field("producer", &redacted(&self.producer))
            .finish()
    }
}

impl KafkaSettings {
    pub(crate) fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // Only the partitions that must move are revoked in a rebalance; the others keep
            // processing (and keep their open state).
            .set("partition.assignment.strategy", "cooperative-sticky")
            // Consumer lag and other figures come from librdkafka's statistics.
            .set("statistics.interval.ms", "5000")
            // A worker behind its topic keeps librdkafka's prefetch queue at its threshold
            // (queued.min.messages, which librdkafka compares with the whole consumer
            // queue). Each time it is reached, every partition's next fetch waits this long;
            // at librdkafka's default (1 s) the queue ran dry for about 0.3 s of every second
            // once the worker drained it. The queue's thresholds still bound its memory.
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
        apply(&mut config, &self.common);
        apply(&mut config, &self.consumer);
        config
    }

    pub(crate) fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Broker states for readiness come from the producer's statistics too.
            .set("statistics.interval.ms", "5000");
        apply(&mut config, &self.common);
        apply(&mut config, &self.producer);
        config
    }
}

fn apply(config: &mut ClientConfig, properties: &BTreeMap<String, String>) {
    for (key, value) in properties {
        config.set(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_reach_the_client_configuration_but_not_debug_output() {
        let settings = KafkaSettings {
            brokers: "b:9092".into(),
            common: BTreeMap::from([
                ("sasl.password".to_string(), "hunter2".to_string()),
                ("ssl.key.password".to_string(), "k3y".to_string()),
                ("sasl.username".to_string(), "svc".to_string()),
            ]),
            consumer: BTreeMap::from([("group.instance.id".to_string(), "rekindle-0".to_string())]),
            producer: BTreeMap::new(),
        };
        let consumer = settings.consumer_config("g");
        assert_eq!(consumer.get("sasl.password"), Some("hunter2"));
        assert_eq!(consumer.get("group.instance.id"), Some("rekindle-0"));
        let producer = settings.producer_config();
        assert_eq!(producer.get("ssl.key.password"), Some("k3y"));
        assert_eq!(producer.get("group.instance.id"), None);
        let shown = format!("{settings:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "{shown}"
        );
        assert!(shown.contains("svc"));
    }

    #[test]
    fn consumers_refetch_soon_after_a_full_prefetch_queue_unless_configured_otherwise() {
        let mut settings = KafkaSettings {
            brokers: "b:9092".into(),
            ..KafkaSettings::default()
        };
        let consumer = settings.consumer_config("g");
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("10"));
        // The producer has no fetch queue.
        assert_eq!(
            settings.producer_config().get("fetch.queue.backoff.ms"),
            None
        );
        settings.consumer =
            BTreeMap::from([("fetch.queue.backoff.ms".to_string(), "250".to_string())]);
        let consumer = settings.consumer_config("g");
        assert_eq!(consumer.get("fetch.queue.backoff.ms"), Some("250"));
    }
}
