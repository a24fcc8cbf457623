//! The stored form of a profile, in the state store and the changelog: most of the state's
//! bytes, so a layout of its own rather than a derived one.
//!
//! A derived encoding (postcard) writes every time as an absolute millisecond count, six
//! bytes each, about fifteen of them per profile; at a million users that was most of the
//! 120 bytes a user cost on disk. Here every time but one is written as the difference from
//! a related time in the same profile (the latest activity, the episode a rule fired for,
//! the moment it fired), which is zero or a few bytes: a decision note taken when its rule
//! fired costs one byte for its time. Values that can be predicted from others are written
//! as the difference from the prediction: the latest bucket from the latest activity's day,
//! the active-day bitmap from the buckets (the same days when buckets are UTC days).
//! Everything stays exact: differences are wrapping, so any `i64` round-trips (bucket
//! indices within 2^62 of each other, as a retained horizon always is).
//!
//! Layout (varints are LEB128; "delta from x" is the zigzag varint of `value - x`):
//!
//! | field | layout |
//! |---|---|
//! | presence flags | varint of [`Flags`] |
//! | last activity | zigzag varint |
//! | first activity | delta from last activity |
//! | buckets | count; if any, the latest index as delta from the UTC day of the last activity; per bucket from the latest back: `(latest - index) << 1 \| has_amount`, events, session seconds, amount (8 bytes LE) only if `has_amount` |
//! | next evaluation | delta from last activity (if flagged) |
//! | stage | stage code, since as delta from last activity (if flagged) |
//! | rule memories | count; per memory: rule key (4 bytes), episode as delta from last activity, fired as delta from episode, `has_last_sent`, last sent as delta from fired, experiment tags |
//! | frequency-cap times | count; each as delta from the one before (the first from last activity) |
//! | deferred trigger | postcard (if flagged; rare) |
//! | attribution | rule reference, group, time as delta from that rule's last sent (if flagged) |
//! | time zone | length, UTF-8 (if flagged) |
//! | recent decisions | count; per note: rule reference, time as delta from that rule's firing, verdict code (0 sent, 1 suppressed, 2 deferred, 3 cancelled) and its reason's code (`reason_code`) or its release time (zigzag) |
//! | active days | latest day as delta from the UTC day of the last activity, first day as delta from the latest, bitmap XOR the bitmap the buckets predict (if flagged) |
//! | segment | one byte (if flagged) |
//! | applied offset | varint, only if bytes remain |
//!
//! A rule reference is `i + 1` for the profile's `i`-th rule memory, or 0 followed by the
//! four-byte key. The applied offset comes last so that a store may keep the value without
//! it ([`encode_profile`] returns where it starts): a profile whose events all lie below
//! the stored position needs no offset to skip them.

use crate::varint::{get_varint, put_varint, unzigzag, zigzag};
use crate::{
    ActiveDays, Attribution, Bucket, DecisionNote, Deferred, Group, LifecycleStage, Reason,
    RuleKey, RuleMemory, RulesError, StageMemory, UserProfile, Verdict, DAY_MS,
};

struct Flags;

impl Flags {
    const WAKE: u64 = 1;
    const STAGE: u64 = 1 << 1;
    const ATTRIBUTION: u64 = 1 << 2;
    const TIMEZONE: u64 = 1 << 3;
    const ACTIVE_DAYS: u64 = 1 << 4;
    const SEGMENT: u64 = 1 << 5;
    const OPTED_OUT: u64 = 1 << 6;
    // Rare: the only flag that makes the varint two bytes.
    const DEFERRED: u64 = 1 << 7;
    const ALL: u64 = (1 << 8) - 1;
}

/// Room reserved for an encoded profile: most take 50-150 bytes, so one allocation.
pub const ENCODED_PROFILE_BYTES: usize = 192;

