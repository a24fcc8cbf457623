use rekindle_events::ReactivationTrigger;
use rekindle_rules::{LapsedRule, UserProfile, Windows};

/// The configured rules, evaluated together. A user has one timer: the earliest time any
/// rule wants to look at them again. Today that is the single `lapsed_7d` rule; the rules
/// issue adds more, each with its own episode memory in the profile.
pub struct RuleSet {
    windows: Windows,
    lapsed: LapsedRule,
}

impl RuleSet {
    pub fn new(windows: Windows, lapsed: LapsedRule) -> RuleSet {
        RuleSet { windows, lapsed }
    }

    pub fn windows(&self) -> &Windows {
        &self.windows
    }

    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.lapsed.id())
    }

    pub fn next_wake(&self, profile: &UserProfile) -> Option<i64> {
        self.lapsed.pending_due(profile)
    }

    /// Fires every rule due at `now_ms`.
    pub fn fire(
        &self,
        user_id: &str,
        profile: &mut UserProfile,
        now_ms: i64,
        out: &mut Vec<ReactivationTrigger>,
    ) {
        out.extend(self.lapsed.fire(user_id, profile, now_ms));
    }
}
