//! Rules and policies through [`RuleBook`], the way the engine drives them: activity at its
//! time, then every wake-up the book asks for, in time order. Expectations are computed by
//! hand from the rule's text.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use crate::*;

const DAY: i64 = DAY_MS;
const HOUR: i64 = 3_600_000;
/// 2023-11-14T00:00:00Z, a Tuesday.
const T0: i64 = 1_699_920_000_000;

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

fn lapsed(priority: i32) -> RuleConfig {
    RuleConfig {
        priority,
        ..RuleConfig::lapsed_7d()
    }
}

fn config(rules: &[(&str, RuleConfig)]) -> RuleBookConfig {
    RuleBookConfig {
        rules: rules
            .iter()
            .map(|(id, c)| (id.to_string(), c.clone()))
            .collect(),
        ..RuleBookConfig::default()
    }
}

/// One user driven through a rule book, with every decision it produced.
struct Sim {
    book: RuleBook,
    user: String,
    profile: UserProfile,
    now: i64,
    decisions: Vec<Decision>,
    reactivated: Vec<Reactivation>,
    attributable: Vec<(String, Group)>,
    stages: Vec<(i64, Option<LifecycleStage>)>,
}

impl Sim {
    fn new(config: &RuleBookConfig) -> Sim {
        let windows = Windows::new(&WindowConfig::default()).expect("windows");
        Sim {
            book: RuleBook::new(windows, config).expect("valid rule book"),
            user: "u1".into(),
            profile: UserProfile::default(),
            now: 0,
            decisions: Vec::new(),
            reactivated: Vec::new(),
            attributable: Vec::new(),
            stages: Vec::new(),
        }
    }

    fn take(&mut self, mut out: Outcome) {
        if let Some(change) = out.stage_change {
            self.stages.push((self.now, change.to));
        }
        self.reactivated.extend(out.reactivated.take());
        self.attributable.append(&mut out.attributable);
        self.decisions.append(&mut out.decisions);
    }

    /// Every wake-up before or at `t`, in order, as the engine's timers would run them.
    fn run_until(&mut self, t: i64) {
        while let Some(wake) = self.book.next_wake(&self.profile, self.now) {
            if wake > t {
                break;
            }
            self.now = wake;
            let mut out = Outcome::default();
            let next = self
                .book
                .on_wake(&self.user, &mut self.profile, wake, &mut out);
            assert_eq!(
                next,
                self.book.plan(&self.profile, wake),
                "on_wake's wake-up"
            );
            self.take(out);
        }
        self.now = self.now.max(t);
    }

    fn act_with(&mut self, t: i64, session_seconds: u32, timezone: Option<&str>) {
        self.run_until(t);
        let mut out = Outcome::default();
        let activity = Activity {
            timestamp_ms: t,
            session_seconds,
            amount: 0.0,
            timezone,
        };
        let next =
            self.book
                .on_activity(&self.user, &mut self.profile, activity, self.now, &mut out);
        assert_eq!(
            next,
            self.book.plan(&self.profile, self.now),
            "on_activity's wake-up"
        );
        self.take(out);
    }

    fn act(&mut self, t: i64) {
        self.act_with(t, 60, None);
    }

    fn summary(&self) -> Vec<(String, i64, String)> {
        self.decisions
            .iter()
            .map(|d| {
                (
                    d.trigger.rule_id.clone(),
                    d.trigger.fired_at_ms,
                    d.verdict.label(),
                )
            })
            .collect()
    }

    fn sent(&self) -> Vec<&ReactivationTriggerRef> {
        self.decisions
            .iter()
            .filter(|d| d.verdict == Verdict::Sent)
            .map(|d| &d.trigger)
            .collect()
    }
}

/// Active at midnight on days 0, 1 and 2: eligible for lapsed_7d, due on day 9.
fn engaged(sim: &mut Sim) {
    for d in [0, 1, 2] {
        sim.act(T0 + d * DAY);
    }
}

fn one_per_week(c: &mut RuleBookConfig) {
    c.policy.frequency_cap = FrequencyCapConfig {
        max_triggers: 1,
        window: days(7),
    };
}

type ReactivationTriggerRef = rekindle_events::ReactivationTrigger;

