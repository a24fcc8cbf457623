//! `rekindle run`: the worker.
//!
//! One batch at a time: read records, run them through the engine and hand their triggers
//! to the producer. Every `pipeline.commit_interval` (or `commit_max_records`, or
//! `commit_max_profiles` changed profiles, or when no records come): wait for the broker
//! to acknowledge everything sent since the last commit, write the changed state to the
//! changelog, commit state and offsets to RocksDB, then report progress to the consumer
//! group. A crash anywhere before the RocksDB commit replays the uncommitted batches from
//! stored offsets and re-sends their triggers under the same ids. With transactions every
//! batch is one transaction and commits at once.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rekindle_engine::{Disposition, Emitted, Engine, Record, RecordKind};
use rekindle_events::{AuditEncoder, EventError, TriggerEncoder};
use rekindle_kafka::{
    admin, source_record, Assignment, ChangelogReader, ClockTicker, Deliveries, KafkaError,
    Outgoing, ResumeLookup, Sink, Source, SourceObserver, SourceRecord,
};
use rekindle_state::Store;
use rekindle_telemetry::{Health, Metrics, Phase};
use tokio::sync::watch;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::claims::{ClaimsGuard, PartitionClaims};
use crate::dead_letter::dead_letter;
use crate::observe::{
    record_clock_lag, record_readiness, record_store_stats, seconds_between, wall_ms,
    PipelineFigures, StoreCounters, WorkerObserver,
};
use crate::restore;
use crate::settings::Settings;
use crate::wiring;

