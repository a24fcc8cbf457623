//! `rekindle replay` on a large scripted history equals the brute-force oracle.

use rekindle_suite::support;

use std::collections::BTreeSet;

use support::histories::{assert_same_episodes, expected, scripted, write_replay_file};
use support::worker::{replay, replayed_episode, write_lapsed_only_config};
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
    let config = write_lapsed_only_config(dir.path());
    let got: BTreeSet<_> = replay(Some(&config), &input, until)
        .iter()
        .map(replayed_episode)
        .collect();
    assert_same_episodes(&expected, &got);
    eprintln!("{} events, {} triggers", events.len(), expected.len());
}