fn s(rule: &str, at: i64, label: &str) -> (String, i64, String) {
    (rule.to_string(), at, label.to_string())
}

#[test]
fn lapsed_fires_once_per_episode_at_its_deadline_with_an_explanation() {
    let mut sim = Sim::new(&config(&[("lapsed_7d", lapsed(30))]));
    let last = T0 + 2 * DAY + HOUR;
    for t in [T0 + HOUR, T0 + DAY + HOUR, last] {
        sim.act(t);
    }
    sim.run_until(last + 7 * DAY - 1);
    assert!(sim.decisions.is_empty());
    sim.run_until(last + 30 * DAY);
    assert_eq!(sim.summary(), vec![s("lapsed_7d", last + 7 * DAY, "sent")]);
    let t = &sim.decisions[0].trigger;
    assert_eq!(t.trigger_id, trigger_id("lapsed_7d", "u1", last));
    assert_eq!(t.due_at_ms, last + 7 * DAY);
    assert_eq!(t.lifecycle_stage, "at_risk");
    assert_eq!(t.features["active_days_lookback"], 3.0);
    assert_eq!(t.features["events_lookback"], 3.0);
    assert_eq!(t.features["inactive_days"], 7.0);
    assert_eq!(t.rule_config_hash.len(), 16);
    // A new episode, engaged again, fires again.
    for d in [31, 32, 33] {
        sim.act(last + d * DAY);
    }
    sim.run_until(last + 45 * DAY);
    assert_eq!(sim.sent().len(), 2);
    assert_eq!(sim.sent()[1].due_at_ms, last + 40 * DAY);
}

#[test]
fn lapsed_needs_enough_active_days_in_the_lookback() {
    let mut sim = Sim::new(&config(&[("lapsed_7d", lapsed(30))]));
    sim.act(T0);
    sim.act(T0 + HOUR);
    sim.act(T0 + DAY);
    sim.run_until(T0 + 60 * DAY);
    assert!(sim.decisions.is_empty(), "two active days are not three");
}

#[test]
fn dormant_fires_after_the_long_silence_as_a_separate_trigger() {
    let dormant = RuleConfig {
        kind: Some(RuleKind::Dormant),
        priority: 10,
        ..RuleConfig::default()
    };
    let mut sim = Sim::new(&config(&[
        ("lapsed_7d", lapsed(30)),
        ("dormant_30d", dormant),
    ]));
    for d in 0..3 {
        sim.act(T0 + d * DAY);
    }
    sim.run_until(T0 + 90 * DAY);
    let last = T0 + 2 * DAY;
    assert_eq!(
        sim.summary(),
        vec![
            s("lapsed_7d", last + 7 * DAY, "sent"),
            s("dormant_30d", last + 30 * DAY, "sent")
        ]
    );
    assert_eq!(sim.decisions[1].trigger.lifecycle_stage, "dormant");
}

fn drop_rule() -> RuleConfig {
    RuleConfig {
        kind: Some(RuleKind::EngagementDrop),
        priority: 20,
        cooldown: Some(days(14)),
        ..RuleConfig::default()
    }
}

#[test]
fn engagement_drop_compares_the_last_week_with_the_four_before() {
    let mut sim = Sim::new(&config(&[("engagement_drop", drop_rule())]));
    // An hour a day for four weeks, then five minutes a day.
    for d in 0..28 {
        sim.act_with(T0 + d * DAY + 12 * HOUR, 3600, None);
    }
    for d in 28..36 {
        sim.act_with(T0 + d * DAY + 12 * HOUR, 300, None);
    }
    // Boundaries before day 35 are "too new": the profile does not cover 5 weeks yet.
    // At day 35 00:00 the recent week (days 28-34) holds 7 x 300 = 2100 s; the baseline
    // (days 0-27) averages 28 x 3600 / 4 = 25200 s a week; 2100 < 0.3 x 25200.
    assert_eq!(
        sim.summary(),
        vec![s("engagement_drop", T0 + 35 * DAY, "sent")]
    );
    let f = &sim.decisions[0].trigger.features;
    assert_eq!(f["session_seconds_recent"], 2100.0);
    assert_eq!(f["session_seconds_baseline_avg"], 25200.0);
    assert_eq!(f["active_days_recent"], 7.0);
    // Still low, still active: re-eligible only after the 14-day cooldown, at the first
    // boundary where the drop still holds (day 49: recent = 7 x 300 against a baseline
    // of days 14-41 = 14 x 3600 + 14 x 300).
    for d in 36..50 {
        sim.act_with(T0 + d * DAY + 12 * HOUR, 300, None);
    }
    assert_eq!(
        sim.summary(),
        vec![
            s("engagement_drop", T0 + 35 * DAY, "sent"),
            s("engagement_drop", T0 + 49 * DAY, "sent")
        ]
    );
}

