//! A tansu broker on a free loopback port, stopped when dropped; optionally with durable
//! storage in a local S3 server, so that it can be stopped and restarted.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    child: Child,
    pub address: String,
    storage: String,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TANSU_BIN") {
        return PathBuf::from(path);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let candidate = PathBuf::from(home).join(".cargo/bin/tansu");
        if candidate.exists() {
            return candidate;
        }
    }
    PathBuf::from("tansu")
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

impl Broker {
    /// A broker with in-memory storage.
    pub fn start() -> Broker {
        Broker::start_with("memory://tansu/".into(), Vec::new())
    }

    /// A broker whose topics, records and committed offsets live in `store`, so that it can
    /// be stopped and started again without losing anything: a real outage.
    pub fn start_durable(store: &ObjectStore) -> Broker {
        Broker::start_with(format!("s3://{}/", store.bucket), store.env())
    }

    fn start_with(storage: String, env: Vec<(String, String)>) -> Broker {
        let address = format!("127.0.0.1:{}", free_port());
        // tansu reads a .env file from its working directory: give it an empty one.
        let dir = tempfile::tempdir().expect("broker directory");
        let child = spawn_tansu(&address, &storage, &env, dir.path());
        Broker {
            child,
            address,
            storage,
            env,
            dir,
        }
    }

    /// Shuts the broker down (SIGTERM, as a service manager would), waiting for it to exit:
    /// connections drop and nothing answers until [`Broker::restart`]. A SIGKILL is not
    /// used: tansu acknowledges writes before its object store has them, so killing it
    /// loses acknowledged records, which no Kafka client could survive.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same address and storage.
    pub fn restart(&mut self) {
        self.child = spawn_tansu(&self.address, &self.storage, &self.env, self.dir.path());
    }
}

fn spawn_tansu(address: &str, storage: &str, env: &[(String, String)], dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .expect("broker log");
    let child = Command::new(tansu_binary())
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://{address}"),
            "--advertised-listener-url",
            &format!("tcp://{address}"),
            "--storage-engine",
            storage,
        ])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("tansu must be installed (deploy/broker/tansu.sh install)");
    wait_listening(address, "tansu");
    child
}

fn wait_listening(address: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(address).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {address}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A local S3 server (moto) with a fresh bucket, for a broker with durable storage.
pub struct ObjectStore {
    child: Child,
    address: String,
    pub bucket: String,
}

impl ObjectStore {
    pub fn start() -> ObjectStore {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server must be installed (deploy/setup.sh)");
        wait_listening(&address, "moto_server");
        let bucket = format!("rekindle-{}-{port}", std::process::id());
        // S3 CreateBucket: PUT /bucket. moto does not check signatures.
        let mut stream = TcpStream::connect(&address).expect("moto");
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .expect("create bucket");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("moto answers");
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "create bucket: {answer}"
        );
        ObjectStore {
            child,
            address,
            bucket,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", format!("http://{}", self.address)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Broker {
    /// Freezes (SIGSTOP) or thaws (SIGCONT) the broker process: a broker that accepts
    /// connections but answers nothing, the hardest kind of outage for a client.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} tansu");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a topic with the admin API (tansu does not create topics on produce).
pub fn create_topic(brokers: &str, name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let results = runtime
        .block_on(admin.create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

/// How records are packed into record batches by the test producer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// librdkafka's normal batching.
    Default,
    /// One record per batch. tansu 0.6 answers a fetch that starts inside a record batch
    /// with nothing from that batch (Kafka returns the whole batch and the client skips the
    /// records before the fetch offset), so a worker resuming mid-batch would never see the
    /// rest of it. Tests that restart a worker at arbitrary offsets produce this way.
    OnePerBatch,
}

/// Produces `(key, payload)` records and waits until the broker has all of them.
pub fn produce(brokers: &str, topic: &str, records: &[(String, Vec<u8>)], batching: Batching) {
    let records: Vec<LogRecord> = records
        .iter()
        .map(|(key, payload)| LogRecord {
            key: key.clone(),
            payload: payload.clone(),
            headers: Vec::new(),
        })
        .collect();
    produce_log(brokers, topic, &records, batching);
}

/// A record to produce, headers included.
pub struct LogRecord {
    pub key: String,
    pub payload: Vec<u8>,
    pub headers: Vec<(&'static str, Vec<u8>)>,
}

/// Produces records in order and waits until the broker acknowledged all of them.
pub fn produce_log(brokers: &str, topic: &str, records: &[LogRecord], batching: Batching) {
    use rdkafka::config::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set(
            "batch.num.messages",
            if batching == Batching::OnePerBatch {
                "1"
            } else {
                "10000"
            },
        )
        .create()
        .expect("producer");
    for r in records {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &r.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_slice()),
            });
        }
        let mut record = BaseRecord::to(topic)
            .key(r.key.as_str())
            .payload(r.payload.as_slice())
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "produce failed: {e}"
                    );
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(180))
        .expect("all records acknowledged");
}

/// The header that marks a clock-tick record (the wire contract with `rekindle run`).
pub const TICK_HEADER: &str = "rekindle-clock-tick";

/// Appends a clock-tick record at `time_ms` to each of `partitions` partitions of `topic`
/// (the wire contract with `rekindle run`: header `rekindle-clock-tick`, 8-byte big-endian
/// time), and waits until the broker has them.
pub fn produce_ticks(brokers: &str, topic: &str, partitions: i32, time_ms: i64) {
    use rdkafka::config::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    let payload = time_ms.to_be_bytes();
    for partition in 0..partitions {
        let headers = OwnedHeaders::new().insert(Header {
            key: TICK_HEADER,
            value: Some(b"1".as_slice()),
        });
        let record = BaseRecord::<(), _>::to(topic)
            .partition(partition)
            .payload(payload.as_slice())
            .headers(headers);
        producer
            .send(record)
            .map_err(|(e, _)| e)
            .expect("tick sent");
    }
    producer
        .flush(Duration::from_secs(60))
        .expect("ticks acknowledged");
}
