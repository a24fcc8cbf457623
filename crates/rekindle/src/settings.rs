//! Layered configuration: built-in defaults, then `--config FILE`, then `REKINDLE__*`
//! environment variables. Unknown keys and invalid values are errors that name the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use config::{Config, Environment, File, FileFormat};
use rekindle_rules::{
    Growth, GrowthConfig, LifecycleConfig, PolicyConfig, RuleBook, RuleBookConfig, RuleConfig,
    SegmentConfig, WindowConfig, Windows,
};
use serde::Deserialize;

use crate::security::SecurityConfig;

pub const DEFAULTS: &str = include_str!("defaults.toml");
/// More pipelines than this in one process is a configuration mistake (a pod's cores).
const MAX_PIPELINE_THREADS: usize = 64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaConfig,
    pub state: StateConfig,
    pub clock: ClockConfig,
    pub pipeline: PipelineConfig,
    pub codec: CodecConfig,
    /// `[rules.<id>]`: every configured rule, by id.
    pub rules: BTreeMap<String, RuleConfig>,
    pub lifecycle: LifecycleConfig,
    pub policy: PolicyConfig,
    /// Growth figures: active users and retention cohorts.
    pub analytics: GrowthConfig,
    /// RFM segments: scores, thresholds and the table of named segments.
    pub segments: SegmentConfig,
    pub log: LogConfig,
    pub http: HttpConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/health/livez` and `/health/readyz` (`rekindle run` only).
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub activity_topic: String,
    pub trigger_topic: String,
    pub dead_letter_topic: String,
    /// Decisions that did not send a trigger go here when set.
    #[serde(default)]
    pub audit_topic: Option<String>,
    /// Compacted topic with every committed state change, one partition per activity
    /// partition; read back when a worker is assigned a partition it lacks state for.
    /// Default: `<group_id>.changelog` (state belongs to the group).
    #[serde(default)]
    pub changelog_topic: Option<String>,
    /// Triggers, changelog and consumed offsets in one Kafka transaction per batch.
    #[serde(default)]
    pub exactly_once: bool,
    pub create_topics: bool,
    pub create_partitions: i32,
    /// Static membership: a stable id per worker (the pod name on Kubernetes), so that a
    /// restarting worker gets its partitions back instead of triggering a rebalance.
    #[serde(default)]
    pub group_instance_id: Option<String>,
    /// TLS and SASL.
    #[serde(default)]
    pub security: SecurityConfig,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    pub dir: PathBuf,
    #[serde(with = "humantime_serde")]
    pub bucket_width: Duration,
    pub retained_buckets: u32,
    pub block_cache_bytes: usize,
    /// Decoded profiles kept in memory between batches (all partitions together).
    pub profile_cache_users: usize,
    /// Profiles kept in their stored form between batches, in bytes (all partitions
    /// together).
    pub profile_cache_bytes: usize,
    /// RocksDB memtable memory, all column families together.
    pub write_buffer_bytes: usize,
    /// Send committed state changes to the changelog topic.
    pub changelog: bool,
    /// Log RocksDB writes in its write-ahead log; false only with the changelog.
    pub write_ahead_log: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockConfig {
    #[serde(with = "humantime_serde")]
    pub tick_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub batch_max_records: usize,
    #[serde(with = "humantime_serde")]
    pub batch_max_wait: Duration,
    /// State is committed (triggers awaited, changelog written, RocksDB batch) once this much
    /// time has passed since the first uncommitted record, once `commit_max_records`
    /// records are uncommitted, or once `commit_max_profiles` profiles are changed,
    /// whichever comes first; batches in between only send.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    pub commit_max_records: usize,
    /// What a commit holds grows with the profiles it changed, not with its records: this
    /// bound keeps its memory the same whether a few users are very active or many are.
    pub commit_max_profiles: usize,
    /// Pipelines in one worker process, each on a thread of its own: its own consumer
    /// (a member of the group), engine and producer, all sharing the RocksDB store and
    /// the HTTP endpoint. One engine uses one core; more pipelines use more of a pod's
    /// cores, as more pods would.
    pub threads: usize,
    /// After SIGTERM, how long the batch in flight may take before the worker exits
    /// without committing it.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodecConfig {
    #[serde(default)]
    pub trigger_schema_id: Option<u32>,
    #[serde(default)]
    pub audit_schema_id: Option<u32>,
    #[serde(default)]
    pub accepted_activity_schema_ids: Vec<u32>,
    pub max_record_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: String,
    pub level: String,
}

impl Settings {
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file {
            if !path.exists() {
                return Err(anyhow!("config file {} does not exist", path.display()));
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        builder = builder.add_source(
            Environment::with_prefix("REKINDLE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let layered = builder.build().context("reading configuration")?;
        let settings: Settings = layered
            .try_deserialize()
            .map_err(|e| anyhow!("invalid configuration: {e}"))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks that serde cannot express; every message names its key.
    fn validate(&self) -> anyhow::Result<()> {
        let fail = |key: &str, why: &str| Err(anyhow!("invalid configuration: {key}: {why}"));
        if self.kafka.brokers.trim().is_empty() {
            return fail("kafka.brokers", "must not be empty");
        }
        for (key, value) in [
            ("kafka.group_id", &self.kafka.group_id),
            ("kafka.activity_topic", &self.kafka.activity_topic),
            ("kafka.trigger_topic", &self.kafka.trigger_topic),
            ("kafka.dead_letter_topic", &self.kafka.dead_letter_topic),
        ] {
            if value.trim().is_empty() {
                return fail(key, "must not be empty");
            }
        }
        if self.kafka.create_partitions < 1 {
            return fail("kafka.create_partitions", "must be at least 1");
        }
        if self.pipeline.batch_max_records == 0 {
            return fail("pipeline.batch_max_records", "must be at least 1");
        }
        if self.pipeline.commit_max_records == 0 {
            return fail("pipeline.commit_max_records", "must be at least 1");
        }
        if self.pipeline.commit_max_profiles == 0 {
            return fail("pipeline.commit_max_profiles", "must be at least 1");
        }
        if !(1..=MAX_PIPELINE_THREADS).contains(&self.pipeline.threads) {
            return fail(
                "pipeline.threads",
                &format!("must be between 1 and {MAX_PIPELINE_THREADS}"),
            );
        }
        let tick = self.clock.tick_interval;
        if !tick.is_zero() && tick < Duration::from_millis(10) {
            return fail("clock.tick_interval", "must be 0 (off) or at least 10ms");
        }
        if self.codec.max_record_bytes < 64 {
            return fail("codec.max_record_bytes", "must be at least 64");
        }
        if self.log.format != "pretty" && self.log.format != "json" {
            return fail("log.format", "must be \"pretty\" or \"json\"");
        }
        self.kafka.security.librdkafka_properties()?;
        if self
            .kafka
            .group_instance_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return fail("kafka.group_instance_id", "must not be empty when set");
        }
        if self
            .kafka
            .audit_topic
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return fail("kafka.audit_topic", "must not be empty when set");
        }
        if self
            .kafka
            .changelog_topic
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            return fail("kafka.changelog_topic", "must not be empty when set");
        }
        if !self.state.write_ahead_log && !self.state.changelog {
            return fail(
                "state.write_ahead_log",
                "false needs state.changelog (after a crash, what RocksDB's memtables held comes back from the changelog)",
            );
        }
        if self.kafka.exactly_once {
            if !self.state.changelog {
                return fail(
                    "kafka.exactly_once",
                    "needs state.changelog (after a crash between the Kafka commit and the local one, state comes back from the changelog)",
                );
            }
            if self.kafka.group_instance_id.is_none() {
                return fail(
                    "kafka.exactly_once",
                    "needs kafka.group_instance_id (the transactional id is derived from it, stable across restarts)",
                );
            }
        }
        self.rule_book()?;
        self.growth()?;
        Ok(())
    }

    /// The producer's `transactional.id` in exactly-once mode: one per worker, the same after
    /// a restart so that the broker fences the previous incarnation.
    pub fn transactional_id(&self) -> Option<String> {
        let instance = self.kafka.group_instance_id.as_deref()?;
        self.kafka
            .exactly_once
            .then(|| format!("{}-{instance}", self.kafka.group_id))
    }

    /// The settings of pipeline `index` of this worker: the first joins the group as the
    /// worker does with one pipeline; each other one needs a static-membership id of its
    /// own (two members with one id fence each other), and so a transactional id of its own.
    pub fn for_pipeline(&self, index: usize) -> Settings {
        let mut settings = self.clone();
        if index > 0 {
            if let Some(id) = settings.kafka.group_instance_id.as_mut() {
                *id = format!("{id}-{index}");
            }
        }
        settings
    }

    /// The changelog topic, when the changelog is on.
    pub fn changelog_topic(&self) -> Option<String> {
        self.state.changelog.then(|| {
            self.kafka
                .changelog_topic
                .clone()
                .unwrap_or_else(|| format!("{}.changelog", self.kafka.group_id))
        })
    }

    pub fn windows(&self) -> anyhow::Result<Windows> {
        let config = WindowConfig {
            bucket_width: self.state.bucket_width,
            retained_buckets: self.state.retained_buckets,
        };
        Windows::new(&config).map_err(|e| anyhow!("invalid configuration: {e}"))
    }

    pub fn rule_book_config(&self) -> RuleBookConfig {
        RuleBookConfig {
            rules: self.rules.clone(),
            lifecycle: self.lifecycle.clone(),
            policy: self.policy.clone(),
            segments: self.segments.clone(),
        }
    }

    /// The growth-figure arithmetic; `None` when analytics are off.
    pub fn growth(&self) -> anyhow::Result<Option<Growth>> {
        Growth::new(&self.analytics).map_err(|e| anyhow!("invalid configuration: {e}"))
    }

    pub fn rule_book(&self) -> anyhow::Result<RuleBook> {
        RuleBook::new(self.windows()?, &self.rule_book_config())
            .map_err(|e| anyhow!("invalid configuration: {e}"))
    }

    /// Replaces the rules, lifecycle and policy sections with those of a rules file (the
    /// same TOML layout, only those sections): `replay --rules` and `--compare`.
    pub fn with_rules_file(&self, path: &Path) -> anyhow::Result<Settings> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RulesFile {
            #[serde(default)]
            rules: BTreeMap<String, RuleConfig>,
            #[serde(default)]
            lifecycle: Option<LifecycleConfig>,
            #[serde(default)]
            policy: Option<PolicyConfig>,
            #[serde(default)]
            segments: Option<SegmentConfig>,
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading rules file {}", path.display()))?;
        let file: RulesFile = Config::builder()
            .add_source(File::from_str(&text, FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| anyhow!("invalid rules file {}: {e}", path.display()))?;
        let mut settings = self.clone();
        settings.rules = file.rules;
        if let Some(lifecycle) = file.lifecycle {
            settings.lifecycle = lifecycle;
        }
        if let Some(policy) = file.policy {
            settings.policy = policy;
        }
        if let Some(segments) = file.segments {
            settings.segments = segments;
        }
        settings
            .rule_book()
            .with_context(|| format!("in rules file {}", path.display()))?;
        Ok(settings)
    }

    pub fn max_future_skew_ms(&self) -> i64 {
        i64::try_from(self.clock.max_future_skew.as_millis()).unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn with_file(toml: &str) -> anyhow::Result<Settings> {
        let mut file = tempfile::NamedTempFile::new()?;
        file.write_all(toml.as_bytes())?;
        Settings::load(Some(file.path()))
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::load(None).expect("defaults are valid");
        let lapsed = &s.rules["lapsed_7d"];
        assert_eq!(lapsed.min_active_days, Some(3));
        assert_eq!(lapsed.inactive_for, Some(Duration::from_secs(7 * 86_400)));
        let book = s.rule_book().expect("default rules are valid");
        let ids: Vec<&str> = book.rules().iter().map(|r| r.id()).collect();
        assert_eq!(
            ids,
            vec![
                "new_user_no_return",
                "lapsed_7d",
                "engagement_drop",
                "dormant_30d"
            ],
            "highest priority first"
        );
        assert_eq!(s.state.retained_buckets, 35);
    }

    #[test]
    fn file_overrides_defaults() {
        let s = with_file("[rules.lapsed_7d]\ninactive_for = \"5d\"\n[rules.mine]\nkind = \"dormant\"\ninactive_for = \"20d\"\n[rules.dormant_30d]\nmode = \"off\"\n")
            .expect("valid");
        assert_eq!(
            s.rules["lapsed_7d"].inactive_for,
            Some(Duration::from_secs(5 * 86_400))
        );
        assert_eq!(
            s.rules["lapsed_7d"].min_active_days,
            Some(3),
            "merged key by key"
        );
        let book = s.rule_book().expect("valid");
        let ids: Vec<&str> = book.rules().iter().map(|r| r.id()).collect();
        assert!(
            ids.contains(&"mine") && !ids.contains(&"dormant_30d"),
            "{ids:?}"
        );
        assert_eq!(s.kafka.group_id, "rekindle");
    }

    #[test]
    fn a_segment_map_in_a_file_replaces_the_default_one() {
        let s = with_file(
            "[segments]\nmap = [\n  { name = \"recent\", r = \"3-5\", f = \"1-5\" },\n  { name = \"gone\", r = \"1-2\", f = \"1-5\" },\n]\n[rules.dormant_30d]\nsegments = [\"recent\"]\n",
        )
        .expect("valid");
        let names: Vec<&str> = s.segments.map.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["recent", "gone"], "not merged with the default map");
        let book = s.rule_book().expect("valid");
        let dormant = book
            .rules()
            .iter()
            .find(|r| r.id() == "dormant_30d")
            .expect("dormant_30d");
        assert_eq!(dormant.segments(), [0]);
        let unknown = with_file("[rules.dormant_30d]\nsegments = [\"vip\"]\n");
        let message = format!("{:#}", unknown.expect_err("vip is not a segment"));
        assert!(message.contains("rules.dormant_30d.segments"), "{message}");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = with_file("[kafka]\nbrokerz = \"x\"\n").expect_err("unknown key");
        assert!(err.to_string().contains("brokerz"), "{err}");
        let err = with_file("[rulez]\n").expect_err("unknown section");
        assert!(err.to_string().contains("rulez"), "{err}");
    }

    #[test]
    fn invalid_values_are_rejected_by_key() {
        let err = with_file("[rules.lapsed_7d]\ninactive_for = \"7 parsecs\"\n")
            .expect_err("bad duration");
        assert!(err.to_string().contains("inactive_for"), "{err}");
        let err = with_file("[rules.lapsed_7d]\nlookback = \"90d\"\n").expect_err("too long");
        assert!(
            err.to_string().contains("rules.lapsed_7d.lookback"),
            "{err}"
        );
        let err = with_file("[rules.lapsed_7d]\nreturn_within = \"1d\"\n").expect_err("wrong kind");
        assert!(
            err.to_string().contains("rules.lapsed_7d.return_within"),
            "{err}"
        );
        let err = with_file(
            "[policy.quiet_hours]\nenabled = true\ndefault_timezone = \"Nowhere/Else\"\n",
        )
        .expect_err("bad zone");
        assert!(
            err.to_string()
                .contains("policy.quiet_hours.default_timezone"),
            "{err}"
        );
        let err = with_file("[log]\nformat = \"xml\"\n").expect_err("bad format");
        assert!(err.to_string().contains("log.format"), "{err}");
        let err = with_file("[pipeline]\nbatch_max_records = -3\n").expect_err("negative");
        assert!(err.to_string().contains("batch_max_records"), "{err}");
        let err = with_file("[state]\nwrite_ahead_log = false\nchangelog = false\n")
            .expect_err("nothing to restore from");
        assert!(err.to_string().contains("state.write_ahead_log"), "{err}");
        with_file("[state]\nwrite_ahead_log = false\n").expect("with the changelog");
        let err = with_file("[pipeline]\ncommit_max_profiles = 0\n").expect_err("never commits");
        assert!(
            err.to_string().contains("pipeline.commit_max_profiles"),
            "{err}"
        );
        let err = with_file("[pipeline]\nthreads = 0\n").expect_err("no pipeline");
        assert!(err.to_string().contains("pipeline.threads"), "{err}");
        with_file("[pipeline]\nthreads = 2\n").expect("two pipelines");
    }

    /// Each pipeline of a worker is a member of the group: with static membership each
    /// needs an id of its own, and in exactly-once mode a transactional id of its own,
    /// while the first keeps the worker's, as with one pipeline.
    #[test]
    fn pipelines_after_the_first_join_under_ids_of_their_own() {
        let s = with_file(
            "[kafka]\ngroup_instance_id = \"pod-0\"\nexactly_once = true\n[pipeline]\nthreads = 3\n",
        )
        .expect("valid");
        let ids: Vec<(Option<String>, Option<String>)> = (0..3)
            .map(|i| {
                let p = s.for_pipeline(i);
                (p.kafka.group_instance_id.clone(), p.transactional_id())
            })
            .collect();
        let group = &s.kafka.group_id;
        assert_eq!(
            ids,
            [
                (Some("pod-0".into()), Some(format!("{group}-pod-0"))),
                (Some("pod-0-1".into()), Some(format!("{group}-pod-0-1"))),
                (Some("pod-0-2".into()), Some(format!("{group}-pod-0-2"))),
            ]
        );
        let dynamic = with_file("[pipeline]\nthreads = 2\n").expect("valid");
        assert_eq!(dynamic.for_pipeline(1).kafka.group_instance_id, None);
    }
}