#[test]
fn engagement_drop_is_due_at_the_users_local_midnight() {
    let mut c = config(&[("engagement_drop", drop_rule())]);
    c.policy.quiet_hours.default_timezone = "Asia/Tokyo".into();
    for (zone, due) in [
        // 2023-12-19 00:00 UTC is 19:00 in New York (EST): the local day starts at 05:00 UTC.
        (Some("America/New_York"), T0 + 35 * DAY + 5 * HOUR),
        // Without a zone of its own, the default: Tokyo's next midnight is 15:00 UTC.
        (None, T0 + 35 * DAY + 15 * HOUR),
    ] {
        let mut sim = Sim::new(&c);
        for d in 0..28 {
            sim.act_with(T0 + d * DAY + 12 * HOUR, 3600, zone);
        }
        for d in 28..35 {
            sim.act_with(T0 + d * DAY + 12 * HOUR, 300, zone);
        }
        sim.run_until(T0 + 36 * DAY);
        assert_eq!(
            sim.summary(),
            vec![s("engagement_drop", due, "sent")],
            "{zone:?}"
        );
        assert_eq!(sim.decisions[0].trigger.due_at_ms, due);
        // The episode is the UTC boundary whose completed days were judged.
        assert_eq!(
            sim.decisions[0].trigger.trigger_id,
            trigger_id("engagement_drop", "u1", T0 + 35 * DAY)
        );
    }
}

#[test]
fn engagement_drop_leaves_steady_and_tiny_users_alone() {
    let mut steady = Sim::new(&config(&[("engagement_drop", drop_rule())]));
    for d in 0..60 {
        steady.act_with(T0 + d * DAY + 12 * HOUR, 1800, None);
    }
    assert!(steady.decisions.is_empty());
    // A baseline under min_baseline_weekly_session_seconds (600) is too little to judge.
    let mut tiny = Sim::new(&config(&[("engagement_drop", drop_rule())]));
    for d in 0..28 {
        tiny.act_with(T0 + d * DAY, 20, None);
    }
    tiny.act_with(T0 + 34 * DAY, 1, None);
    tiny.run_until(T0 + 80 * DAY);
    assert!(tiny.decisions.is_empty());
    // A heavy user who stops altogether: the drop shows once the recent week holds two
    // active days (2 x 3600 < 0.3 x 25200), at day 45; once the week holds none the user
    // is silent, which is lapsed's and dormant's business, so it fires once only.
    let mut stopped = Sim::new(&config(&[("engagement_drop", drop_rule())]));
    for d in 0..40 {
        stopped.act_with(T0 + d * DAY, 3600, None);
    }
    stopped.run_until(T0 + 120 * DAY);
    assert_eq!(
        stopped.summary(),
        vec![s("engagement_drop", T0 + 45 * DAY, "sent")]
    );
}

fn new_user_rule() -> RuleConfig {
    RuleConfig {
        kind: Some(RuleKind::NewUserNoReturn),
        priority: 40,
        first_seen_within: Some(days(7)),
        return_within: Some(Duration::from_secs(48 * 3600)),
        ..RuleConfig::default()
    }
}

