use std::collections::BTreeMap;
use std::time::Duration;

use crate::engagement_drop::EngagementDrop;
use crate::error::invalid;
use crate::new_user::NewUserNoReturn;
use crate::silence::SilenceRule;
use crate::{RuleConfig, RuleKey, RuleKind, RuleMode, RulesError, UserProfile, Windows};

/// When a rule wants to fire for a user, and for which episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// What identifies the episode: part of the trigger id, remembered once fired.
    pub episode_ms: i64,
    pub due_ms: i64,
}

#[derive(Debug, Clone)]
enum Logic {
    Silence(SilenceRule),
    Drop(EngagementDrop),
    NewUser(NewUserNoReturn),
}

/// One configured, validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    id: String,
    key: RuleKey,
    kind: RuleKind,
    mode: RuleMode,
    priority: i32,
    cooldown_ms: i64,
    config_hash: String,
    logic: Logic,
    /// Segment indices the rule is restricted to; empty: every user.
    segments: Vec<u8>,
    experiment: Option<crate::Experiment>,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Reads one kind's parameters, remembering which were used so the rest can be rejected.
struct Params<'a> {
    id: &'a str,
    config: &'a RuleConfig,
    kind: RuleKind,
    used: Vec<&'static str>,
}

impl Params<'_> {
    fn key(&self, field: &str) -> String {
        format!("rules.{}.{field}", self.id)
    }

    /// A parameter's value, or the kind's default for it.
    fn param<T>(&mut self, field: &'static str, value: Option<T>, default: T) -> T {
        self.used.push(field);
        value.unwrap_or(default)
    }

    /// Rejects parameters of other kinds: copying a rule and changing its kind must not
    /// leave parameters that silently do nothing.
    fn reject_unused(&self) -> Result<(), RulesError> {
        let c = self.config;
        let given: [(&'static str, bool); 9] = [
            ("min_active_days", c.min_active_days.is_some()),
            ("inactive_for", c.inactive_for.is_some()),
            ("lookback", c.lookback.is_some()),
            ("drop_below_fraction", c.drop_below_fraction.is_some()),
            (
                "min_baseline_weekly_session_seconds",
                c.min_baseline_weekly_session_seconds.is_some(),
            ),
            ("recent_window", c.recent_window.is_some()),
            ("baseline_periods", c.baseline_periods.is_some()),
            ("first_seen_within", c.first_seen_within.is_some()),
            ("return_within", c.return_within.is_some()),
        ];
        for (field, present) in given {
            if present && !self.used.contains(&field) {
                return Err(invalid(
                    self.key(field),
                    format!("is not a parameter of kind {}", self.kind.as_str()),
                ));
            }
        }
        Ok(())
    }
}

const DAY: Duration = Duration::from_secs(86_400);