/// Appends `profile`'s stored form to `out` and returns the length (from where `out` was)
/// without the applied offset: a store may keep only that prefix when every event at or
/// below the offset is below its stored position. Fails only on a deferred trigger postcard
/// cannot encode (none can be built: no map of unknown length, no non-string key).
pub fn encode_profile(profile: &UserProfile, out: &mut Vec<u8>) -> Result<usize, RulesError> {
    let start = out.len();
    let p = profile;
    let flags = [
        (p.wake_at_ms.is_some(), Flags::WAKE),
        (p.stage.is_some(), Flags::STAGE),
        (p.deferred.is_some(), Flags::DEFERRED),
        (p.attribution.is_some(), Flags::ATTRIBUTION),
        (p.timezone.is_some(), Flags::TIMEZONE),
        (p.opted_out, Flags::OPTED_OUT),
        (p.active_days.is_some(), Flags::ACTIVE_DAYS),
        (p.segment.is_some(), Flags::SEGMENT),
    ]
    .into_iter()
    .filter(|(set, _)| *set)
    .fold(0, |all, (_, flag)| all | flag);
    put_varint(out, flags);
    let last = p.last_active_ms;
    put_varint(out, zigzag(last));
    put_delta(out, p.first_active_ms, last);
    put_buckets(out, &p.buckets, utc_day(last));
    if let Some(wake) = p.wake_at_ms {
        put_delta(out, wake, last);
    }
    if let Some(stage) = p.stage {
        put_varint(out, stage.stage.index() as u64);
        put_delta(out, stage.since_ms, last);
    }
    put_varint(out, p.rules.len() as u64);
    for m in &p.rules {
        out.extend_from_slice(&m.rule.to_bytes());
        put_delta(out, m.episode_ms, last);
        put_delta(out, m.fired_at_ms, m.episode_ms);
        put_varint(out, u64::from(m.last_sent_ms.is_some()));
        if let Some(sent) = m.last_sent_ms {
            put_delta(out, sent, m.fired_at_ms);
        }
        put_varint(out, u64::from(m.exposed_in));
        put_varint(out, u64::from(m.reactivated_in));
    }
    put_varint(out, p.sent_ms.len() as u64);
    let mut previous = last;
    for &sent in &p.sent_ms {
        put_delta(out, sent, previous);
        previous = sent;
    }
    if let Some(deferred) = &p.deferred {
        let bytes = postcard::to_allocvec(deferred.as_ref())
            .map_err(|_| RulesError::Profile("cannot encode the deferred trigger"))?;
        out.extend_from_slice(&bytes);
    }
    if let Some(a) = &p.attribution {
        put_rule_ref(out, p, a.rule);
        put_varint(out, u64::from(a.group == Group::Holdout));
        put_delta(out, a.at_ms, sent_base(p, a.rule));
    }
    if let Some(zone) = &p.timezone {
        put_varint(out, zone.len() as u64);
        out.extend_from_slice(zone.as_bytes());
    }
    put_varint(out, p.recent.len() as u64);
    for note in &p.recent {
        put_rule_ref(out, p, note.rule);
        put_delta(out, note.at_ms, fired_base(p, note.rule));
        put_verdict(out, &note.verdict);
    }
    if let Some(days) = &p.active_days {
        let latest = i64::from(days.last_day);
        put_delta(out, latest, utc_day(last));
        put_delta(out, i64::from(days.first_day), latest);
        put_varint(out, days.recent ^ predicted_days(&p.buckets, latest));
    }
    if let Some(segment) = p.segment {
        out.push(segment);
    }
    let body = out.len() - start;
    if let Some(offset) = p.applied_offset {
        // Offsets are never negative: no zigzag (a negative one still round-trips, in ten
        // bytes).
        put_varint(out, offset as u64);
    }
    Ok(body)
}