#[test]
fn new_user_no_return_fires_when_the_first_day_is_not_followed_by_a_return() {
    let mut sim = Sim::new(&config(&[("new_user_no_return", new_user_rule())]));
    sim.act(T0 + 10 * HOUR);
    sim.act(T0 + 20 * HOUR); // same first day: not a return
    sim.run_until(T0 + 10 * DAY);
    // End of the first day (T0 + 1d) plus 48 hours.
    assert_eq!(
        sim.summary(),
        vec![s("new_user_no_return", T0 + 3 * DAY, "sent")]
    );
    let t = &sim.decisions[0].trigger;
    assert_eq!(
        t.trigger_id,
        trigger_id("new_user_no_return", "u1", T0 + 10 * HOUR)
    );
    assert_eq!(t.features["first_day_events"], 2.0);
    assert_eq!(t.features["hours_since_first_active"], 62.0);
    assert_eq!(t.lifecycle_stage, "new");

    let mut back = Sim::new(&config(&[("new_user_no_return", new_user_rule())]));
    back.act(T0 + 10 * HOUR);
    back.act(T0 + DAY + 2 * HOUR);
    back.run_until(T0 + 20 * DAY);
    assert!(back.decisions.is_empty(), "came back on day 1");
}

#[test]
fn rules_due_at_the_same_moment_compete_by_priority() {
    let second = RuleConfig {
        priority: 10,
        ..RuleConfig::lapsed_7d()
    };
    // Ids chosen so that id order and priority order disagree.
    let mut sim = Sim::new(&config(&[("z_first", lapsed(50)), ("a_second", second)]));
    for d in 0..3 {
        sim.act(T0 + d * DAY);
    }
    sim.run_until(T0 + 20 * DAY);
    let due = T0 + 9 * DAY;
    assert_eq!(
        sim.summary(),
        vec![
            s("z_first", due, "sent"),
            s("a_second", due, "suppressed:outranked")
        ]
    );
}

#[test]
fn cooldown_suppresses_a_rule_repeating_too_soon() {
    let rule = RuleConfig {
        cooldown: Some(days(14)),
        ..RuleConfig::lapsed_7d()
    };
    let mut sim = Sim::new(&config(&[("lapsed_7d", rule)]));
    engaged(&mut sim);
    sim.run_until(T0 + 9 * DAY); // sent at day 9
    sim.act(T0 + 10 * DAY); // back, lapses again at day 17: inside the cooldown
    sim.run_until(T0 + 18 * DAY);
    for d in [25, 26, 27] {
        sim.act(T0 + d * DAY); // lapses at day 34: cooldown over
    }
    sim.run_until(T0 + 40 * DAY);
    assert_eq!(
        sim.summary(),
        vec![
            s("lapsed_7d", T0 + 9 * DAY, "sent"),
            s("lapsed_7d", T0 + 17 * DAY, "suppressed:cooldown"),
            s("lapsed_7d", T0 + 34 * DAY, "sent"),
        ]
    );
}

#[test]
fn frequency_cap_counts_across_rules_in_a_rolling_window() {
    let later = RuleConfig {
        inactive_for: Some(days(8)),
        priority: 10,
        ..RuleConfig::lapsed_7d()
    };
    let mut c = config(&[("lapsed_7d", lapsed(30)), ("lapsed_8d", later)]);
    one_per_week(&mut c);
    let mut sim = Sim::new(&c);
    engaged(&mut sim);
    sim.run_until(T0 + 12 * DAY);
    for d in [20, 21, 22] {
        sim.act(T0 + d * DAY);
    }
    sim.run_until(T0 + 40 * DAY);
    assert_eq!(
        sim.summary(),
        vec![
            s("lapsed_7d", T0 + 9 * DAY, "sent"),
            s("lapsed_8d", T0 + 10 * DAY, "suppressed:capped"),
            // 20 days later the window has rolled: both episodes' first trigger goes out,
            // the second is capped again.
            s("lapsed_7d", T0 + 29 * DAY, "sent"),
            s("lapsed_8d", T0 + 30 * DAY, "suppressed:capped"),
        ]
    );
}

fn quiet_config(tz: &str) -> RuleBookConfig {
    let mut c = config(&[("lapsed_7d", lapsed(30))]);
    c.policy.quiet_hours = QuietHoursConfig {
        enabled: true,
        start: "21:00".into(),
        end: "08:00".into(),
        default_timezone: tz.into(),
    };
    c
}

