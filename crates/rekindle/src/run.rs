//! `rekindle run`: the worker.
//!
//! One batch at a time: read records, run them through the engine, send the triggers and
//! wait for the broker to acknowledge them, then commit state and offsets to RocksDB, then
//! report progress to the consumer group. A crash anywhere before the RocksDB commit replays
//! the batch from stored offsets and re-sends its triggers under the same ids.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rekindle_engine::{Disposition, Emitted, Record, RecordKind};
use rekindle_events::{AuditEncoder, EventError, TriggerEncoder};
use rekindle_kafka::{
    admin, source_record, tick_time, Assignment, ClockTicker, Outgoing, ResumeLookup, Sink, Source,
    SourceRecord,
};
use rekindle_telemetry::{Health, Metrics};
use tokio::sync::watch;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::dead_letter::dead_letter;
use crate::observe::{
    record_clock_lag, record_readiness, record_store_stats, seconds_between, wall_ms,
    StoreCounters, WorkerObserver,
};
use crate::settings::Settings;
use crate::wiring;

/// How long the worker waits for a first record before checking for shutdown again.
const IDLE_WAIT: Duration = Duration::from_millis(200);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Exit status when the shutdown grace period ran out before the batch finished.
const EXIT_GRACE_EXPIRED: i32 = 3;

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let kafka = wiring::kafka_settings(&settings)?;
    if settings.kafka.create_topics {
        let partitions = settings.kafka.create_partitions;
        admin::ensure_topics(
            &kafka,
            &[
                (settings.kafka.activity_topic.as_str(), partitions),
                (settings.kafka.trigger_topic.as_str(), partitions),
                (settings.kafka.dead_letter_topic.as_str(), partitions),
            ]
            .into_iter()
            .chain(
                settings
                    .kafka
                    .audit_topic
                    .as_deref()
                    .map(|t| (t, partitions)),
            )
            .collect::<Vec<_>>(),
        )
        .await
        .context("creating topics")?;
    }
    let metrics = Metrics::new()?;
    let health = Arc::new(Health::default());
    let listener = rekindle_telemetry::bind(settings.http.listen).await?;
    let store = wiring::open_store(&settings, &settings.state.dir)?;
    let mut engine = wiring::engine(
        &settings,
        &settings.kafka.activity_topic,
        store.clone(),
        metrics.clone(),
    )?;
    let encoder = TriggerEncoder::new(settings.codec.trigger_schema_id)?;
    let audit_encoder = AuditEncoder::new(settings.codec.audit_schema_id)?;

    let owned: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
    let resume_store = store.clone();
    let resume: ResumeLookup = Arc::new(move |partition| {
        resume_store
            .meta(partition)
            .ok()
            .flatten()
            .map(|m| m.next_offset)
    });
    let observer = Arc::new(WorkerObserver {
        metrics: metrics.clone(),
        health: health.clone(),
    });
    let source = Source::new(
        &kafka,
        &settings.kafka.group_id,
        &settings.kafka.activity_topic,
        resume,
        owned.clone(),
        observer.clone(),
    )?;
    let sink = Sink::new(&kafka, observer)?;

    let (shutdown_tx, shutdown) = watch::channel(false);
    let grace = settings.pipeline.shutdown_grace;
    tokio::spawn(async move {
        wait_for_signal().await;
        info!(grace = ?grace, "shutdown requested: finishing the current batch");
        let _ = shutdown_tx.send(true);
        // The batch in flight normally finishes in milliseconds. If it cannot (the broker
        // stopped acknowledging), leave without committing it: state and offsets stay at the
        // previous batch, and the next start replays this one with the same trigger ids.
        tokio::time::sleep(grace).await;
        error!(grace = ?grace, "shutdown did not complete within the grace period; exiting (an unfinished batch is not committed)");
        std::process::exit(EXIT_GRACE_EXPIRED);
    });
    let http = tokio::spawn(rekindle_telemetry::serve(
        listener,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    // Without ticks the clock moves only with event times (and ticks someone else appends):
    // the log alone decides, as in a replay, but idle partitions do not fire.
    let ticker_task = if settings.clock.tick_interval.is_zero() {
        warn!("clock.tick_interval is 0: no clock ticks; idle partitions fire nothing until new records arrive");
        None
    } else {
        let ticker = ClockTicker::new(
            sink.producer(),
            &settings.kafka.activity_topic,
            owned.clone(),
        );
        let tick_metrics = metrics.clone();
        Some(tokio::spawn(ticker.run(
            settings.clock.tick_interval,
            shutdown.clone(),
            move || tick_metrics.clock_ticks_sent.inc(),
        )))
    };

    info!(
        brokers = %settings.kafka.brokers,
        activity_topic = %settings.kafka.activity_topic,
        trigger_topic = %settings.kafka.trigger_topic,
        state_dir = %settings.state.dir.display(),
        http = %settings.http.listen,
        "worker started"
    );
    let mut last_progress = Instant::now();
    let mut emitted = Emitted::default();
    let mut store_counters = StoreCounters::default();
    let mut batch_no: u64 = 0;
    while !*shutdown.borrow() {
        let batch = source
            .next_batch(
                settings.pipeline.batch_max_records,
                settings.pipeline.batch_max_wait,
                IDLE_WAIT,
            )
            .await?;
        for change in source.assignment_changes() {
            match change {
                // Every batch is committed before the next read, so a revoked partition has
                // nothing pending: closing it only drops its cached handle.
                Assignment::Revoked(partitions) => {
                    for p in partitions {
                        engine.close_partition(p);
                    }
                }
                // Opening the state before the first record makes restore time visible on
                // its own rather than hidden in the first batch.
                Assignment::Assigned(partitions) => {
                    for p in partitions {
                        let started = Instant::now();
                        engine.open_partition(p)?;
                        metrics
                            .state_restore_duration
                            .observe(started.elapsed().as_secs_f64());
                    }
                }
            }
        }
        if batch.is_empty() {
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                record_store_stats(&metrics, &engine, &mut store_counters);
                record_clock_lag(&metrics, &engine, wall_ms());
            }
            continue;
        }
        batch_no += 1;
        let span = info_span!("batch", n = batch_no, records = batch.len());
        async {
            let owned_now = owned.lock().map(|o| o.clone()).unwrap_or_default();
            let fetched_at = wall_ms();
            if tracing::enabled!(tracing::Level::DEBUG) {
                let mut ranges: std::collections::BTreeMap<u32, (i64, i64)> = Default::default();
                for m in &batch {
                    let r = source_record(m);
                    let e = ranges.entry(r.partition).or_insert((r.offset, r.offset));
                    e.0 = e.0.min(r.offset);
                    e.1 = e.1.max(r.offset);
                }
                debug!(?ranges, "batch offsets");
            }
            emitted.clear();
            let mut rejected: Vec<(SourceRecord<'_>, EventError)> = Vec::new();
            // Synchronous: the guard is dropped before the next await.
            let process_span = info_span!("process").entered();
            for message in &batch {
                let record = source_record(message);
                if !owned_now.contains(&record.partition) {
                    continue;
                }
                let kind = if record.is_tick {
                    match tick_time(record.payload) {
                        Some(time_ms) => RecordKind::Tick(time_ms),
                        None => RecordKind::Unreadable(EventError::Invalid("clock tick payload is not 8 bytes")),
                    }
                } else {
                    RecordKind::Avro { payload: record.payload, timestamp_ms: record.timestamp_ms }
                };
                let disposition =
                    engine.process(Record { partition: record.partition, offset: record.offset, kind }, &mut emitted)?;
                match disposition {
                    Disposition::Rejected(error) => rejected.push((record, error)),
                    Disposition::Applied { event_ms: Some(event_ms) } => {
                        metrics.processing_latency.observe(seconds_between(event_ms, fetched_at))
                    }
                    Disposition::Applied { event_ms: None } | Disposition::Skipped => {}
                }
            }
            drop(process_span);
            let triggers = &emitted.triggers;
            let mut encoded: Vec<Vec<u8>> = Vec::with_capacity(triggers.len());
            for trigger in triggers {
                encoded.push(encoder.encode(trigger)?);
                debug!(trigger_id = %trigger.trigger_id, user_id = %trigger.user_id, rule = %trigger.rule_id, "trigger fired");
            }
            let trigger_topic = settings.kafka.trigger_topic.as_str();
            let outgoing = triggers.iter().zip(&encoded).map(|(t, payload)| Outgoing {
                topic: trigger_topic,
                key: Some(t.user_id.as_bytes()),
                payload,
                headers: Vec::new(),
            });
            // Without an audit topic, audit records are only counted (and logged at debug).
            let mut audit_encoded: Vec<(&str, Vec<u8>)> = Vec::new();
            for record in &emitted.audit {
                debug!(trigger_id = %record.trigger.trigger_id, rule = %record.trigger.rule_id, decision = %record.decision, reason = %record.reason, "trigger not sent");
                if settings.kafka.audit_topic.is_some() {
                    audit_encoded.push((record.trigger.user_id.as_str(), audit_encoder.encode(record)?));
                }
            }
            let audit_count = audit_encoded.len();
            let audit_topic = settings.kafka.audit_topic.as_deref().unwrap_or_default();
            let audit = audit_encoded.iter().map(|(user, payload)| Outgoing {
                topic: audit_topic,
                key: Some(user.as_bytes()),
                payload,
                headers: Vec::new(),
            });
            let dead = rejected.iter().map(|(record, error)| {
                dead_letter(&settings.kafka.dead_letter_topic, &settings.kafka.activity_topic, record, error)
            });
            // Dead letters and triggers are both acknowledged before the batch's state and
            // offsets are committed: neither can be lost by a crash.
            let sent = sink
                .send_all(dead.chain(outgoing).chain(audit))
                .instrument(info_span!("emit", triggers = triggers.len(), audit = audit_count, dead_letters = rejected.len()))
                .await;
            let acked = match sent {
                Ok(acked) => acked,
                Err(e) => {
                    metrics.producer_errors.inc();
                    return Err(e.into());
                }
            };
            // An acknowledgement is proof of a reachable broker; a fetched batch is not (it
            // may come from librdkafka's local prefetch queue while the broker is down).
            if acked > 0 {
                health.set_broker_reachable();
                record_readiness(&metrics, &health);
            }
            let acked_at = wall_ms();
            for trigger in triggers {
                metrics.trigger_latency.observe(seconds_between(trigger.due_at_ms, acked_at));
            }
            for (_, error) in &rejected {
                metrics.dead_letters.with_label_values(&[error.kind()]).inc();
            }
            let acked = acked.saturating_sub(rejected.len() + audit_count);
            metrics.triggers_acked.inc_by(acked as u64);
            metrics.audit_acked.inc_by(audit_count as u64);
            info_span!("commit").in_scope(|| engine.commit())?;
            if let Err(e) = source.commit_progress(&engine.positions()) {
                // Progress reporting only: the stored offsets are what a restart uses.
                warn!(error = %e, "committing progress to the consumer group failed");
            }
            record_clock_lag(&metrics, &engine, acked_at);
            anyhow::Ok(())
        }
        .instrument(span)
        .await?;
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            wiring::log_stats("progress", &engine);
            record_store_stats(&metrics, &engine, &mut store_counters);
            metrics.producer_in_flight.set(i64::from(sink.in_flight()));
        }
    }
    if let Some(task) = ticker_task {
        task.abort();
    }
    http.abort();
    wiring::log_stats("worker stopped", &engine);
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