/// Reads a value written by [`encode_profile`], whole or without its applied offset.
pub fn decode_profile(bytes: &[u8]) -> Result<UserProfile, RulesError> {
    let input = &mut &bytes[..];
    let flags = take(input)?;
    if flags & !Flags::ALL != 0 {
        return Err(corrupt("unknown presence flags"));
    }
    let has = |flag: u64| flags & flag != 0;
    let last = unzigzag(take(input)?);
    let mut p = UserProfile {
        last_active_ms: last,
        first_active_ms: take_delta(input, last)?,
        ..UserProfile::default()
    };
    p.buckets = take_buckets(input, utc_day(last))?;
    if has(Flags::WAKE) {
        p.wake_at_ms = Some(take_delta(input, last)?);
    }
    if has(Flags::STAGE) {
        let code = take(input)?;
        let stage = usize::try_from(code)
            .ok()
            .and_then(|i| LifecycleStage::ALL.get(i).copied())
            .ok_or(corrupt("stage code out of range"))?;
        p.stage = Some(StageMemory {
            stage,
            since_ms: take_delta(input, last)?,
        });
    }
    let rules = take_count(input, 8)?;
    p.rules.reserve_exact(rules);
    for _ in 0..rules {
        let rule = take_key(input)?;
        let episode_ms = take_delta(input, last)?;
        let fired_at_ms = take_delta(input, episode_ms)?;
        let last_sent_ms = match take(input)? {
            0 => None,
            1 => Some(take_delta(input, fired_at_ms)?),
            _ => return Err(corrupt("last-sent flag out of range")),
        };
        p.rules.push(RuleMemory {
            rule,
            episode_ms,
            fired_at_ms,
            last_sent_ms,
            exposed_in: take_u32(input)?,
            reactivated_in: take_u32(input)?,
        });
    }
    let sent = take_count(input, 1)?;
    p.sent_ms.reserve_exact(sent);
    let mut previous = last;
    for _ in 0..sent {
        previous = take_delta(input, previous)?;
        p.sent_ms.push(previous);
    }
    if has(Flags::DEFERRED) {
        let (deferred, rest) = postcard::take_from_bytes::<Deferred>(input)
            .map_err(|_| corrupt("unreadable deferred trigger"))?;
        *input = rest;
        p.deferred = Some(Box::new(deferred));
    }
    if has(Flags::ATTRIBUTION) {
        let rule = take_rule_ref(input, &p)?;
        let group = match take(input)? {
            0 => Group::Treatment,
            1 => Group::Holdout,
            _ => return Err(corrupt("group code out of range")),
        };
        let at_ms = take_delta(input, sent_base(&p, rule))?;
        p.attribution = Some(Attribution { rule, group, at_ms });
    }
    if has(Flags::TIMEZONE) {
        let len = take_count(input, 1)?;
        let (zone, rest) = input.split_at(len);
        let zone = std::str::from_utf8(zone).map_err(|_| corrupt("time zone is not UTF-8"))?;
        p.timezone = Some(zone.to_string());
        *input = rest;
    }
    p.opted_out = has(Flags::OPTED_OUT);
    let notes = take_count(input, 3)?;
    p.recent.reserve_exact(notes);
    for _ in 0..notes {
        let rule = take_rule_ref(input, &p)?;
        let at_ms = take_delta(input, fired_base(&p, rule))?;
        let verdict = take_verdict(input)?;
        p.recent.push(DecisionNote {
            rule,
            at_ms,
            verdict,
        });
    }
    if has(Flags::ACTIVE_DAYS) {
        let latest = take_delta(input, utc_day(last))?;
        let first = take_delta(input, latest)?;
        let recent = take(input)? ^ predicted_days(&p.buckets, latest);
        let day = |d: i64| i32::try_from(d).map_err(|_| corrupt("active day out of range"));
        p.active_days = Some(ActiveDays {
            first_day: day(first)?,
            last_day: day(latest)?,
            recent,
        });
    }
    if has(Flags::SEGMENT) {
        let (&segment, rest) = input.split_first().ok_or(corrupt("truncated segment"))?;
        p.segment = Some(segment);
        *input = rest;
    }
    if !input.is_empty() {
        p.applied_offset = Some(take(input)? as i64);
        if !input.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
    }
    Ok(p)
}