#[test]
fn quiet_hours_defer_to_the_local_morning() {
    let mut sim = Sim::new(&quiet_config("UTC"));
    let last = T0 + 2 * DAY + 22 * HOUR;
    for t in [T0 + 22 * HOUR, T0 + DAY + 22 * HOUR, last] {
        sim.act(t);
    }
    sim.run_until(T0 + 30 * DAY);
    let due = last + 7 * DAY; // 22:00 UTC
    let morning = T0 + 10 * DAY + 8 * HOUR;
    assert_eq!(
        sim.summary(),
        vec![
            s("lapsed_7d", due, "deferred:quiet_hours"),
            s("lapsed_7d", morning, "sent")
        ]
    );
    assert_eq!(sim.decisions[1].trigger.due_at_ms, due);
    assert_eq!(
        sim.decisions[0].verdict,
        Verdict::Deferred {
            release_ms: morning
        }
    );
    // The same user in New York: 22:00 UTC is 17:00 EST, not quiet.
    let mut ny = Sim::new(&quiet_config("UTC"));
    for t in [T0 + 22 * HOUR, T0 + DAY + 22 * HOUR, last] {
        ny.act_with(t, 60, Some("America/New_York"));
    }
    ny.run_until(T0 + 30 * DAY);
    assert_eq!(ny.summary(), vec![s("lapsed_7d", due, "sent")]);
}

#[test]
fn a_user_who_returns_during_quiet_hours_is_not_messaged() {
    let mut sim = Sim::new(&quiet_config("UTC"));
    let last = T0 + 2 * DAY + 22 * HOUR;
    for t in [T0 + 22 * HOUR, T0 + DAY + 22 * HOUR, last] {
        sim.act(t);
    }
    let due = last + 7 * DAY;
    sim.run_until(due);
    sim.act(due + HOUR); // back at 23:00, before the 08:00 release
    sim.run_until(due + 11 * HOUR);
    assert_eq!(
        sim.summary(),
        vec![
            s("lapsed_7d", due, "deferred:quiet_hours"),
            s("lapsed_7d", due + HOUR, "cancelled:returned")
        ]
    );
}

#[test]
fn holdout_users_are_recorded_not_sent_and_their_returns_attributed() {
    let mut c = config(&[("lapsed_7d", lapsed(30))]);
    c.policy.holdout = HoldoutConfig {
        percent: 100.0,
        salt: "s".into(),
    };
    let mut sim = Sim::new(&c);
    engaged(&mut sim);
    sim.run_until(T0 + 9 * DAY);
    sim.act(T0 + 11 * DAY);
    assert_eq!(
        sim.summary(),
        vec![s("lapsed_7d", T0 + 9 * DAY, "suppressed:holdout")]
    );
    assert_eq!(
        sim.attributable,
        vec![("lapsed_7d".to_string(), Group::Holdout)]
    );
    assert_eq!(
        sim.reactivated,
        vec![Reactivation {
            rule: "lapsed_7d".into(),
            group: Group::Holdout,
            triggered_at_ms: T0 + 9 * DAY
        }]
    );
}

#[test]
fn returns_after_the_attribution_window_do_not_count() {
    let mut sim = Sim::new(&config(&[("lapsed_7d", lapsed(30))]));
    engaged(&mut sim);
    sim.run_until(T0 + 9 * DAY);
    sim.act(T0 + 17 * DAY); // 8 days after the trigger; the window is 7
    assert_eq!(
        sim.attributable,
        vec![("lapsed_7d".to_string(), Group::Treatment)]
    );
    assert!(sim.reactivated.is_empty());
}

#[test]
fn opted_out_users_get_nothing_until_they_opt_in() {
    let mut sim = Sim::new(&config(&[("lapsed_7d", lapsed(30))]));
    engaged(&mut sim);
    let mut out = Outcome::default();
    sim.book.on_opt_out(&mut sim.profile, sim.now, &mut out);
    sim.run_until(T0 + 20 * DAY);
    let next = sim.book.on_opt_in(&mut sim.profile, sim.now);
    assert_eq!(next, sim.book.plan(&sim.profile, sim.now));
    for d in [21, 22, 23] {
        sim.act(T0 + d * DAY);
    }
    sim.run_until(T0 + 31 * DAY);
    assert_eq!(
        sim.summary(),
        vec![
            s("lapsed_7d", T0 + 9 * DAY, "suppressed:opted_out"),
            s("lapsed_7d", T0 + 30 * DAY, "sent")
        ]
    );
}

