//! Builds the library pieces from settings: the one place that knows all of them.

use anyhow::Context;
use rekindle_engine::{Engine, EngineConfig};
use rekindle_events::EventDecoder;
use rekindle_kafka::KafkaSettings;
use rekindle_state::{Store, StoreOptions};
use rekindle_telemetry::{LogFormat, Metrics};

use crate::settings::Settings;

pub fn init_logging(settings: &Settings) -> anyhow::Result<()> {
    let format = if settings.log.format == "json" {
        LogFormat::Json
    } else {
        LogFormat::Pretty
    };
    rekindle_telemetry::init_logging(format, &settings.log.level)?;
    Ok(())
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The librdkafka configuration: `[kafka.security]` first, so that explicit
/// `kafka.properties` entries can still override it; the static-membership id goes to the
/// consumer only.
pub fn kafka_settings(settings: &Settings) -> anyhow::Result<KafkaSettings> {
    let mut common: std::collections::BTreeMap<String, String> = settings
        .kafka
        .security
        .librdkafka_properties()?
        .into_iter()
        .map(|(k, v)| (k, v.expose().to_string()))
        .collect();
    common.extend(settings.kafka.properties.clone());
    let mut consumer = settings.kafka.consumer.clone();
    if let Some(id) = &settings.kafka.group_instance_id {
        consumer.insert("group.instance.id".into(), id.clone());
    }
    Ok(KafkaSettings {
        brokers: settings.kafka.brokers.clone(),
        common,
        consumer,
        producer: settings.kafka.producer.clone(),
    })
}

/// `write_ahead_log`: false only for a worker whose every commit reaches a changelog read
/// back before processing (`state.write_ahead_log`, see `StoreOptions::write_ahead_log`).
pub fn open_store(
    settings: &Settings,
    dir: &std::path::Path,
    write_ahead_log: bool,
) -> anyhow::Result<Store> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    let options = StoreOptions {
        block_cache_bytes: settings.state.block_cache_bytes,
        profile_cache_users: settings.state.profile_cache_users,
        profile_cache_bytes: settings.state.profile_cache_bytes,
        write_buffer_bytes: settings.state.write_buffer_bytes,
        write_ahead_log,
    };
    Store::open(dir, &options).with_context(|| format!("opening state in {}", dir.display()))
}

/// `source` names where records come from in logs: the activity topic, or a replay file.
pub fn engine(
    settings: &Settings,
    source: &str,
    store: Store,
    metrics: Metrics,
) -> anyhow::Result<Engine> {
    let decoder = EventDecoder::new(
        settings.codec.accepted_activity_schema_ids.clone(),
        settings.codec.max_record_bytes,
    )?;
    let config = EngineConfig {
        topic: source.to_string(),
        rules: settings.rule_book()?,
        decoder,
        max_future_skew_ms: settings.max_future_skew_ms(),
        growth: settings.growth()?,
    };
    Ok(Engine::new(store, config, metrics))
}

/// The engine's running totals as one log line (the tests read the "worker stopped" one).
pub fn log_stats(message: &str, engine: &Engine) {
    let s = engine.stats();
    tracing::info!(
        records = s.records,
        events = s.events,
        malformed = s.malformed,
        ticks = s.ticks,
        skipped_replayed = s.skipped_replayed,
        triggers = s.triggers,
        not_sent = s.suppressed,
        "{message}"
    );
}
