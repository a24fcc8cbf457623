//! A tansu broker on a free loopback port, stopped when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    child: Child,
    pub address: String,
    _dir: tempfile::TempDir,
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
    pub fn start() -> Broker {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        // tansu reads a .env file from its working directory: give it an empty one.
        let dir = tempfile::tempdir().expect("broker directory");
        let log = std::fs::File::create(dir.path().join("tansu.log")).expect("broker log");
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{address}"),
                "--advertised-listener-url",
                &format!("tcp://{address}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu must be installed (deploy/broker/tansu.sh install)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {address}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker {
            child,
            address,
            _dir: dir,
        }
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
        .flush(Duration::from_secs(60))
        .expect("all records acknowledged");
}
