use std::collections::BTreeMap;

use rdkafka::ClientConfig;

/// Connection settings shared by every client rekindle creates.
#[derive(Debug, Clone, Default)]
pub struct KafkaSettings {
    pub brokers: String,
    /// librdkafka properties applied to every client (security settings belong here).
    pub common: BTreeMap<String, String>,
    /// librdkafka properties for consumers only, applied after `common`.
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties for producers only, applied after `common`.
    pub producer: BTreeMap<String, String>,
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
            // Consumer lag and other figures come from librdkafka's statistics.
            .set("statistics.interval.ms", "5000");
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
            .set("linger.ms", "5");
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