/// How long the worker waits for a first record before checking for shutdown again.
const IDLE_WAIT: Duration = Duration::from_millis(200);
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
/// Exit status when the shutdown grace period ran out before the batch finished.
const EXIT_GRACE_EXPIRED: i32 = 3;
/// The first pause after an aborted transaction; it doubles with every abort in a row.
const ABORT_BACKOFF: Duration = Duration::from_millis(50);
const ABORT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Attempts at preparing a partition's state before the worker gives up (and stops, to be
/// restarted), with pauses of 1, 2, 4 and 8 s in between.
const RESTORE_ATTEMPTS: u32 = 5;
const RESTORE_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// A restore fails when its changelog read makes no progress for this long.
const RESTORE_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pipeline waits for another pipeline of the worker to let a partition go
/// before the assignment fails (see `crate::claims`).
const CLAIM_TIMEOUT: Duration = Duration::from_secs(60);
/// Fault injection for tests: the process aborts after this many commits' triggers reached
/// Kafka, before anything records that they did (see `CrashPoint`).
const CRASH_BEFORE_STATE_COMMIT: &str = "REKINDLE_TEST_CRASH_BEFORE_STATE_COMMIT";
/// Timing injection for tests: pipeline n joins the group n times this many milliseconds
/// after the first, so that partitions move from a running pipeline to another of the
/// same worker (a broker's coordinator otherwise tends to gather them into one assignment).
const PIPELINE_JOIN_DELAY: &str = "REKINDLE_TEST_PIPELINE_JOIN_DELAY_MS";

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
            &[],
        )
        .await
        .context("creating topics")?;
    }
    let changelog_topic = settings.changelog_topic();
    let metrics = Metrics::new()?;
    let health = Arc::new(Health::default());
    let listener = rekindle_telemetry::bind(settings.http.listen).await?;
    // Without the log, the changelog (which validation requires) is where a crash's lost
    // commits come back from.
    let store = wiring::open_store(
        &settings,
        &settings.state.dir,
        settings.state.write_ahead_log,
    )?;
    let threads = settings.pipeline.threads;

    // Health and metrics answer (not ready) while the broker cannot be reached yet.
    let (shutdown_tx, shutdown) = watch::channel(false);
    let http = tokio::spawn(rekindle_telemetry::serve(
        listener,
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    info!(
        brokers = %settings.kafka.brokers,
        activity_topic = %settings.kafka.activity_topic,
        trigger_topic = %settings.kafka.trigger_topic,
        state_dir = %settings.state.dir.display(),
        http = %settings.http.listen,
        pipelines = threads,
        "worker started"
    );
    let observer = Arc::new(WorkerObserver {
        metrics: metrics.clone(),
        health: health.clone(),
    });
    // The producers first: they report broker reachability while the changelog check waits.
    let mut pipelines = Vec::with_capacity(threads);
    for index in 0..threads {
        let settings = settings.for_pipeline(index);
        let kafka = wiring::kafka_settings(&settings)?;
        let sink = match settings.transactional_id() {
            Some(id) => {
                info!(transactional_id = %id, pipeline = index, "exactly-once: one Kafka transaction per batch");
                Sink::transactional(&kafka, &id, observer.clone())?
            }
            None => Sink::new(&kafka, observer.clone())?,
        };
        pipelines.push((settings, kafka, sink));
    }
    // Ticks are not part of any batch: outside transactions, on a producer of their own.
    let tick_sink = if settings.kafka.exactly_once {
        Some(Sink::new(&kafka, observer.clone())?)
    } else {
        None
    };
    if let Some(changelog) = &changelog_topic {
        let mut pause = Duration::from_millis(500);
        loop {
            match admin::ensure_changelog(&kafka, &settings.kafka.activity_topic, changelog).await {
                Ok(()) => break,
                Err(e) => {
                    warn!(error = %e, topic = %changelog, retry_in = ?pause, "cannot check the changelog topic yet");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = wait_for_signal() => return Ok(()),
                    }
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    let grace = settings.pipeline.shutdown_grace;
    let shared = Arc::new(Shared {
        metrics: metrics.clone(),
        health,
        store: store.clone(),
        observer,
        changelog_topic,
        shutdown,
        stop: shutdown_tx,
        committed: AtomicUsize::new(0),
        store_counters: Mutex::default(),
        figures: PipelineFigures::new(threads),
        claims: PartitionClaims::default(),
    });
    // Weak: the store closes when the pipelines and `run` let go of it, not whenever the
    // runtime drops this task.
    let on_signal = Arc::downgrade(&shared);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!(grace = ?grace, "shutdown requested: finishing the current batch");
        if let Some(shared) = on_signal.upgrade() {
            let _ = shared.stop.send(true);
        }
        // The batch in flight normally finishes in milliseconds. If it cannot (the broker
        // stopped acknowledging), leave without committing it: state and offsets stay at the
        // previous batch, and the next start replays this one with the same trigger ids.
        tokio::time::sleep(grace).await;
        let all_committed = on_signal
            .upgrade()
            .is_none_or(|shared| shared.committed.load(Ordering::SeqCst) == threads);
        if all_committed {
            // Leaving waits for a rebalance in progress to answer; the group drops this
            // member after its session timeout instead.
            warn!(grace = ?grace, "leaving the consumer group did not finish within the grace period; exiting (every batch is committed)");
            std::process::exit(0);
        }
        error!(grace = ?grace, "shutdown did not complete within the grace period; exiting (an unfinished batch is not committed)");
        std::process::exit(EXIT_GRACE_EXPIRED);
    });

    // Each pipeline on a thread of its own: an engine keeps its core busy between awaits,
    // and the runtime's workers stay free for the HTTP endpoint, ticks and librdkafka's
    // callbacks.
    let runtime = tokio::runtime::Handle::current();
    let mut running = tokio::task::JoinSet::new();
    for (index, (settings, kafka, sink)) in pipelines.into_iter().enumerate() {
        let tick_sink = tick_sink.clone().unwrap_or_else(|| sink.clone());
        let pipeline = Pipeline {
            index,
            settings,
            kafka,
            sink,
            tick_sink,
            shared: shared.clone(),
        };
        let runtime = runtime.clone();
        let span = if threads > 1 {
            info_span!("pipeline", n = index)
        } else {
            tracing::Span::none()
        };
        running.spawn_blocking(move || runtime.block_on(pipeline.run().instrument(span)));
    }
    // The first failure stops the others: each finishes and commits its batch, as after
    // SIGTERM, within the grace period; the worker then exits with the failure.
    let mut failure: Option<anyhow::Error> = None;
    let mut stopping_by: Option<tokio::time::Instant> = None;
    while let Some(joined) = match stopping_by {
        None => running.join_next().await,
        Some(by) => tokio::time::timeout_at(by, running.join_next())
            .await
            .unwrap_or_default(),
    } {
        let result = joined
            .map_err(|e| anyhow::anyhow!("a pipeline thread ended abnormally: {e}"))
            .and_then(|r| r);
        if let Err(e) = result {
            let _ = shared.stop.send(true);
            stopping_by.get_or_insert_with(|| tokio::time::Instant::now() + grace);
            if failure.is_none() {
                failure = Some(e);
            } else {
                error!(error = %format!("{e:#}"), "another pipeline failed too");
            }
        }
    }
    http.abort();
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What a worker's pipelines share.
struct Shared {
    metrics: Metrics,
    health: Arc<Health>,
    store: Store,
    observer: Arc<WorkerObserver>,
    changelog_topic: Option<String>,
    /// Set on SIGTERM, or when another pipeline failed.
    shutdown: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    /// Pipelines whose last batch is committed: once all are, what is left (leaving the
    /// group) loses nothing.
    committed: AtomicUsize,
    store_counters: Mutex<StoreCounters>,
    figures: PipelineFigures,
    claims: PartitionClaims,
}

/// One pipeline's consumer events: the worker's metrics and readiness, and its partitions'
/// claims, let go as the consumer revokes them (from then on the pipeline does not touch
/// their state: the loop drops them before it processes or commits anything).
struct PipelineObserver {
    shared: Arc<Shared>,
    index: usize,
}

impl SourceObserver for PipelineObserver {
    fn assigned(&self, partitions: &[u32]) {
        self.shared.observer.assigned(partitions);
    }

    fn revoked(&self, partitions: &[u32]) {
        self.shared.observer.revoked(partitions);
        for p in partitions {
            self.shared.claims.release(*p, self.index);
        }
    }

    fn all_brokers_down(&self) {
        self.shared.observer.all_brokers_down();
    }

    fn brokers_up(&self, up: usize) {
        self.shared.observer.brokers_up(up);
    }

    fn lag(&self, partition: u32, records: i64) {
        self.shared.observer.lag(partition, records);
    }
}

/// One consumer of the group with its own engine and producer, on a thread of its own.
struct Pipeline {
    index: usize,
    /// The worker's settings with this pipeline's group member id.
    settings: Settings,
    kafka: rekindle_kafka::KafkaSettings,
    sink: Sink,
    tick_sink: Sink,
    shared: Arc<Shared>,
}

impl Pipeline {
    async fn run(self) -> anyhow::Result<()> {
        let shared = self.shared.clone();
        let result = self.run_until_stopped().await;
        if result.is_err() {
            // The others finish their batches and stop too.
            let _ = shared.stop.send(true);
        }
        result
    }

    async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Pipeline {
            index,
            settings,
            kafka,
            sink,
            tick_sink,
            shared,
        } = self;
        let Shared {
            metrics,
            health,
            store,
            changelog_topic,
            shutdown,
            committed,
            store_counters,
            figures,
            claims,
            ..
        } = &*shared;
        // Dropped last: the engine writes nothing of its partitions after this lets them go.
        let _claims = ClaimsGuard {
            claims,
            pipeline: index,
        };
        let (metrics, health, store) = (metrics.clone(), health.clone(), store.clone());
        let mut engine = wiring::engine(
            &settings,
            &settings.kafka.activity_topic,
            store.clone(),
            metrics.clone(),
        )?;
        let encoder = TriggerEncoder::new(settings.codec.trigger_schema_id)?;
        let audit_encoder = AuditEncoder::new(settings.codec.audit_schema_id)?;
        let owned: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
        let changelog_reader = match changelog_topic {
            Some(topic) => Some(ChangelogReader::new(&kafka, topic, RESTORE_STALL_TIMEOUT)?),
            None => None,
        };
        let resume_store = store.clone();
        let resume_metrics = metrics.clone();
        let resume_shared = shared.clone();
        let resume: ResumeLookup = Arc::new(move |partition| {
            // Before the state is touched: another pipeline of this worker may still hold it.
            resume_shared
                .claims
                .claim(partition, index, CLAIM_TIMEOUT)?;
            let started = Instant::now();
            // A broker hiccup during a rebalance should not cost a restart: retry a few
            // times (a partial restore is safe to repeat: records are whole values, applied
            // again).
            let mut pause = RESTORE_RETRY_PAUSE;
            let mut attempt = 1;
            let next = loop {
                match restore::prepare_partition(
                    &resume_store,
                    changelog_reader.as_ref(),
                    partition,
                    &resume_metrics,
                ) {
                    Ok(next) => break Ok(next),
                    Err(e) if attempt < RESTORE_ATTEMPTS => {
                        warn!(partition, attempt, error = %format!("{e:#}"), retry_in = ?pause, "preparing the partition's state failed; retrying");
                        std::thread::sleep(pause);
                        pause *= 2;
                        attempt += 1;
                    }
                    Err(e) => break Err(format!("{e:#}")),
                }
            };
            resume_metrics
                .state_restore_duration
                .observe(started.elapsed().as_secs_f64());
            next
        });
        if let Some(delay) = join_delay(index) {
            info!(pipeline = index, delay = ?delay, "{PIPELINE_JOIN_DELAY}: joining the group later");
            let mut stop = shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|stopping| *stopping) => {}
            }
        }
        let source = Source::new(
            &kafka,
            &settings.kafka.group_id,
            &settings.kafka.activity_topic,
            resume,
            owned.clone(),
            Arc::new(PipelineObserver {
                shared: shared.clone(),
                index,
            }),
        )?;
        // Transactions aborted in a row: a refusal that persists (authorization revoked, a
        // topic gone) is retried with growing pauses rather than in a tight loop.
        let mut consecutive_aborts: u32 = 0;
        // Without ticks the clock moves only with event times (and ticks someone else
        // appends): the log alone decides, as in a replay, but idle partitions do not fire.
        let ticker_task = if settings.clock.tick_interval.is_zero() {
            if index == 0 {
                warn!("clock.tick_interval is 0: no clock ticks; idle partitions fire nothing until new records arrive");
            }
            None
        } else {
            let ticker = ClockTicker::new(
                tick_sink.producer(),
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
        let shutdown = shutdown.clone();

        let mut last_progress = Instant::now();
        let mut emitted = Emitted::default();
        let mut batch_no: u64 = 0;
        let eos = sink.is_transactional();
        let committer = Committer {
            sink: &sink,
            source: &source,
            changelog_topic: changelog_topic.as_deref(),
            metrics: &metrics,
            health: &health,
            crash: CrashPoint::from_env(),
        };
        // Records sent since the last commit whose acknowledgements are still to be counted.
        let mut deliveries: Deliveries<Sent> = Deliveries::default();
        let mut uncommitted = Uncommitted::default();
        while !*shutdown.borrow() {
            let fetching = Instant::now();
            let batch = source
                .next_batch(
                    settings.pipeline.batch_max_records,
                    settings.pipeline.batch_max_wait,
                    IDLE_WAIT,
                )
                .await?;
            metrics.phase(Phase::Fetch, fetching.elapsed().as_secs_f64());
            for change in source.assignment_changes() {
                match change {
                    // The partition's changes since the last commit are dropped with it: its
                    // stored state, changelog and offsets all stand at that commit, where the
                    // next owner resumes (sending those batches' triggers again, under the same
                    // ids). Committing them now could race the next owner's restore.
                    Assignment::Revoked(partitions) => {
                        for p in partitions {
                            engine.close_partition(p);
                            uncommitted.starts.remove(&p);
                        }
                    }
                    // The state was prepared (restored if need be) when the partition was
                    // assigned; opening it here keeps the first batch's timing clean.
                    Assignment::Assigned(partitions) => {
                        for p in partitions {
                            engine.open_partition(p)?;
                        }
                    }
                    // Processing a partition without its state would judge its users on
                    // partial histories: stop, and let the restart try again.
                    Assignment::Failed { partition, reason } => {
                        anyhow::bail!(
                            "partition {partition}: state could not be prepared: {reason}"
                        );
                    }
                }
            }
            if batch.is_empty() {
                // Nothing more is coming for now: what was processed need not wait.
                if uncommitted.records > 0 {
                    committer
                        .commit(&mut engine, &mut deliveries, &mut uncommitted)
                        .await?;
                }
                if last_progress.elapsed() >= PROGRESS_EVERY {
                    last_progress = Instant::now();
                    record_store_stats(&metrics, &engine, store_counters, figures, index);
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
                let processing = Instant::now();
                for message in &batch {
                    let record = source_record(message);
                    if !owned_now.contains(&record.partition) {
                        continue;
                    }
                    // Where each partition's uncommitted records begin: where to read again
                    // after an aborted transaction.
                    uncommitted.starts.entry(record.partition).or_insert(record.offset);
                    uncommitted.records += 1;
                    let kind = match record.tick_ms {
                        Some(time_ms) => RecordKind::Tick(time_ms),
                        None => RecordKind::Avro { payload: record.payload, timestamp_ms: record.timestamp_ms },
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
                uncommitted.since.get_or_insert_with(Instant::now);
                drop(process_span);
                metrics.phase(Phase::Process, processing.elapsed().as_secs_f64());
                let triggers = &emitted.triggers;
                let mut encoded: Vec<Vec<u8>> = Vec::with_capacity(triggers.len());
                for trigger in triggers {
                    encoded.push(encoder.encode(trigger)?);
                    debug!(trigger_id = %trigger.trigger_id, user_id = %trigger.user_id, rule = %trigger.rule_id, "trigger fired");
                }
                let trigger_topic = settings.kafka.trigger_topic.as_str();
                let outgoing = triggers.iter().zip(&encoded).map(|(t, payload)| {
                    let out = Outgoing { topic: trigger_topic, key: Some(t.user_id.as_bytes()), payload, headers: Vec::new() };
                    (out, Sent::Trigger { due_ms: t.due_at_ms })
                });
                // Without an audit topic, audit records are only counted (and logged at debug).
                let mut audit_encoded: Vec<(&str, Vec<u8>)> = Vec::new();
                for record in &emitted.audit {
                    debug!(trigger_id = %record.trigger.trigger_id, rule = %record.trigger.rule_id, decision = %record.decision, reason = %record.reason, "trigger not sent");
                    if settings.kafka.audit_topic.is_some() {
                        audit_encoded.push((record.trigger.user_id.as_str(), audit_encoder.encode(record)?));
                    }
                }
                let audit_topic = settings.kafka.audit_topic.as_deref().unwrap_or_default();
                let audit = audit_encoded.iter().map(|(user, payload)| {
                    (Outgoing { topic: audit_topic, key: Some(user.as_bytes()), payload, headers: Vec::new() }, Sent::Audit)
                });
                let dead = rejected.iter().map(|(record, error)| {
                    let out = dead_letter(&settings.kafka.dead_letter_topic, &settings.kafka.activity_topic, record, error);
                    (out, Sent::DeadLetter(error.kind()))
                });
                // Sent now, awaited at the commit: dead letters and triggers are acknowledged
                // before the state and offsets that account for them are committed, so neither
                // can be lost by a crash. A trigger reaches the delivery topic without waiting
                // for the commit.
                let delivering = Instant::now();
                let sent = async {
                    // Every batch commits (or aborts) its own transaction.
                    if eos {
                        sink.begin()?;
                    }
                    sink.enqueue(dead.chain(outgoing).chain(audit), &mut deliveries).await?;
                    deliveries.settle_ready()?;
                    anyhow::Ok(())
                }
                .instrument(info_span!("send", triggers = triggers.len(), audit = audit_encoded.len(), dead_letters = rejected.len()))
                .await;
                metrics.phase(Phase::Deliver, delivering.elapsed().as_secs_f64());
                account(&mut deliveries, &metrics, &health);
                let due = eos
                    || uncommitted.records >= settings.pipeline.commit_max_records
                    || engine.dirty_profiles() >= settings.pipeline.commit_max_profiles
                    || uncommitted.since.is_some_and(|t| t.elapsed() >= settings.pipeline.commit_interval);
                let result = match sent {
                    Ok(()) if due => committer.commit(&mut engine, &mut deliveries, &mut uncommitted).await,
                    other => other,
                };
                match result {
                    Ok(()) => {
                        consecutive_aborts = 0;
                        anyhow::Ok(())
                    }
                    Err(e) if eos && is_abortable(&e) => {
                        // Nothing since the last commit becomes visible: forget its effects and
                        // read it again from where each partition's uncommitted records began.
                        warn!(error = %format!("{e:#}"), "transaction failed; aborting it and processing the batch again");
                        sink.abort().context("aborting the transaction")?;
                        metrics.transactions_aborted.inc();
                        engine.rollback()?;
                        deliveries.clear();
                        source.rewind(&uncommitted.starts.iter().map(|(p, o)| (*p, *o)).collect::<Vec<_>>()).await?;
                        uncommitted = Uncommitted::default();
                        consecutive_aborts = consecutive_aborts.saturating_add(1);
                        let pause = ABORT_BACKOFF.saturating_mul(1 << consecutive_aborts.min(6)).min(ABORT_BACKOFF_MAX);
                        tokio::time::sleep(pause).await;
                        anyhow::Ok(())
                    }
                    Err(e) => {
                        metrics.producer_errors.inc();
                        Err(e)
                    }
                }
            }
            .instrument(span)
            .await?;
            if last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                wiring::log_stats("progress", &engine);
                record_store_stats(&metrics, &engine, store_counters, figures, index);
                figures.in_flight(&metrics, index, i64::from(sink.in_flight()));
            }
        }
        // What the last batches did is committed before the pipeline leaves.
        if uncommitted.records > 0 {
            committer
                .commit(&mut engine, &mut deliveries, &mut uncommitted)
                .await?;
        }
        if let Some(task) = ticker_task {
            task.abort();
        }
        if !settings.state.write_ahead_log {
            // The last commits are only in memtables and the changelog: on disk now, the
            // restart need not read them back, and tools see them.
            store.persist().context("writing state to disk")?;
        }
        wiring::log_stats("worker stopped", &engine);
        committed.fetch_add(1, Ordering::SeqCst);
        // Closing the consumer revokes its partitions and leaves the group.
        drop(source);
        info!("left the consumer group");
        Ok(())
    }
}

/// What a record handed to the producer was, for counting it once it is acknowledged.
enum Sent {
    Trigger { due_ms: i64 },
    Audit,
    DeadLetter(&'static str),
}

/// The records processed since the last commit.
#[derive(Default)]
struct Uncommitted {
    records: usize,
    /// When the first of them was processed.
    since: Option<Instant>,
    /// Per partition, the offset of the first of them.
    starts: std::collections::BTreeMap<u32, i64>,
}

/// Counts the records acknowledged so far.
fn account(deliveries: &mut Deliveries<Sent>, metrics: &Metrics, health: &Health) {
    let acked_at = wall_ms();
    let mut any = false;
    for sent in deliveries.take_acknowledged() {
        any = true;
        match sent {
            Sent::Trigger { due_ms } => {
                metrics.triggers_acked.inc();
                metrics
                    .trigger_latency
                    .observe(seconds_between(due_ms, acked_at));
            }
            Sent::Audit => metrics.audit_acked.inc(),
            Sent::DeadLetter(kind) => metrics.dead_letters.with_label_values(&[kind]).inc(),
        }
    }
    // An acknowledgement is proof of a reachable broker; a fetched batch is not (it may
    // come from librdkafka's local prefetch queue while the broker is down).
    if any {
        health.set_broker_reachable();
        record_readiness(metrics, health);
    }
}

/// What a commit needs besides the engine and the records in flight.
struct Committer<'a> {
    sink: &'a Sink,
    source: &'a Source,
    changelog_topic: Option<&'a str>,
    metrics: &'a Metrics,
    health: &'a Health,
    crash: CrashPoint,
}

impl Committer<'_> {
    /// Commits everything processed since the last commit, then starts `uncommitted` afresh:
    /// waits for every record sent since then to be acknowledged, writes the changed state
    /// to the changelog (without transactions, only after the triggers are acknowledged: a
    /// restore that finds a batch's changes may rely on its triggers having gone out), then
    /// to RocksDB with the offsets, and reports progress to the group. With transactions the
    /// changelog and the offsets go into the open transaction, which commits before RocksDB
    /// does.
    async fn commit(
        &self,
        engine: &mut Engine,
        deliveries: &mut Deliveries<Sent>,
        uncommitted: &mut Uncommitted,
    ) -> anyhow::Result<()> {
        self.commit_inner(engine, deliveries)
            .instrument(info_span!("commit", records = uncommitted.records))
            .await?;
        *uncommitted = Uncommitted::default();
        Ok(())
    }

    async fn commit_inner(
        &self,
        engine: &mut Engine,
        deliveries: &mut Deliveries<Sent>,
    ) -> anyhow::Result<()> {
        let &Committer {
            sink,
            source,
            changelog_topic,
            metrics,
            health,
            ref crash,
        } = self;
        let eos = sink.is_transactional();
        let changes = match changelog_topic {
            Some(_) => engine.changelog()?,
            None => Vec::new(),
        };
        let changelog_count: usize = changes.iter().map(|(_, r)| r.len()).sum();
        let changelog_records = changes.iter().flat_map(|(p, records)| {
            records
                .iter()
                .map(move |r| (*p, r.key.as_slice(), r.value.as_deref()))
        });
        let changelog_topic = changelog_topic.unwrap_or_default();
        let delivering = Instant::now();
        let changelog_next = if eos {
            let (_, changelog_next) = tokio::try_join!(
                async { deliveries.settle_all().await.map_err(anyhow::Error::from) },
                async {
                    sink.send_changelog(changelog_topic, changelog_records)
                        .await
                        .map_err(anyhow::Error::from)
                },
            )?;
            info_span!("transaction").in_scope(|| sink.commit(source, &engine.positions()))?;
            metrics.transactions_committed.inc();
            // One transaction holds the triggers and the changelog: all of it is delivery.
            metrics.phase(Phase::Deliver, delivering.elapsed().as_secs_f64());
            account(deliveries, metrics, health);
            crash.reached();
            changelog_next
        } else {
            deliveries.settle_all().await?;
            metrics.phase(Phase::Deliver, delivering.elapsed().as_secs_f64());
            account(deliveries, metrics, health);
            crash.reached();
            let logging = Instant::now();
            let changelog_next = sink
                .send_changelog(changelog_topic, changelog_records)
                .await?;
            metrics.phase(Phase::Changelog, logging.elapsed().as_secs_f64());
            changelog_next
        };
        metrics
            .state_changelog_records
            .inc_by(changelog_count as u64);
        let committing = Instant::now();
        engine.commit(&changelog_next)?;
        metrics.phase(Phase::Commit, committing.elapsed().as_secs_f64());
        if !eos {
            if let Err(e) = source.commit_progress(&engine.positions()) {
                // Progress reporting only: the stored offsets are what a restart uses.
                warn!(error = %e, "committing progress to the consumer group failed");
            }
        }
        record_clock_lag(metrics, engine, wall_ms());
        Ok(())
    }
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

/// Whether aborting the transaction and processing the batch again can recover from `e`:
/// any Kafka failure except a fenced or fatal producer.
fn is_abortable(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<KafkaError>() {
        Some(KafkaError::Transaction { abortable, .. }) => *abortable,
        Some(_) => true,
        None => false,
    }
}

/// How much later pipeline `index` joins the group, from [`PIPELINE_JOIN_DELAY`].
fn join_delay(index: usize) -> Option<Duration> {
    let per_pipeline: u64 = std::env::var(PIPELINE_JOIN_DELAY).ok()?.parse().ok()?;
    let delay = Duration::from_millis(per_pipeline.saturating_mul(index as u64));
    (!delay.is_zero()).then_some(delay)
}

/// Fault injection for the tests: dies where a crash hurts most, once a commit's triggers
/// are in Kafka and before anything records that (the changelog, or the local state in
/// exactly-once mode, where the changelog went out in the same transaction).
struct CrashPoint {
    after: Option<u64>,
    commits: std::cell::Cell<u64>,
}

impl CrashPoint {
    fn from_env() -> CrashPoint {
        CrashPoint {
            after: std::env::var(CRASH_BEFORE_STATE_COMMIT)
                .ok()
                .and_then(|v| v.parse().ok()),
            commits: std::cell::Cell::new(0),
        }
    }

    fn reached(&self) {
        let Some(limit) = self.after else {
            return;
        };
        self.commits.set(self.commits.get() + 1);
        if self.commits.get() >= limit {
            error!(
                commits = self.commits.get(),
                "{CRASH_BEFORE_STATE_COMMIT} reached: aborting after the commit's triggers went out"
            );
            std::process::abort();
        }
    }
}
