//! Scripted user histories and the expected triggers, computed by brute force from the
//! rule's specification rather than from rekindle's code.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rekindle_events::{encode_event, ActivityEvent};

use super::DAY;

/// `lapsed_7d` with its default configuration.
pub const MIN_ACTIVE_DAYS: usize = 3;
pub const INACTIVE_FOR: i64 = 7 * DAY;
pub const LOOKBACK_DAYS: i64 = 30;

/// Events of `users` users over about 50 days starting at `t0` (a UTC midnight), sorted by
/// time across users. Shapes: lapsed after an engaged spell, never eligible, returning and
/// lapsing again, steady until the end, eligibility lost to the lookback, exact-deadline
/// returns, and random mixtures.
pub fn scripted(users: usize, t0: i64, seed: u64) -> Vec<ActivityEvent> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut events = Vec::new();
    let mut serial = 0u64;
    for u in 0..users {
        let user = format!("u{u:05}");
        let mut times: Vec<i64> = Vec::new();
        let at = |day: i64, rng: &mut StdRng| t0 + day * DAY + rng.random_range(0..DAY);
        match u % 7 {
            // Engaged for a few days, then silent: one trigger.
            0 => {
                let start = rng.random_range(0..20);
                for d in 0..rng.random_range(3..8) {
                    times.push(at(start + d, &mut rng));
                }
            }
            // One or two active days: never eligible.
            1 => {
                let start = rng.random_range(0..40);
                times.push(at(start, &mut rng));
                if rng.random::<bool>() {
                    times.push(at(start + rng.random_range(1..5), &mut rng));
                }
            }
            // Engaged, lapsed, came back, lapsed again: two triggers.
            2 => {
                let start = rng.random_range(0..10);
                for d in 0..5 {
                    times.push(at(start + d, &mut rng));
                }
                let back = start + 4 + rng.random_range(9..15);
                for d in 0..4 {
                    times.push(at(back + d, &mut rng));
                }
            }
            // Steady with gaps shorter than a week until day ~48: one trigger at the end.
            3 => {
                let mut d = rng.random_range(0..5);
                while d < 48 {
                    times.push(at(d, &mut rng));
                    d += rng.random_range(1..6);
                }
            }
            // Three active days spread so far apart that the lookback never holds three.
            4 => {
                let start = rng.random_range(0..5);
                times.push(at(start, &mut rng));
                times.push(at(start + 16, &mut rng));
                times.push(at(start + 32, &mut rng));
            }
            // Returns exactly at the deadline: the lapse still counts (the clock reached it).
            5 => {
                let start = rng.random_range(0..20);
                let base = t0 + start * DAY + 3_600_000;
                times.extend([
                    base,
                    base + DAY,
                    base + 2 * DAY,
                    base + 2 * DAY + INACTIVE_FOR,
                ]);
                times.push(base + 2 * DAY + INACTIVE_FOR + DAY);
            }
            // Random mixtures, several events a day.
            _ => {
                let mut d = rng.random_range(0..10);
                while d < 50 {
                    for _ in 0..rng.random_range(1..4) {
                        times.push(at(d, &mut rng));
                    }
                    d += *[1, 1, 2, 3, 6, 7, 9, 14]
                        .get(rng.random_range(0..8))
                        .unwrap_or(&1);
                }
            }
        }
        for t in times {
            serial += 1;
            events.push(ActivityEvent {
                event_id: format!("e{serial:08}"),
                user_id: user.clone(),
                event_type: if serial.is_multiple_of(3) {
                    "session_end".into()
                } else {
                    "app_open".into()
                },
                timestamp_ms: t,
                session_seconds: if serial.is_multiple_of(3) { 120 } else { 0 },
                amount: 0.0,
                timezone: None,
                attributes: BTreeMap::new(),
            });
        }
    }
    events.sort_by(|a, b| (a.timestamp_ms, &a.event_id).cmp(&(b.timestamp_ms, &b.event_id)));
    events
}

/// Expected `(user_id, last_active_ms, due_at_ms)` of every trigger, by brute force from the
/// specification: an episode starts at each event newer than all before it; it fires when
/// the user, active on at least three distinct UTC days in the 30 days ending with that
/// event's day, stays silent until `last + 7 days` (reached before `until_ms`).
pub fn expected(events: &[ActivityEvent], until_ms: i64) -> BTreeSet<(String, i64, i64)> {
    let mut by_user: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for e in events {
        by_user.entry(&e.user_id).or_default().push(e.timestamp_ms);
    }
    let mut expected = BTreeSet::new();
    for (user, mut times) in by_user {
        times.sort_unstable();
        for (i, &t) in times.iter().enumerate() {
            let next = times[i + 1..].iter().copied().find(|&n| n > t);
            if times[i + 1..].contains(&t) {
                continue; // the episode starts at the last of equal times; same thing.
            }
            let day = t.div_euclid(DAY);
            let days: BTreeSet<i64> = times[..=i]
                .iter()
                .map(|x| x.div_euclid(DAY))
                .filter(|d| *d > day - LOOKBACK_DAYS)
                .collect();
            if days.len() < MIN_ACTIVE_DAYS {
                continue;
            }
            let due = t + INACTIVE_FOR;
            let lapsed = match next {
                Some(n) => n >= due,
                None => due <= until_ms,
            };
            if lapsed {
                expected.insert((user.to_string(), t, due));
            }
        }
    }
    expected
}

pub fn write_replay_file(path: &Path, events: &[ActivityEvent]) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("replay file"));
    for e in events {
        serde_json::to_writer(&mut out, e).expect("json");
        out.write_all(b"\n").expect("write");
    }
    out.flush().expect("flush");
}

/// Avro payloads of the events: even ones Confluent-framed with schema id 1, odd ones plain.
pub fn avro_payloads(events: &[ActivityEvent]) -> Vec<(String, Vec<u8>)> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let framing = if i % 2 == 0 { Some(1) } else { None };
            (
                e.user_id.clone(),
                encode_event(e, framing).expect("event encodes"),
            )
        })
        .collect()
}

/// A trigger as the oracle knows it: user, episode start (last activity), due time.
pub type Episode = (String, i64, i64);

/// Fails with a sample of what is missing and what is unexpected.
pub fn assert_same_episodes(expected: &BTreeSet<Episode>, got: &BTreeSet<Episode>) {
    let missing: Vec<_> = expected.difference(got).take(5).collect();
    let extra: Vec<_> = got.difference(expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, unexpected {extra:?}"
    );
}
