//! Kafka credentials reach the client but never a log line or a metric: a worker configured
//! for SASL/SCRAM over TLS, with its password from the environment and its key password
//! from a file, starts, tries its (unreachable) broker, serves /metrics and stops, and
//! neither secret appears in anything it wrote.

use rekindle_suite::support;

use std::time::Duration;

use support::broker::free_port;
use support::worker::{http_get, rekindle_binary};

const SASL_PASSWORD: &str = "sasl-secret-3f9a1c";
const KEY_PASSWORD: &str = "key-secret-77b1e0";

#[test]
fn secrets_never_reach_logs_or_metrics() {
    let dir = tempfile::tempdir().expect("dir");
    let key_password_file = dir.path().join("key-password");
    std::fs::write(&key_password_file, format!("{KEY_PASSWORD}\n")).expect("write");
    let config = dir.path().join("rekindle.toml");
    let http_port = free_port();
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
# Nothing listens here: the client keeps trying, with its security settings applied.
brokers = "127.0.0.1:{broker}"
group_instance_id = "rekindle-test-0"
[kafka.security]
protocol = "sasl_ssl"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "rekindle-svc"
ssl_key_password_file = "{key_file}"
[state]
dir = "{state}"
[log]
format = "json"
level = "debug"
[http]
listen = "127.0.0.1:{http_port}"
"#,
            broker = free_port(),
            key_file = key_password_file.display(),
            state = dir.path().join("state").display(),
        ),
    )
    .expect("config");
    let log = dir.path().join("worker.log");
    let mut child = std::process::Command::new(rekindle_binary())
        .args(["--config", config.to_str().expect("utf-8"), "run"])
        .env("REKINDLE__KAFKA__SECURITY__SASL_PASSWORD", SASL_PASSWORD)
        // librdkafka's own debug output too, where client configuration would show.
        .env("RUST_LOG", "debug,librdkafka=trace,rdkafka=trace")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start rekindle run");
    // Let the clients start and fail to connect a few times.
    let mut exposition = String::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        if let Ok((200, body)) = std::panic::catch_unwind(|| http_get(&config, "/metrics")) {
            exposition = body;
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let (_, late) = http_get(&config, "/metrics");
    exposition.push_str(&late);
    let (ready, _) = http_get(&config, "/health/readyz");
    terminate(&mut child);
    let logs = std::fs::read_to_string(&log).expect("log");
    assert!(
        exposition.contains("rekindle_health_ready"),
        "the worker ran and served metrics"
    );
    assert_eq!(ready, 503, "no broker: not ready");
    assert!(
        logs.contains("worker started"),
        "the worker logged its start:\n{logs}"
    );
    // librdkafka names the connection by protocol: the security settings reached it.
    assert!(
        logs.contains("sasl_ssl://127.0.0.1"),
        "the client connects with SASL over TLS:\n{logs}"
    );
    for secret in [SASL_PASSWORD, KEY_PASSWORD] {
        assert!(!logs.contains(secret), "a secret reached the logs:\n{logs}");
        assert!(!exposition.contains(secret), "a secret reached /metrics");
    }
}

fn terminate(child: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