fn corrupt(reason: &'static str) -> RulesError {
    RulesError::Profile(reason)
}

fn take(input: &mut &[u8]) -> Result<u64, RulesError> {
    get_varint(input).map_err(corrupt)
}

fn take_u32(input: &mut &[u8]) -> Result<u32, RulesError> {
    u32::try_from(take(input)?).map_err(|_| corrupt("counter out of range"))
}

/// A count of items that take at least `min_bytes` each: one beyond what the rest of the
/// value could hold is damage, not a reason to allocate.
fn take_count(input: &mut &[u8], min_bytes: usize) -> Result<usize, RulesError> {
    let count = take(input)?;
    usize::try_from(count)
        .ok()
        .filter(|&n| n.saturating_mul(min_bytes) <= input.len())
        .ok_or(corrupt("count exceeds the value"))
}

fn put_delta(out: &mut Vec<u8>, value: i64, base: i64) {
    put_varint(out, zigzag(value.wrapping_sub(base)));
}

fn take_delta(input: &mut &[u8], base: i64) -> Result<i64, RulesError> {
    Ok(base.wrapping_add(unzigzag(take(input)?)))
}

fn take_key(input: &mut &[u8]) -> Result<RuleKey, RulesError> {
    let (key, rest) = input
        .split_first_chunk::<4>()
        .ok_or(corrupt("truncated rule key"))?;
    *input = rest;
    Ok(RuleKey::from_bytes(*key))
}

fn put_rule_ref(out: &mut Vec<u8>, p: &UserProfile, rule: RuleKey) {
    match p.rules.iter().position(|m| m.rule == rule) {
        Some(i) => put_varint(out, i as u64 + 1),
        None => {
            put_varint(out, 0);
            out.extend_from_slice(&rule.to_bytes());
        }
    }
}

fn take_rule_ref(input: &mut &[u8], p: &UserProfile) -> Result<RuleKey, RulesError> {
    match take(input)? {
        0 => take_key(input),
        i => usize::try_from(i - 1)
            .ok()
            .and_then(|i| p.rules.get(i))
            .map(|m| m.rule)
            .ok_or(corrupt("rule reference out of range")),
    }
}

/// What an attribution's time is written against: a trigger is attributed when it is sent.
fn sent_base(p: &UserProfile, rule: RuleKey) -> i64 {
    p.memory(rule)
        .and_then(|m| m.last_sent_ms)
        .unwrap_or(p.last_active_ms)
}

/// What a decision note's time is written against: a rule is decided on when it fires.
fn fired_base(p: &UserProfile, rule: RuleKey) -> i64 {
    p.memory(rule).map_or(p.last_active_ms, |m| m.fired_at_ms)
}

/// A reason's stored code: its declaration position, spelled out so that adding a reason
/// cannot renumber the others unnoticed.
fn reason_code(reason: Reason) -> u64 {
    match reason {
        Reason::Shadow => 0,
        Reason::OptedOut => 1,
        Reason::Cooldown => 2,
        Reason::Capped => 3,
        Reason::Outranked => 4,
        Reason::QuietHours => 5,
        Reason::Holdout => 6,
        Reason::Returned => 7,
        Reason::UserDeleted => 8,
    }
}

/// A verdict's code, then its reason's code or its release time: the bytes postcard wrote
/// for verdicts before this layout.
fn put_verdict(out: &mut Vec<u8>, verdict: &Verdict) {
    let reason = |out: &mut Vec<u8>, r: &Reason| put_varint(out, reason_code(*r));
    match verdict {
        Verdict::Sent => put_varint(out, 0),
        Verdict::Suppressed(r) => {
            put_varint(out, 1);
            reason(out, r);
        }
        Verdict::Deferred { release_ms } => {
            put_varint(out, 2);
            put_varint(out, zigzag(*release_ms));
        }
        Verdict::Cancelled(r) => {
            put_varint(out, 3);
            reason(out, r);
        }
    }
}

