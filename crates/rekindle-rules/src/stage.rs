use crate::UserProfile;

/// Where a user is in their lifecycle, as of a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleStage {
    /// First seen less than a lookback ago.
    New,
    /// Active within the inactivity period.
    Active,
    /// Silent for at least the inactivity period.
    AtRisk,
    /// Silent for at least a whole lookback.
    Dormant,
}

impl LifecycleStage {
    pub fn of(profile: &UserProfile, now_ms: i64, inactive_for_ms: i64, lookback_ms: i64) -> Self {
        let silent = now_ms.saturating_sub(profile.last_active_ms);
        if silent >= lookback_ms {
            LifecycleStage::Dormant
        } else if silent >= inactive_for_ms {
            LifecycleStage::AtRisk
        } else if now_ms.saturating_sub(profile.first_active_ms) < lookback_ms {
            LifecycleStage::New
        } else {
            LifecycleStage::Active
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            LifecycleStage::New => "new",
            LifecycleStage::Active => "active",
            LifecycleStage::AtRisk => "at_risk",
            LifecycleStage::Dormant => "dormant",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_by_silence_and_age() {
        let p = UserProfile {
            first_active_ms: 0,
            last_active_ms: 100,
            ..UserProfile::default()
        };
        assert_eq!(LifecycleStage::of(&p, 105, 10, 50), LifecycleStage::Active);
        assert_eq!(LifecycleStage::of(&p, 110, 10, 50), LifecycleStage::AtRisk);
        assert_eq!(LifecycleStage::of(&p, 150, 10, 50), LifecycleStage::Dormant);
        let young = UserProfile {
            first_active_ms: 90,
            last_active_ms: 100,
            ..UserProfile::default()
        };
        assert_eq!(LifecycleStage::of(&young, 105, 10, 50), LifecycleStage::New);
    }
}
