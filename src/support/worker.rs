//! The rekindle binary as a child process, and a reader of the trigger topic.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use apache_avro::Schema;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;

/// The `rekindle` binary built in the same profile as this test.
pub fn rekindle_binary() -> PathBuf {
    if let Ok(path) = std::env::var("REKINDLE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("rekindle");
    assert!(
        bin.exists(),
        "{} is missing: build it first (make test does)",
        bin.display()
    );
    bin
}

/// The dead-letter topic of every test configuration.
pub const DEAD_LETTERS: &str = "dead-letters";

/// The oracle of src/support/histories.rs specifies lapsed_7d alone, with no delivery
/// policy in the way: every episode fires.
pub const LAPSED_ONLY: &str = r#"
[rules.lapsed_7d]
cooldown = "0s"
[rules.engagement_drop]
mode = "off"
[rules.new_user_no_return]
mode = "off"
[rules.dormant_30d]
mode = "off"
[policy.frequency_cap]
max_triggers = 0
"#;

/// A configuration file holding only [`LAPSED_ONLY`], for `replay`.
pub fn write_lapsed_only_config(dir: &Path) -> PathBuf {
    let path = dir.join("lapsed-only.toml");
    std::fs::write(&path, LAPSED_ONLY).expect("write config");
    path
}

/// What a test worker's configuration varies in.
pub struct WorkerOptions<'a> {
    pub tick_interval: &'a str,
    /// `[rules.*]`, `[lifecycle]` and `[policy.*]` tables.
    pub rules: &'a str,
    pub audit_topic: Option<&'a str>,
    /// Extra lines for the `[kafka]` table (group_instance_id, exactly_once, ...).
    pub kafka: &'a str,
    /// Extra lines for the `[state]` table.
    pub state: &'a str,
}

impl Default for WorkerOptions<'_> {
    fn default() -> Self {
        WorkerOptions {
            tick_interval: "100ms",
            rules: LAPSED_ONLY,
            audit_topic: None,
            kafka: "",
            state: "",
        }
    }
}

/// A worker configuration for tests: short ticks, low fetch wait, JSON logs, lapsed_7d only.
pub fn write_config(
    dir: &Path,
    brokers: &str,
    activity: &str,
    triggers: &str,
    group: &str,
) -> PathBuf {
    write_config_with(
        dir,
        brokers,
        activity,
        triggers,
        group,
        &WorkerOptions::default(),
    )
}

pub fn write_config_with(
    dir: &Path,
    brokers: &str,
    activity: &str,
    triggers: &str,
    group: &str,
    options: &WorkerOptions<'_>,
) -> PathBuf {
    let path = dir.join("rekindle.toml");
    let audit = options
        .audit_topic
        .map(|t| format!("audit_topic = \"{t}\""))
        .unwrap_or_default();
    let tick_interval = options.tick_interval;
    let rules = options.rules;
    let state = dir.join("state");
    let toml = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
activity_topic = "{activity}"
trigger_topic = "{triggers}"
dead_letter_topic = "{DEAD_LETTERS}"
{audit}
{kafka_extra}

[kafka.consumer]
"fetch.wait.max.ms" = "10"
# A killed worker's partitions move after this long instead of librdkafka's 45s.
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
# Statistics (consumer lag) every second rather than every five, for short test runs.
"statistics.interval.ms" = "1000"

[state]
dir = "{state}"
{state_extra}

[clock]
tick_interval = "{tick_interval}"

[pipeline]
batch_max_records = 2000
batch_max_wait = "20ms"
shutdown_grace = "3s"

{rules}
[log]
format = "json"
level = "info"

[http]
listen = "127.0.0.1:{http_port}"
"#,
        http_port = crate::support::broker::free_port(),
        kafka_extra = options.kafka,
        state_extra = options.state,
        state = state.display()
    );
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(toml.as_bytes()))
        .expect("write config");
    path
}

pub struct Worker {
    child: Child,
    log: PathBuf,
}

impl Worker {
    pub fn start(config: &Path, log: &Path) -> Worker {
        Worker::start_with_env(config, log, &[])
    }