impl Rule {
    pub fn new(id: &str, config: &RuleConfig, windows: Windows) -> Result<Rule, RulesError> {
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                format!("rules.{id}"),
                "rule ids are made of letters, digits, '_' and '-'",
            ));
        }
        let kind = config
            .kind
            .ok_or_else(|| invalid(format!("rules.{id}.kind"), "is required"))?;
        let mut p = Params {
            id,
            config,
            kind,
            used: Vec::new(),
        };
        let mut canonical = format!("kind={};", kind.as_str());
        let logic = match kind {
            RuleKind::Lapsed | RuleKind::Dormant => {
                let (min_default, inactive_default) = match kind {
                    RuleKind::Dormant => (1, 30 * DAY.as_secs()),
                    _ => (3, 7 * DAY.as_secs()),
                };
                let min_active = p.param("min_active_days", config.min_active_days, min_default);
                let inactive_for = p.param(
                    "inactive_for",
                    config.inactive_for,
                    Duration::from_secs(inactive_default),
                );
                let lookback = p.param("lookback", config.lookback, 30 * DAY);
                let lookback_buckets = windows.buckets_in(&p.key("lookback"), lookback)?;
                if lookback_buckets > windows.retained() {
                    return Err(invalid(
                        p.key("lookback"),
                        "is longer than the buckets state.retained_buckets keeps",
                    ));
                }
                if min_active == 0 || i64::from(min_active) > lookback_buckets {
                    return Err(invalid(
                        p.key("min_active_days"),
                        "must be between 1 and the buckets in the lookback",
                    ));
                }
                let inactive_for_ms = millis(inactive_for);
                if inactive_for_ms <= 0 {
                    return Err(invalid(p.key("inactive_for"), "must be positive"));
                }
                canonical += &format!("min_active={min_active};inactive_for_ms={inactive_for_ms};lookback_buckets={lookback_buckets};");
                Logic::Silence(SilenceRule {
                    min_active,
                    inactive_for_ms,
                    lookback_buckets,
                    windows,
                })
            }
            RuleKind::EngagementDrop => {
                let fraction = p.param("drop_below_fraction", config.drop_below_fraction, 0.3);
                if !(fraction > 0.0 && fraction < 1.0) {
                    return Err(invalid(
                        p.key("drop_below_fraction"),
                        "must be between 0 and 1, exclusive",
                    ));
                }
                let min_baseline = p.param(
                    "min_baseline_weekly_session_seconds",
                    config.min_baseline_weekly_session_seconds,
                    600,
                );
                let recent_window = p.param("recent_window", config.recent_window, 7 * DAY);
                let recent = windows.buckets_in(&p.key("recent_window"), recent_window)?;
                let periods = i64::from(p.param("baseline_periods", config.baseline_periods, 4));
                if periods < 1 || recent * (1 + periods) > windows.retained() {
                    return Err(invalid(
                        p.key("baseline_periods"),
                        "recent_window times (1 + baseline_periods) must fit in state.retained_buckets",
                    ));
                }
                canonical += &format!("fraction={fraction};min_baseline={min_baseline};recent={recent};periods={periods};");
                Logic::Drop(EngagementDrop {
                    fraction,
                    min_baseline,
                    recent,
                    periods,
                    windows,
                    default_tz: jiff::tz::TimeZone::UTC,
                })
            }
            RuleKind::NewUserNoReturn => {
                let within =
                    millis(p.param("first_seen_within", config.first_seen_within, 7 * DAY));
                let ret = millis(p.param("return_within", config.return_within, 2 * DAY));
                if ret <= 0 {
                    return Err(invalid(p.key("return_within"), "must be positive"));
                }
                if within < ret.saturating_add(windows.width_ms()) {
                    return Err(invalid(
                        p.key("first_seen_within"),
                        "must be at least one bucket longer than return_within",
                    ));
                }
                canonical += &format!("first_seen_within_ms={within};return_within_ms={ret};");
                Logic::NewUser(NewUserNoReturn {
                    first_seen_within_ms: within,
                    return_within_ms: ret,
                    windows,
                })
            }
        };
        p.reject_unused()?;
        let experiment = crate::Experiment::new(id, config.experiment.as_deref(), &config.arms)?;
        if let Some(e) = &experiment {
            canonical += &e.canonical();
        }
        let cooldown_ms = config.cooldown.map_or(0, millis);
        canonical += &format!(
            "mode={:?};priority={};cooldown_ms={cooldown_ms};bucket_ms={}",
            config.mode,
            config.priority,
            windows.width_ms()
        );
        Ok(Rule {
            id: id.to_string(),
            key: RuleKey::of(id),
            kind,
            mode: config.mode,
            priority: config.priority,
            cooldown_ms,
            config_hash: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(canonical.as_bytes())),
            logic,
            segments: Vec::new(),
            experiment,
        })
    }

    /// Restricts the rule to users in these segments (at their last activity). The segment
    /// configuration then decides what the rule fires, so its hash joins the rule's.
    pub(crate) fn restrict_to(&mut self, segments: Vec<u8>, segments_hash: u64) {
        let restricted = format!(
            "{};segments={segments:?};{segments_hash:016x}",
            self.config_hash
        );
        self.config_hash = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(restricted.as_bytes()));
        self.segments = segments;
    }

    /// The rule's experiment, if it declares arms.
    pub fn experiment(&self) -> Option<&crate::Experiment> {
        self.experiment.as_ref()
    }

    /// Segment indices the rule is restricted to; empty: every user.
    pub fn segments(&self) -> &[u8] {
        &self.segments
    }

    /// The zone for users whose events never named one (day boundaries of
    /// `engagement_drop`).
    pub(crate) fn set_default_timezone(&mut self, tz: &jiff::tz::TimeZone) {
        if let Logic::Drop(r) = &mut self.logic {
            r.default_tz = tz.clone();
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// What profiles hold for this rule instead of its name.
    pub fn key(&self) -> RuleKey {
        self.key
    }

    pub fn kind(&self) -> RuleKind {
        self.kind
    }

    pub fn mode(&self) -> RuleMode {
        self.mode
    }

    pub fn priority(&self) -> i32 {
        self.priority
    }

    pub fn cooldown_ms(&self) -> i64 {
        self.cooldown_ms
    }

    /// A hash of everything that decides what this rule fires: a changed rule has a
    /// different hash, so every decision can be traced to the configuration that made it.
    pub fn config_hash(&self) -> &str {
        &self.config_hash
    }

    /// The next episode this rule would fire for, and when, if nothing else happens.
    pub(crate) fn candidate(&self, profile: &UserProfile, now_ms: i64) -> Option<Candidate> {
        let memory = profile.memory(self.key);
        match &self.logic {
            Logic::Silence(r) => r.candidate(profile, memory.map(|m| m.episode_ms)),
            Logic::Drop(r) => r.candidate(profile, memory.map(|m| m.episode_ms), self.cooldown_ms),
            Logic::NewUser(r) => r.candidate(profile, memory.is_some(), now_ms),
        }
    }

    pub(crate) fn features(
        &self,
        profile: &UserProfile,
        candidate: Candidate,
        now_ms: i64,
    ) -> BTreeMap<String, f64> {
        match &self.logic {
            Logic::Silence(r) => r.features(profile, now_ms),
            Logic::Drop(r) => r.features(profile, candidate.episode_ms),
            Logic::NewUser(r) => r.features(profile, now_ms),
        }
    }
}