#[test]
fn opting_out_or_deletion_cancels_a_deferred_trigger() {
    for delete in [false, true] {
        let mut sim = Sim::new(&quiet_config("UTC"));
        let last = T0 + 2 * DAY + 22 * HOUR;
        for t in [T0 + 22 * HOUR, T0 + DAY + 22 * HOUR, last] {
            sim.act(t);
        }
        sim.run_until(last + 7 * DAY);
        let mut out = Outcome::default();
        if delete {
            sim.book.on_delete(&mut sim.profile, sim.now, &mut out);
            assert_eq!(
                out.stage_change.map(|c| c.to),
                Some(None),
                "a deleted user leaves its stage"
            );
            assert!(out.decisions[0].trigger.features.is_empty());
        } else {
            sim.book.on_opt_out(&mut sim.profile, sim.now, &mut out);
        }
        sim.take(out);
        let reason = if delete {
            "cancelled:user_deleted"
        } else {
            "cancelled:opted_out"
        };
        assert_eq!(sim.summary()[1], s("lapsed_7d", last + 7 * DAY, reason));
    }
}

#[test]
fn shadow_rules_are_audited_and_take_nothing_from_live_rules() {
    let shadow = RuleConfig {
        mode: RuleMode::Shadow,
        priority: 99,
        ..RuleConfig::lapsed_7d()
    };
    let mut c = config(&[("lapsed_7d", lapsed(30)), ("lapsed_shadow", shadow)]);
    one_per_week(&mut c);
    let mut sim = Sim::new(&c);
    engaged(&mut sim);
    sim.run_until(T0 + 10 * DAY);
    assert_eq!(
        sim.summary(),
        vec![
            s("lapsed_shadow", T0 + 9 * DAY, "suppressed:shadow"),
            s("lapsed_7d", T0 + 9 * DAY, "sent")
        ]
    );
}

#[test]
fn configuration_errors_name_their_key() {
    let windows = Windows::new(&WindowConfig::default()).expect("windows");
    let err = |rule: RuleConfig| {
        RuleBook::new(windows, &config(&[("r", rule)]))
            .map(|_| ())
            .map_err(|e| e.to_string())
            .err()
            .unwrap_or_default()
    };
    assert_eq!(err(RuleConfig::default()), "rules.r.kind: is required");
    let misplaced = RuleConfig {
        drop_below_fraction: Some(0.5),
        ..RuleConfig::lapsed_7d()
    };
    assert_eq!(
        err(misplaced),
        "rules.r.drop_below_fraction: is not a parameter of kind lapsed"
    );
    let long = RuleConfig {
        lookback: Some(days(36)),
        ..RuleConfig::lapsed_7d()
    };
    assert!(err(long).starts_with("rules.r.lookback"));
    let too_long_drop = RuleConfig {
        baseline_periods: Some(5),
        ..drop_rule()
    };
    assert!(err(too_long_drop).starts_with("rules.r.baseline_periods"));
    let fraction = RuleConfig {
        drop_below_fraction: Some(1.5),
        ..drop_rule()
    };
    assert!(err(fraction).starts_with("rules.r.drop_below_fraction"));
    let new_user = RuleConfig {
        first_seen_within: Some(days(1)),
        ..new_user_rule()
    };
    assert!(err(new_user).starts_with("rules.r.first_seen_within"));
}

