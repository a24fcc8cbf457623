//! `rekindle gen` writes the same history as JSON lines and as an Avro object container
//! file that any Avro reader opens with the schema from the file's header.

use rekindle_suite::support;

use rekindle_events::ActivityEvent;
use support::worker::run_rekindle;

fn gen(dir: &std::path::Path, name: &str, format: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let output = run_rekindle(&[
        "gen",
        "--users",
        "300",
        "--days",
        "20",
        "--seed",
        "5",
        "--end-ms",
        "1767225600000",
        "--output",
        path.to_str().expect("utf-8"),
        "--file-format",
        format,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    path
}

#[test]
fn avro_container_and_json_lines_hold_the_same_history() {
    let dir = tempfile::tempdir().expect("dir");
    let jsonl = gen(dir.path(), "history.jsonl", "jsonl");
    let avro = gen(dir.path(), "history.avro", "avro");
    let from_json: Vec<ActivityEvent> = std::fs::read_to_string(&jsonl)
        .expect("jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect();
    let file = std::fs::File::open(&avro).expect("avro");
    let reader = apache_avro::Reader::new(std::io::BufReader::new(file)).expect("header");
    let from_avro: Vec<ActivityEvent> = reader
        .map(|v| apache_avro::from_value(&v.expect("datum")).expect("event"))
        .collect();
    assert!(from_json.len() > 1000, "{}", from_json.len());
    assert_eq!(from_avro, from_json);
}