fn take_verdict(input: &mut &[u8]) -> Result<Verdict, RulesError> {
    let reason = |input: &mut &[u8]| {
        let code = take(input)?;
        Reason::ALL
            .into_iter()
            .find(|r| reason_code(*r) == code)
            .ok_or(corrupt("reason code out of range"))
    };
    match take(input)? {
        0 => Ok(Verdict::Sent),
        1 => Ok(Verdict::Suppressed(reason(input)?)),
        2 => Ok(Verdict::Deferred {
            release_ms: unzigzag(take(input)?),
        }),
        3 => Ok(Verdict::Cancelled(reason(input)?)),
        _ => Err(corrupt("verdict code out of range")),
    }
}

/// The UTC day of a time: with the default one-day buckets, the index of its bucket and
/// usually its day in the reporting zone.
fn utc_day(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// The active-day bitmap ending with `last_day` that the buckets give when bucket indices
/// are days.
fn predicted_days(buckets: &[Bucket], last_day: i64) -> u64 {
    buckets
        .iter()
        .filter_map(|b| u32::try_from(last_day.wrapping_sub(b.index)).ok())
        .filter(|&back| back < 64)
        .fold(0, |bits, back| bits | 1 << back)
}

fn put_buckets(out: &mut Vec<u8>, buckets: &[Bucket], predicted_latest: i64) {
    put_varint(out, buckets.len() as u64);
    let Some(latest) = buckets.last().map(|b| b.index) else {
        return;
    };
    put_delta(out, latest, predicted_latest);
    for b in buckets.iter().rev() {
        let has_amount = b.amount != 0.0 || b.amount.is_sign_negative();
        let back = latest.wrapping_sub(b.index) as u64;
        put_varint(out, (back << 1) | u64::from(has_amount));
        put_varint(out, u64::from(b.events));
        put_varint(out, b.session_seconds);
        if has_amount {
            out.extend_from_slice(&b.amount.to_le_bytes());
        }
    }
}

fn take_buckets(input: &mut &[u8], predicted_latest: i64) -> Result<Vec<Bucket>, RulesError> {
    // Every bucket takes at least three bytes.
    let count = take_count(input, 3)?;
    let mut buckets = Vec::with_capacity(count);
    if count == 0 {
        return Ok(buckets);
    }
    let latest = take_delta(input, predicted_latest)?;
    for _ in 0..count {
        let head = take(input)?;
        let index = latest.wrapping_sub((head >> 1) as i64);
        let events = take_u32(input)?;
        let session_seconds = take(input)?;
        let amount = if head & 1 == 1 {
            let (raw, rest) = input
                .split_first_chunk::<8>()
                .ok_or(corrupt("truncated amount"))?;
            *input = rest;
            f64::from_le_bytes(*raw)
        } else {
            0.0
        };
        buckets.push(Bucket {
            index,
            events,
            session_seconds,
            amount,
        });
    }
    buckets.reverse();
    Ok(buckets)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use rekindle_events::ReactivationTrigger;

    use super::*;

    const DAY: i64 = DAY_MS;
    const T0: i64 = 1_750_000_000_000;

    fn round_trip(p: &UserProfile) -> Result<UserProfile, RulesError> {
        let mut out = Vec::new();
        let body = encode_profile(p, &mut out).expect("encode");
        let whole = decode_profile(&out)?;
        let without = decode_profile(&out[..body])?;
        assert_eq!(
            UserProfile {
                applied_offset: p.applied_offset,
                ..without
            },
            whole,
            "the body alone is the profile without its offset"
        );
        Ok(whole)
    }

    /// A profile the way the rules leave one: five weeks of daily activity, two rules that
    /// fired, one of them sent and attributed, recent decisions, a zone, active days.
    fn typical() -> UserProfile {
        let last = T0 + 3 * DAY + 12_345;
        let a = RuleKey::of("lapsed_7d");
        let b = RuleKey::of("new_user_no_return");
        let buckets: Vec<Bucket> = (0..5)
            .map(|i| Bucket {
                index: utc_day(last) - 4 + i,
                events: 3,
                session_seconds: 600,
                amount: if i == 2 { 9.99 } else { 0.0 },
            })
            .collect();
        let recent = predicted_days(&buckets, utc_day(last));
        UserProfile {
            first_active_ms: last - 4 * DAY - 1_000,
            last_active_ms: last,
            buckets,
            wake_at_ms: Some(last + 7 * DAY),
            stage: Some(StageMemory {
                stage: LifecycleStage::Active,
                since_ms: last - 2 * DAY,
            }),
            rules: vec![
                RuleMemory {
                    rule: a,
                    episode_ms: last - 10 * DAY,
                    fired_at_ms: last - 3 * DAY + 250,
                    last_sent_ms: Some(last - 3 * DAY + 250),
                    exposed_in: 0,
                    reactivated_in: 0,
                },
                RuleMemory {
                    rule: b,
                    episode_ms: last - 20 * DAY,
                    fired_at_ms: last - 17 * DAY + 10,
                    last_sent_ms: None,
                    exposed_in: 7,
                    reactivated_in: 0,
                },
            ],
            sent_ms: vec![last - 3 * DAY + 250],
            deferred: None,
            attribution: Some(Attribution {
                rule: a,
                group: Group::Treatment,
                at_ms: last - 3 * DAY + 250,
            }),
            timezone: Some("Europe/Berlin".into()),
            opted_out: false,
            recent: vec![
                DecisionNote {
                    rule: b,
                    at_ms: last - 17 * DAY + 10,
                    verdict: Verdict::Suppressed(Reason::Shadow),
                },
                DecisionNote {
                    rule: a,
                    at_ms: last - 3 * DAY + 250,
                    verdict: Verdict::Sent,
                },
            ],
            applied_offset: Some(1_234_567),
            active_days: Some(ActiveDays {
                first_day: (utc_day(last) - 4) as i32,
                last_day: utc_day(last) as i32,
                recent,
            }),
            segment: Some(3),
            timer_entry: None,
        }
    }

    #[test]
    fn a_typical_profile_round_trips_in_few_bytes() {
        let p = typical();
        assert_eq!(round_trip(&p), Ok(p.clone()));
        let mut out = Vec::new();
        let body = encode_profile(&p, &mut out).expect("encode");
        // What the derived encoding (postcard, with the buckets in this layout) took.
        let derived = postcard::to_allocvec(&(
            p.first_active_ms,
            p.last_active_ms,
            p.wake_at_ms,
            p.stage,
            &p.rules,
            &p.sent_ms,
            &p.attribution,
            &p.timezone,
            &p.recent,
            p.applied_offset,
            p.active_days,
            p.segment,
        ))
        .expect("postcard")
        .len()
            + 30;
        assert!(body * 4 <= derived * 3, "{body} bytes against {derived}");
        assert_eq!(out.len() - body, 3, "the offset is the trailing varint");
    }

    #[test]
    fn times_that_coincide_cost_one_byte() {
        let mut p = typical();
        let mut out = Vec::new();
        let before = encode_profile(&p, &mut out).expect("encode");
        // A note taken away from its rule's firing costs its distance from it.
        p.recent[1].at_ms += 5 * DAY;
        out.clear();
        assert!(encode_profile(&p, &mut out).expect("encode") >= before + 4);
    }

    #[test]
    fn the_days_bitmap_costs_one_byte_when_the_buckets_predict_it() {
        let p = typical();
        let mut with = Vec::new();
        encode_profile(&p, &mut with).expect("encode");
        let mut out = Vec::new();
        let mut other = p.clone();
        if let Some(days) = other.active_days.as_mut() {
            days.recent ^= 1 << 40;
        }
        encode_profile(&other, &mut out).expect("encode");
        assert!(out.len() >= with.len() + 5);
        assert_eq!(round_trip(&other), Ok(other));
    }

    #[test]
    fn the_empty_profile_takes_seven_bytes() {
        let p = UserProfile::default();
        let mut out = Vec::new();
        assert_eq!(encode_profile(&p, &mut out), Ok(7));
        assert_eq!(out, [0; 7]);
        assert_eq!(round_trip(&p), Ok(p));
    }

    #[test]
    fn a_deferred_trigger_and_a_note_for_a_forgotten_rule_round_trip() {
        let mut p = typical();
        p.deferred = Some(Box::new(Deferred {
            trigger: ReactivationTrigger {
                trigger_id: "t".into(),
                user_id: "u".into(),
                rule_id: "lapsed_7d".into(),
                fired_at_ms: 5,
                due_at_ms: 4,
                last_active_ms: 3,
                lifecycle_stage: "at_risk".into(),
                features: BTreeMap::from([("days_silent".into(), 7.0)]),
                schema_version: 2,
                rule_config_hash: "abc".into(),
                segment: "loyal".into(),
                arm: String::new(),
            },
            priority: -3,
            release_ms: T0 + 9 * DAY,
        }));
        p.recent.push(DecisionNote {
            rule: RuleKey::of("removed_rule"),
            at_ms: T0,
            verdict: Verdict::Deferred { release_ms: T0 + 1 },
        });
        p.opted_out = true;
        assert_eq!(round_trip(&p), Ok(p));
    }

    #[test]
    fn verdicts_keep_their_codes() {
        let bytes = |v: Verdict| {
            let mut out = Vec::new();
            put_verdict(&mut out, &v);
            assert_eq!(take_verdict(&mut out.as_slice()), Ok(v));
            out
        };
        assert_eq!(bytes(Verdict::Sent), [0]);
        assert_eq!(bytes(Verdict::Suppressed(Reason::Capped)), [1, 3]);
        assert_eq!(bytes(Verdict::Deferred { release_ms: -1 }), [2, 1]);
        assert_eq!(bytes(Verdict::Cancelled(Reason::UserDeleted)), [3, 8]);
        for (code, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason_code(reason), code as u64, "{reason:?}");
        }
    }

    #[test]
    fn damage_is_an_error() {
        let p = typical();
        let mut out = Vec::new();
        let body = encode_profile(&p, &mut out).expect("encode");
        for cut in 0..body {
            // Cutting inside the body leaves a prefix that is not a whole profile: either an
            // error or (cut inside the trailing fields) a different profile, never a panic.
            if let Ok(q) = decode_profile(&out[..cut]) {
                assert_ne!(q, p);
            }
        }
        let mut extra = out.clone();
        extra.push(0);
        assert_eq!(
            decode_profile(&extra),
            Err(RulesError::Profile("trailing bytes"))
        );
        assert_eq!(
            decode_profile(&[0x80, 0x02]),
            Err(RulesError::Profile("unknown presence flags"))
        );
    }

    fn any_profile() -> impl Strategy<Value = UserProfile> {
        let key = prop_oneof![
            Just(RuleKey::of("a")),
            Just(RuleKey::of("b")),
            any::<[u8; 4]>().prop_map(RuleKey::from_bytes)
        ];
        let verdict = prop_oneof![
            Just(Verdict::Sent),
            (0..Reason::ALL.len()).prop_map(|i| Verdict::Suppressed(Reason::ALL[i])),
            any::<i64>().prop_map(|release_ms| Verdict::Deferred { release_ms }),
            (0..Reason::ALL.len()).prop_map(|i| Verdict::Cancelled(Reason::ALL[i])),
        ];
        let memory = (
            key.clone(),
            any::<i64>(),
            any::<i64>(),
            any::<Option<i64>>(),
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(
                |(rule, episode_ms, fired_at_ms, last_sent_ms, e, r)| RuleMemory {
                    rule,
                    episode_ms,
                    fired_at_ms,
                    last_sent_ms,
                    exposed_in: e,
                    reactivated_in: r,
                },
            );
        // Ascending and unique, as profiles keep them, and within 2^62 of each other (the
        // layout's limit; a profile's buckets lie within its retained horizon).
        let buckets = proptest::collection::btree_map(
            -(1i64 << 60)..(1i64 << 60),
            (any::<u32>(), any::<u64>(), any::<f64>()),
            0..6,
        )
        .prop_map(|raw| {
            raw.into_iter()
                .map(|(index, (events, session_seconds, amount))| Bucket {
                    index,
                    events,
                    session_seconds,
                    amount,
                })
                .collect::<Vec<_>>()
        });
        let note =
            (key.clone(), any::<i64>(), verdict).prop_map(|(rule, at_ms, verdict)| DecisionNote {
                rule,
                at_ms,
                verdict,
            });
        let days =
            (any::<i32>(), any::<i32>(), any::<u64>()).prop_map(|(f, l, recent)| ActiveDays {
                first_day: f,
                last_day: l,
                recent,
            });
        (
            (any::<i64>(), any::<i64>(), buckets),
            (
                any::<Option<i64>>(),
                proptest::option::of((0..5usize, any::<i64>())),
                proptest::collection::vec(memory, 0..4),
                proptest::collection::vec(any::<i64>(), 0..4),
            ),
            (
                proptest::option::of((key, any::<bool>(), any::<i64>())),
                proptest::option::of(".{0,20}"),
                any::<bool>(),
                proptest::collection::vec(note, 0..5),
            ),
            (
                any::<Option<i64>>(),
                proptest::option::of(days),
                any::<Option<u8>>(),
            ),
        )
            .prop_map(
                |(
                    (first, last, buckets),
                    (wake, stage, rules, sent),
                    (attribution, timezone, opted_out, recent),
                    (applied_offset, active_days, segment),
                )| UserProfile {
                    first_active_ms: first,
                    last_active_ms: last,
                    buckets,
                    wake_at_ms: wake,
                    stage: stage.map(|(i, since_ms)| StageMemory {
                        stage: LifecycleStage::ALL[i],
                        since_ms,
                    }),
                    rules,
                    sent_ms: sent,
                    deferred: None,
                    attribution: attribution.map(|(rule, holdout, at_ms)| Attribution {
                        rule,
                        group: if holdout {
                            Group::Holdout
                        } else {
                            Group::Treatment
                        },
                        at_ms,
                    }),
                    timezone,
                    opted_out,
                    recent,
                    applied_offset,
                    active_days,
                    segment,
                    timer_entry: None,
                },
            )
    }

    /// Compares floats by their bits, so that NaN amounts count as equal when kept exactly.
    fn same(a: &UserProfile, b: &UserProfile) -> bool {
        let bits = |p: &UserProfile| -> Vec<u64> {
            p.buckets.iter().map(|b| b.amount.to_bits()).collect()
        };
        let zero = |p: &UserProfile| {
            let mut p = p.clone();
            p.buckets.iter_mut().for_each(|b| b.amount = 0.0);
            p
        };
        bits(a) == bits(b) && zero(a) == zero(b)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Any profile, with any times (the differences wrap) and any amounts (negative
        /// zero and NaN included), reads back exactly, with and without its offset.
        #[test]
        fn any_profile_round_trips(p in any_profile()) {
            let mut out = Vec::new();
            let body = encode_profile(&p, &mut out).expect("encode");
            let whole = decode_profile(&out);
            prop_assert!(whole.as_ref().is_ok_and(|q| same(q, &p)), "{whole:?}");
            let without = decode_profile(&out[..body]).map(|q| UserProfile { applied_offset: p.applied_offset, ..q });
            prop_assert!(without.as_ref().is_ok_and(|q| same(q, &p)), "{without:?}");
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode_profile(&bytes);
        }
    }
}