#[test]
fn rules_are_stored_by_a_stable_key_and_colliding_names_are_refused() {
    // Profiles hold these keys: a different hash would orphan every user's rule memory.
    assert_eq!(RuleKey::of("lapsed_7d").to_string(), "rule#b5a7da58");
    let windows = Windows::new(&WindowConfig::default()).expect("windows");
    let book = RuleBook::new(windows, &config(&[("lapsed_7d", lapsed(30))])).expect("book");
    assert_eq!(book.rule_name(RuleKey::of("lapsed_7d")), Some("lapsed_7d"));
    assert_eq!(book.rule_name(RuleKey::of("lapsed_8d")), None);
    // Two names with the same 32-bit key, found by search.
    let err = RuleBook::new(
        windows,
        &config(&[("lapsed_3443", lapsed(30)), ("lapsed_58596", lapsed(20))]),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
    .err()
    .unwrap_or_default();
    assert!(err.contains("collides with rule \"lapsed_3443\""), "{err}");
    // The stored codes of verdicts and reasons are pinned where profiles encode them:
    // profile_codec's verdicts_keep_their_codes.
}

#[test]
fn config_hash_changes_with_the_rule_and_only_with_it() {
    let windows = Windows::new(&WindowConfig::default()).expect("windows");
    let hash = |rule: RuleConfig| {
        Rule::new("r", &rule, windows)
            .expect("valid")
            .config_hash()
            .to_string()
    };
    assert_eq!(hash(lapsed(1)), hash(lapsed(1)));
    assert_ne!(hash(lapsed(1)), hash(lapsed(2)));
    let explicit = RuleConfig {
        kind: Some(RuleKind::Lapsed),
        priority: 1,
        ..RuleConfig::default()
    };
    assert_eq!(
        hash(explicit),
        hash(lapsed(1)),
        "defaults and the same values written out are the same rule"
    );
}

fn arbitrary_book() -> impl Strategy<Value = RuleBookConfig> {
    (
        0u32..3,
        prop::sample::select(vec![0u64, 3, 14]),
        prop::sample::select(vec![0u64, 10, 50]),
        any::<bool>(),
    )
        .prop_map(|(cap, cooldown_days, holdout, quiet)| {
            let cooldown = Some(days(cooldown_days));
            let mut c = config(&[
                (
                    "lapsed_7d",
                    RuleConfig {
                        cooldown,
                        ..lapsed(30)
                    },
                ),
                (
                    "lapsed_3d",
                    RuleConfig {
                        inactive_for: Some(days(3)),
                        min_active_days: Some(2),
                        cooldown,
                        ..lapsed(35)
                    },
                ),
                (
                    "dormant",
                    RuleConfig {
                        kind: Some(RuleKind::Dormant),
                        inactive_for: Some(days(12)),
                        cooldown,
                        priority: 10,
                        ..RuleConfig::default()
                    },
                ),
                (
                    "drop",
                    RuleConfig {
                        recent_window: Some(days(2)),
                        baseline_periods: Some(3),
                        min_baseline_weekly_session_seconds: Some(100),
                        cooldown,
                        ..drop_rule()
                    },
                ),
                ("new", new_user_rule()),
            ]);
            c.policy.frequency_cap = FrequencyCapConfig {
                max_triggers: cap,
                window: days(7),
            };
            c.policy.holdout.percent = holdout as f64;
            c.policy.quiet_hours = QuietHoursConfig {
                enabled: quiet,
                start: "22:00".into(),
                end: "06:30".into(),
                default_timezone: "Europe/Berlin".into(),
            };
            c
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever the activity and configuration: the cap holds in every rolling window,
    /// cooldowns hold per rule, at most one trigger goes out per moment, each episode is
    /// decided once, and nothing due is left behind after an evaluation.
    #[test]
    fn policies_hold_on_any_history(
        book in arbitrary_book(),
        mut times in proptest::collection::vec((0i64..(70 * DAY), 0u32..4000), 1..40),
    ) {
        times.sort_unstable();
        let mut sim = Sim::new(&book);
        for (t, secs) in &times {
            sim.act_with(T0 + t, *secs, None);
            for rule in sim.book.rules() {
                if let Some(c) = rule.candidate(&sim.profile, sim.now) {
                    prop_assert!(c.due_ms > sim.now, "{} left due", rule.id());
                }
            }
        }
        sim.run_until(T0 + 120 * DAY);
        // Deliveries are sends and holdouts: both count for caps and cooldowns.
        let delivered: Vec<&Decision> = sim.decisions.iter().filter(|d| matches!(d.verdict, Verdict::Sent | Verdict::Suppressed(Reason::Holdout))).collect();
        let cap = book.policy.frequency_cap.max_triggers as usize;
        if cap > 0 {
            for d in &delivered {
                let start = d.trigger.fired_at_ms;
                let in_window = delivered.iter().filter(|o| o.trigger.fired_at_ms >= start && o.trigger.fired_at_ms < start + 7 * DAY).count();
                prop_assert!(in_window <= cap, "{} deliveries in a window from {}", in_window, start);
            }
        }
        let mut last_by_rule: BTreeMap<&str, i64> = BTreeMap::new();
        let mut moments = std::collections::BTreeSet::new();
        for d in &delivered {
            let rule = sim.book.rules().iter().find(|r| r.id() == d.trigger.rule_id).expect("known rule");
            if let Some(prev) = last_by_rule.insert(rule.id(), d.trigger.fired_at_ms) {
                prop_assert!(d.trigger.fired_at_ms >= prev + rule.cooldown_ms(), "cooldown of {}", rule.id());
            }
            prop_assert!(moments.insert(d.trigger.fired_at_ms), "two deliveries at one moment");
        }
        // Every trigger id is decided at most once, apart from a deferral's outcome.
        let mut final_ids = std::collections::BTreeSet::new();
        for d in sim.decisions.iter().filter(|d| !matches!(d.verdict, Verdict::Deferred { .. })) {
            prop_assert!(final_ids.insert(d.trigger.trigger_id.clone()), "{} decided twice", d.trigger.trigger_id);
        }
    }
}

/// The stage and segment a profile is counted in.
fn counted_as(profile: &UserProfile) -> CountedAs {
    CountedAs {
        stage: profile.stage.map(|m| m.stage),
        segment: profile.segment,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A plan's counted steps are the changes that waking the user at every change would
    /// find, at the same moments; and a profile caught up at any moment before the full
    /// evaluation stands where those steps left it, with its timer entry at the next step.
    #[test]
    fn planned_steps_are_the_changes_and_catch_up_follows_them(
        mut acts in proptest::collection::vec((0i64..(60 * DAY), 0u32..4000, 0usize..4), 1..30),
        probe in 0i64..(200 * DAY),
        steps in 0usize..10,
    ) {
        let windows = Windows::new(&WindowConfig::default()).expect("windows");
        let book = RuleBook::new(windows, &RuleBookConfig::default())
            .expect("valid")
            .with_count_steps(steps);
        let eager_book = book.clone().with_count_steps(0);
        acts.sort_unstable();
        let mut profile = UserProfile::default();
        let mut wake = Wake::default();
        let mut now = 0;
        for (t, secs, amount) in &acts {
            now = T0 + t;
            let activity = Activity {
                timestamp_ms: now,
                session_seconds: *secs,
                amount: [0.0, 5.0, 50.0, 300.0][*amount],
                timezone: None,
            };
            wake = book.on_activity("u1", &mut profile, activity, now, &mut Outcome::default());
            profile.wake_at_ms = wake.full_ms;
        }
        prop_assert!(wake.steps.len() <= steps);
        if steps == 0 {
            prop_assert!(wake.steps.is_empty());
        }

        let mut eager = profile.clone();
        let mut at = now;
        let mut seen = Vec::new();
        while let Some(next) = eager_book.next_wake(&eager, at) {
            if wake.full_ms.is_some_and(|full| next >= full) {
                break;
            }
            let from = counted_as(&eager);
            eager_book.on_wake("u1", &mut eager, next, &mut Outcome::default());
            let to = counted_as(&eager);
            prop_assert_ne!(from, to, "a wake before the full evaluation that changed nothing");
            seen.push(CountStep { at_ms: next, from, to });
            at = next;
        }
        prop_assert_eq!(&seen[..], &wake.steps[..]);

        let upto = now + probe;
        if wake.full_ms.is_some_and(|full| upto >= full) {
            return Ok(());
        }
        let mut caught = profile.clone();
        let entry = book.catch_up(&mut caught, upto);
        let passed = wake.steps.iter().take_while(|s| s.at_ms <= upto).count();
        let expected_entry = wake.steps.get(passed).map(|s| s.at_ms).or(wake.full_ms);
        prop_assert_eq!(entry, expected_entry);
        let expected_state = wake.steps[..passed].last().map_or(counted_as(&profile), |s| s.to);
        prop_assert_eq!(counted_as(&caught), expected_state);
        // Catching up again changes nothing.
        let again = caught.clone();
        prop_assert_eq!(book.catch_up(&mut caught, upto), entry);
        prop_assert_eq!(caught, again);
    }
}