    /// Started with extra environment variables.
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Worker {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("worker log");
        let child = Command::new(rekindle_binary())
            .args(["--config", config.to_str().expect("utf-8 path"), "run"])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start rekindle run");
        Worker {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(self) -> std::process::ExitStatus {
        self.stop_within(Duration::from_secs(30))
    }

    /// SIGTERM, then wait at most `limit` for the process to exit.
    pub fn stop_within(mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("worker did not stop within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory of the worker process, in bytes (Linux).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    pub fn log(&self) -> PathBuf {
        self.log.clone()
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// The worker's log message for a partition assignment.
pub const ASSIGNED: &str = "partitions assigned (offsets from state; None: group offset)";
/// The worker's log message for a partition revocation.
pub const REVOKED: &str = "partitions revoked";

/// The partitions an assignment or revocation log line names.
pub fn log_partitions(line: &serde_json::Value) -> Vec<u32> {
    line["partitions"]
        .as_str()
        .and_then(|p| serde_json::from_str(p).ok())
        .expect("partition list")
}

/// Each partition's resume offset in an assignment log line (`None`: no state for it yet).
pub fn log_resume_offsets(line: &serde_json::Value) -> BTreeMap<u32, Option<i64>> {
    let text = line["resume_at"].as_str().unwrap_or_default();
    text.split("), (")
        .filter_map(|pair| {
            let pair = pair.trim_matches(|c| c == '[' || c == ']' || c == '(' || c == ')');
            let (partition, offset) = pair.split_once(", ")?;
            let offset = offset
                .strip_prefix("Some(")
                .and_then(|o| o.trim_end_matches(')').parse().ok());
            Some((partition.parse().ok()?, offset))
        })
        .collect()
}

/// The pipeline a log line was written by (its `pipeline` span), when the worker runs
/// several.
pub fn log_pipeline(line: &serde_json::Value) -> Option<u64> {
    line["spans"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "pipeline")?["n"]
        .as_u64()
}

/// The trigger ids `rekindle replay` fires for `input` up to `until_ms`.
pub fn replayed_trigger_ids(
    config: Option<&Path>,
    input: &Path,
    until_ms: i64,
) -> std::collections::BTreeSet<String> {
    replay(config, input, until_ms)
        .iter()
        .map(|v| v["trigger_id"].as_str().expect("trigger_id").to_string())
        .collect()
}

/// JSON log lines of a worker whose `message` equals `message`.
pub fn log_lines(log: &Path, message: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("message").and_then(|m| m.as_str()) == Some(message))
        .collect()
}

/// `rekindle [--config CONFIG] replay --input INPUT --until-ms UNTIL`: its triggers as JSON.
pub fn replay(config: Option<&Path>, input: &Path, until_ms: i64) -> Vec<serde_json::Value> {
    let input = input.display().to_string();
    let until = until_ms.to_string();
    rekindle_json(
        config,
        &[
            "replay",
            "--input",
            input.as_str(),
            "--until-ms",
            until.as_str(),
        ],
    )
}

/// `rekindle [--config CONFIG] ARGS...`, which must succeed and print JSON lines, parsed.
pub fn rekindle_json(config: Option<&Path>, args: &[&str]) -> Vec<serde_json::Value> {
    let config = config.map(|c| c.display().to_string());
    let mut all: Vec<&str> = Vec::new();
    if let Some(config) = &config {
        all.extend(["--config", config.as_str()]);
    }
    all.extend_from_slice(args);
    let output = run_rekindle(&all);
    assert!(
        output.status.success(),
        "rekindle {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("rekindle prints JSON lines"))
        .collect()
}

/// The oracle's view of a trigger printed by `replay`.
pub fn replayed_episode(v: &serde_json::Value) -> super::histories::Episode {
    let number = |k: &str| v[k].as_i64().expect("number");
    (
        v["user_id"].as_str().expect("user_id").to_string(),
        number("last_active_ms"),
        number("due_at_ms"),
    )
}

pub fn run_rekindle(args: &[&str]) -> Output {
    Command::new(rekindle_binary())
        .args(args)
        .output()
        .expect("run rekindle")
}

/// A decoded trigger, as read back with `schemas/reactivation_trigger.avsc` from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub trigger_id: String,
    pub user_id: String,
    pub rule_id: String,
    pub last_active_ms: i64,
    pub due_at_ms: i64,
    pub fired_at_ms: i64,
    pub key: Option<String>,
}

pub fn trigger_schema() -> Schema {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/reactivation_trigger.avsc");
    Schema::parse_str(&std::fs::read_to_string(path).expect("schema file")).expect("schema parses")
}

/// Decodes a trigger payload (plain datum) with the schema file, independently of rekindle.
pub fn decode_trigger(schema: &Schema, payload: &[u8]) -> Delivered {
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()
        .expect("reader");
    let mut cursor = std::io::Cursor::new(payload);
    let value = reader
        .read_value(&mut cursor)
        .expect("trigger decodes with the .avsc");
    assert_eq!(
        cursor.position() as usize,
        payload.len(),
        "no bytes after the trigger datum"
    );
    let apache_avro::types::Value::Record(fields) = value else {
        panic!("trigger is not a record")
    };
    let fields: BTreeMap<String, apache_avro::types::Value> = fields.into_iter().collect();
    let string = |k: &str| match &fields[k] {
        apache_avro::types::Value::String(s) => s.clone(),
        other => panic!("{k} is {other:?}"),
    };
    let long = |k: &str| match &fields[k] {
        apache_avro::types::Value::Long(v) | apache_avro::types::Value::TimestampMillis(v) => *v,
        other => panic!("{k} is {other:?}"),
    };
    Delivered {
        trigger_id: string("trigger_id"),
        user_id: string("user_id"),
        rule_id: string("rule_id"),
        last_active_ms: long("last_active_ms"),
        due_at_ms: long("due_at_ms"),
        fired_at_ms: long("fired_at_ms"),
        key: None,
    }
}

impl Delivered {
    pub fn episode(&self) -> super::histories::Episode {
        (self.user_id.clone(), self.last_active_ms, self.due_at_ms)
    }
}

/// Reads the trigger topic from the beginning.
pub struct TriggerReader {
    consumer: BaseConsumer,
    schema: Schema,
    pub delivered: Vec<Delivered>,
}

/// A consumer group of its own for every reader: each reads the topic from the beginning.
fn reader_group() -> String {
    static READERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = READERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("test-reader-{}-{n}", std::process::id())
}

impl TriggerReader {
    pub fn new(brokers: &str, topic: &str) -> TriggerReader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", reader_group())
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("reader");
        consumer.subscribe(&[topic]).expect("subscribe");
        TriggerReader {
            consumer,
            schema: trigger_schema(),
            delivered: Vec::new(),
        }
    }

    /// Polls until `done` holds for what was read, or `timeout` passes.
    pub fn read_until(&mut self, timeout: Duration, mut done: impl FnMut(&[Delivered]) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !done(&self.delivered) {
            self.poll_once();
        }
    }

    /// Polls until `count` distinct trigger ids were read (a trigger sent again after a
    /// crash or a partition move counts once), or `timeout` passes.
    pub fn read_until_ids(&mut self, timeout: Duration, count: usize) {
        let mut ids = std::collections::BTreeSet::new();
        let mut seen = 0;
        self.read_until(timeout, |d| {
            ids.extend(d[seen..].iter().map(|t| t.trigger_id.clone()));
            seen = d.len();
            ids.len() >= count
        });
    }

    /// The distinct trigger ids read so far.
    pub fn trigger_ids(&self) -> std::collections::BTreeSet<String> {
        self.delivered
            .iter()
            .map(|d| d.trigger_id.clone())
            .collect()
    }

    /// Polls for `period`, collecting whatever arrives.
    pub fn read_for(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        while Instant::now() < deadline {
            self.poll_once();
        }
    }

    fn poll_once(&mut self) {
        if let Some(result) = self.consumer.poll(Duration::from_millis(100)) {
            let message = match result {
                Ok(message) => message,
                Err(e) => {
                    // A broker that is restarting: librdkafka reconnects on its own.
                    eprintln!("trigger reader: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                    return;
                }
            };
            let mut d = decode_trigger(&self.schema, message.payload().expect("trigger payload"));
            d.key = message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned());
            self.delivered.push(d);
        }
    }
}

/// A record read back raw, headers included.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Reads `topic` from the beginning until `enough` holds or `timeout` passes.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    timeout: Duration,
    mut enough: impl FnMut(&[RawRecord]) -> bool,
) -> Vec<RawRecord> {
    use rdkafka::message::Headers;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("test-raw-{topic}-{}", std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("raw reader");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut records = Vec::new();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !enough(&records) {
        if let Some(result) = consumer.poll(Duration::from_millis(100)) {
            let m = result.expect("topic readable");
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push(RawRecord {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
    }
    records
}

/// `GET path` from the worker's HTTP listener (address read from its config): status and body.
pub fn http_get(config: &Path, path: &str) -> (u16, String) {
    try_http_get(config, path).expect("worker HTTP listener")
}

/// As [`http_get`], `None` while the listener is not up.
pub fn try_http_get(config: &Path, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let toml = std::fs::read_to_string(config).expect("config");
    let listen = toml
        .lines()
        .find_map(|l| l.strip_prefix("listen = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("http.listen in the test config");
    let mut stream = std::net::TcpStream::connect(&listen).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}
