//! What `[rules.*]`, `[lifecycle]` and `[policy]` in the configuration file can say.
//!
//! Every field a rule kind does not use is rejected by name, so a typo or a parameter copied
//! from another kind fails at start-up instead of silently doing nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// The four kinds of rule rekindle evaluates.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// Was engaged (active days in a lookback), then silent for `inactive_for`.
    Lapsed,
    /// Silent for a long `inactive_for`: a distinct win-back message.
    Dormant,
    /// Recent session time fell below a fraction of the user's own weekly baseline.
    EngagementDrop,
    /// A new user who did not come back after their first day.
    NewUserNoReturn,
}

impl RuleKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            RuleKind::Lapsed => "lapsed",
            RuleKind::Dormant => "dormant",
            RuleKind::EngagementDrop => "engagement_drop",
            RuleKind::NewUserNoReturn => "new_user_no_return",
        }
    }
}

/// Whether a rule sends, only records what it would send, or is not evaluated.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuleMode {
    #[default]
    Live,
    /// Evaluated as if live, but every decision goes to the audit stream as `shadow`: a
    /// way to watch a new rule on real traffic before it reaches users.
    Shadow,
    Off,
}

/// One `[rules.<id>]` table. Parameters are optional here and required per kind by
/// [`crate::RuleBook::new`], which names the missing or unused key.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub kind: Option<RuleKind>,
    #[serde(default)]
    pub mode: RuleMode,
    /// Higher wins when several rules are due for a user at the same moment.
    #[serde(default)]
    pub priority: i32,
    /// After a trigger of this rule is sent (or held out), the same user gets no other
    /// trigger of this rule for this long.
    #[serde(default, with = "humantime_serde")]
    pub cooldown: Option<Duration>,

    // lapsed, dormant
    pub min_active_days: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub inactive_for: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub lookback: Option<Duration>,

    // engagement_drop
    /// Fires when session seconds in the recent window fall below this fraction of the
    /// weekly average of the baseline weeks before it.
    pub drop_below_fraction: Option<f64>,
    /// Users whose baseline weekly average is below this have too little history to judge.
    pub min_baseline_weekly_session_seconds: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    pub recent_window: Option<Duration>,
    /// The baseline: this many `recent_window`-long periods before the recent window.
    pub baseline_periods: Option<u32>,

    // new_user_no_return
    /// Only users whose first activity is at most this old when the rule is due.
    #[serde(default, with = "humantime_serde")]
    pub first_seen_within: Option<Duration>,
    /// How long after the end of the first active day the user has to come back.
    #[serde(default, with = "humantime_serde")]
    pub return_within: Option<Duration>,

    /// Only users whose RFM segment at their last activity (before the silence or drop)
    /// is one of these `[segments]` names; empty: every user.
    #[serde(default)]
    pub segments: Vec<String>,

    /// An experiment on the rule: arms assigned by a salted hash of `experiment` (default:
    /// the rule id) and the user id; the arm goes into the trigger.
    #[serde(default)]
    pub experiment: Option<String>,
    #[serde(default)]
    pub arms: Vec<crate::ArmConfig>,
}

/// `[lifecycle]`: the thresholds of the lifecycle stages.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// A user is `new` for this long after their first activity (unless already at risk).
    #[serde(with = "humantime_serde")]
    pub new_for: Duration,
    /// Silent this long: `at_risk`.
    #[serde(with = "humantime_serde")]
    pub at_risk_after: Duration,
    /// Silent this long: `dormant`.
    #[serde(with = "humantime_serde")]
    pub dormant_after: Duration,
    /// Silent this long: `churned`.
    #[serde(with = "humantime_serde")]
    pub churned_after: Duration,
    /// Hysteresis: a user who was `at_risk` or worse is `active` again only once they were
    /// active on this many distinct buckets within `recover_within`; until then a returning
    /// user is `at_risk`. One visit does not make a user engaged again.
    pub recover_active_days: u32,
    #[serde(with = "humantime_serde")]
    pub recover_within: Duration,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        LifecycleConfig {
            new_for: Duration::from_secs(7 * DAY),
            at_risk_after: Duration::from_secs(7 * DAY),
            dormant_after: Duration::from_secs(30 * DAY),
            churned_after: Duration::from_secs(90 * DAY),
            recover_active_days: 2,
            recover_within: Duration::from_secs(7 * DAY),
        }
    }
}

/// `[policy.frequency_cap]`: at most `max_triggers` per user in any rolling `window`,
/// across all rules. `max_triggers = 0` turns the cap off.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FrequencyCapConfig {
    pub max_triggers: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for FrequencyCapConfig {
    fn default() -> Self {
        FrequencyCapConfig {
            max_triggers: 0,
            window: Duration::from_secs(7 * 86_400),
        }
    }
}

/// `[policy.quiet_hours]`: local times (`HH:MM`) between which nothing is sent. A window
/// may wrap midnight (`21:00` to `08:00`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursConfig {
    pub enabled: bool,
    pub start: String,
    pub end: String,
    /// IANA zone for users whose events never named one.
    pub default_timezone: String,
}

impl Default for QuietHoursConfig {
    fn default() -> Self {
        QuietHoursConfig {
            enabled: false,
            start: "21:00".into(),
            end: "08:00".into(),
            default_timezone: "UTC".into(),
        }
    }
}

/// `[policy.holdout]`: a stable share of users who never receive triggers, for lift.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HoldoutConfig {
    /// 0 to 100.
    pub percent: f64,
    /// Changing the salt reshuffles who is held out.
    pub salt: String,
}

impl Default for HoldoutConfig {
    fn default() -> Self {
        HoldoutConfig {
            percent: 0.0,
            salt: "rekindle".into(),
        }
    }
}

/// `[policy.attribution]`: a triggered or held-out user active again within `window`
/// counts as reactivated for that rule and group.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AttributionConfig {
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            window: Duration::from_secs(7 * 86_400),
        }
    }
}

/// `[policy]`. The defaults here are neutral (no cap, no quiet hours, no holdout); the
/// shipped configuration file sets the product defaults.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub frequency_cap: FrequencyCapConfig,
    #[serde(default)]
    pub quiet_hours: QuietHoursConfig,
    #[serde(default)]
    pub holdout: HoldoutConfig,
    #[serde(default)]
    pub attribution: AttributionConfig,
}

/// Everything the rule layer is configured with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleBookConfig {
    pub rules: BTreeMap<String, RuleConfig>,
    pub lifecycle: LifecycleConfig,
    pub policy: PolicyConfig,
    pub segments: crate::SegmentConfig,
}

impl RuleConfig {
    /// The historical `lapsed_7d` rule: active on 3 distinct days of 30, then 7 days silent.
    pub fn lapsed_7d() -> RuleConfig {
        RuleConfig {
            kind: Some(RuleKind::Lapsed),
            priority: 30,
            min_active_days: Some(3),
            inactive_for: Some(Duration::from_secs(7 * 86_400)),
            lookback: Some(Duration::from_secs(30 * 86_400)),
            ..RuleConfig::default()
        }
    }
}
