//! `rekindle replay` on a large scripted history equals the brute-force oracle.

mod support;

use std::collections::BTreeSet;

use support::histories::{expected, scripted, write_replay_file};
use support::worker::run_rekindle;
use support::{now_ms, DAY};

#[test]
fn replay_of_a_large_history_matches_the_oracle() {
    let t0 = (now_ms() - 60 * DAY).div_euclid(DAY) * DAY;
    let events = scripted(12_000, t0, 11);
    let until = now_ms();
    let expected = expected(&events, until);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("histories.jsonl");
    write_replay_file(&input, &events);
    let output = run_rekindle(&[
        "replay",
        "--input",
        input.to_str().expect("path"),
        "--until-ms",
        &until.to_string(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: BTreeSet<(String, i64, i64)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .map(|v| {
            let s = |k: &str| v[k].as_str().expect("string").to_string();
            let n = |k: &str| v[k].as_i64().expect("number");
            (s("user_id"), n("last_active_ms"), n("due_at_ms"))
        })
        .collect();
    let missing: Vec<_> = expected.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
    eprintln!("{} events, {} triggers", events.len(), expected.len());
}
