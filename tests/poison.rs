//! Poison input: 10,000 malformed records interleaved with valid ones. Every valid record is
//! processed (the trigger set is exactly the oracle's), every malformed one is on the
//! dead-letter topic, unchanged, with headers that point at its own place in the activity
//! topic and name the error; the worker never stops. Among them, records that carry the
//! clock-tick header without a tick's 8-byte time: read as events, so dead-lettered too.

use rekindle_suite::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rekindle_events::{encode_event, ActivityEvent};
use support::broker::{create_topic, produce_log, Batching, Broker, LogRecord, TICK_HEADER};
use support::histories::{assert_same_episodes, avro_payloads, expected, scripted};
use support::worker::{log_lines, read_topic, write_config, TriggerReader, Worker, DEAD_LETTERS};
use support::{now_ms, DAY};

const POISON: usize = 10_000;

/// A record's headers, as `produce_log` takes them.
type Headers = Vec<(&'static str, Vec<u8>)>;

/// The i-th malformed record, the error kind the worker must report for it, and its
/// headers.
fn poison(i: usize, template: &ActivityEvent) -> (Vec<u8>, &'static str, Headers) {
    let mut bad = template.clone();
    match i % 7 {
        0 => (
            format!("not avro at all {i}").into_bytes(),
            "avro",
            Vec::new(),
        ),
        1 => {
            let valid = encode_event(template, Some(1)).expect("encodes");
            (valid[..valid.len() - 4].to_vec(), "avro", Vec::new())
        }
        2 => (Vec::new(), "empty", Vec::new()),
        3 => {
            bad.user_id.clear();
            (
                encode_event(&bad, None).expect("encodes"),
                "invalid",
                Vec::new(),
            )
        }
        4 => {
            bad.timestamp_ms = 1_700_000_000; // seconds, not milliseconds
            (
                encode_event(&bad, Some(1)).expect("encodes"),
                "invalid",
                Vec::new(),
            )
        }
        5 => (vec![7u8; 950_000], "oversized", Vec::new()),
        // Not a tick's 8-byte time, whatever its header says; not an event either.
        _ => (vec![0xff; 3], "avro", vec![(TICK_HEADER, b"1".to_vec())]),
    }
}

#[test]
fn malformed_records_go_to_the_dead_letter_topic_and_valid_ones_are_processed() {
    let broker = Broker::start();
    let t0 = (now_ms() - 60 * DAY).div_euclid(DAY) * DAY;
    let events = scripted(2_000, t0, 3);
    let expected = expected(&events, now_ms());

    let valid = avro_payloads(&events);
    let mut records: Vec<LogRecord> = Vec::with_capacity(valid.len() + POISON);
    let mut kinds: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut poisoned = 0;
    for (i, (key, payload)) in valid.into_iter().enumerate() {
        records.push(LogRecord {
            key,
            payload,
            headers: Vec::new(),
        });
        // Spread the poison evenly through the valid stream.
        while poisoned < POISON && poisoned * events.len() <= i * POISON {
            let (payload, kind, headers) = poison(poisoned, &events[0]);
            let key = format!("bad-{poisoned:05}");
            kinds.insert(key.clone(), kind);
            records.push(LogRecord {
                key,
                payload,
                headers,
            });
            poisoned += 1;
        }
    }
    assert_eq!(poisoned, POISON);
    create_topic(&broker.address, "activity", 4);
    create_topic(&broker.address, "triggers", 2);
    create_topic(&broker.address, DEAD_LETTERS, 2);
    produce_log(&broker.address, "activity", &records, Batching::Default);

    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &broker.address,
        "activity",
        "triggers",
        "rekindle-poison",
    );
    let worker = Worker::start(&config, &dir.path().join("worker.log"));
    let mut reader = TriggerReader::new(&broker.address, "triggers");
    reader.read_until(Duration::from_secs(180), |d| d.len() >= expected.len());
    let dead = read_topic(
        &broker.address,
        DEAD_LETTERS,
        Duration::from_secs(120),
        |r| r.len() >= POISON,
    );
    reader.read_for(Duration::from_secs(2));
    let log = worker.log();
    assert!(
        worker.stop().success(),
        "the worker survives poison and stops cleanly"
    );

    let got: BTreeSet<_> = reader.delivered.iter().map(|d| d.episode()).collect();
    assert_same_episodes(&expected, &got); // every valid record was processed
    assert_eq!(reader.delivered.len(), expected.len());

    assert_eq!(
        dead.len(),
        POISON,
        "every malformed record is dead-lettered once"
    );
    // Where each record really is, read back from the activity topic itself.
    let activity = read_topic(&broker.address, "activity", Duration::from_secs(120), |r| {
        r.iter()
            .filter(|x| x.key.as_deref().is_some_and(|k| k.starts_with(b"bad-")))
            .count()
            >= POISON
    });
    let by_position: BTreeMap<(i32, i64), &support::worker::RawRecord> = activity
        .iter()
        .map(|r| ((r.partition, r.offset), r))
        .collect();
    let mut seen = BTreeSet::new();
    for d in &dead {
        let key = String::from_utf8(d.key.clone().expect("dead letter keeps its key"))
            .expect("utf-8 key");
        assert_eq!(d.headers["rekindle-source-topic"], "activity");
        let partition: i32 = d.headers["rekindle-source-partition"]
            .parse()
            .expect("partition header");
        let offset: i64 = d.headers["rekindle-source-offset"]
            .parse()
            .expect("offset header");
        let original = by_position
            .get(&(partition, offset))
            .expect("headers point at a real record");
        assert_eq!(
            original.key.as_deref(),
            Some(key.as_bytes()),
            "headers point at this very record"
        );
        if kinds[&key] == "oversized" {
            assert!(
                d.payload.is_empty(),
                "an oversized payload is not forwarded"
            );
            assert_eq!(
                d.headers["rekindle-payload-omitted"],
                original.payload.len().to_string()
            );
        } else {
            assert_eq!(original.payload, d.payload, "payload forwarded unchanged");
        }
        assert_eq!(
            d.headers["rekindle-error-kind"], kinds[&key],
            "{key}: {:?}",
            d.headers
        );
        assert!(!d.headers["rekindle-error"].is_empty());
        seen.insert(key);
    }
    assert_eq!(
        seen.len(),
        POISON,
        "no malformed record is missing or doubled"
    );

    let stopped = log_lines(&log, "worker stopped");
    assert_eq!(stopped[0]["malformed"], POISON as u64);
}
