use rekindle_events::ReactivationTrigger;
use serde::{Deserialize, Serialize};

use crate::{Group, StageChange};

/// Why a trigger did not go out (or not yet).
///
/// Profiles store it (in their decision notes) by an explicit code,
/// `profile_codec::reason_code`: a new reason takes a new code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Reason {
    /// The rule runs in shadow mode.
    Shadow,
    OptedOut,
    /// The same rule went out to this user within its cooldown.
    Cooldown,
    /// The user reached the frequency cap.
    Capped,
    /// A higher-priority rule took this moment (or holds a deferred trigger).
    Outranked,
    /// Due inside the user's quiet hours: deferred to their end.
    QuietHours,
    /// The user is in the holdout group: recorded, never sent.
    Holdout,
    /// A deferred trigger whose user came back before it went out.
    Returned,
    UserDeleted,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Shadow,
        Reason::OptedOut,
        Reason::Cooldown,
        Reason::Capped,
        Reason::Outranked,
        Reason::QuietHours,
        Reason::Holdout,
        Reason::Returned,
        Reason::UserDeleted,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Shadow => "shadow",
            Reason::OptedOut => "opted_out",
            Reason::Cooldown => "cooldown",
            Reason::Capped => "capped",
            Reason::Outranked => "outranked",
            Reason::QuietHours => "quiet_hours",
            Reason::Holdout => "holdout",
            Reason::Returned => "returned",
            Reason::UserDeleted => "user_deleted",
        }
    }
}

/// What became of a trigger a rule fired.
///
/// Profiles store it (in their decision notes) by an explicit code,
/// `profile_codec::put_verdict`: a new verdict takes a new code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// To the delivery topic.
    Sent,
    /// Not sent, now or later.
    Suppressed(Reason),
    /// Held back by quiet hours until `release_ms`.
    Deferred { release_ms: i64 },
    /// A deferred trigger that will not go out after all.
    Cancelled(Reason),
}

impl Verdict {
    /// `sent`, `suppressed`, `deferred` or `cancelled`.
    pub fn decision(&self) -> &'static str {
        match self {
            Verdict::Sent => "sent",
            Verdict::Suppressed(_) => "suppressed",
            Verdict::Deferred { .. } => "deferred",
            Verdict::Cancelled(_) => "cancelled",
        }
    }

    pub fn reason(&self) -> Option<Reason> {
        match self {
            Verdict::Sent => None,
            Verdict::Suppressed(r) | Verdict::Cancelled(r) => Some(*r),
            Verdict::Deferred { .. } => Some(Reason::QuietHours),
        }
    }

    /// How a profile's decision log and `rekindle inspect` show it.
    pub fn label(&self) -> String {
        match self.reason() {
            None => self.decision().to_string(),
            Some(r) => format!("{}:{}", self.decision(), r.as_str()),
        }
    }
}

/// A rule's trigger with the explanation and what the policies made of it. The trigger's
/// `fired_at_ms` is the pipeline clock at this decision (a deferred trigger's release or
/// cancellation is a later decision about the same trigger id).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub trigger: ReactivationTrigger,
    pub verdict: Verdict,
}

/// A user back within the attribution window after a trigger of a configured rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reactivation {
    pub rule: String,
    pub group: Group,
    /// When the trigger went out (or was held out).
    pub triggered_at_ms: i64,
}

/// Everything one evaluation changed that the caller reports.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub decisions: Vec<Decision>,
    /// The stage before and after this evaluation, when it changed.
    pub stage_change: Option<StageChange>,
    /// A triggered or held-out user came back within the attribution window.
    pub reactivated: Option<Reactivation>,
    /// A trigger went out or was held out: the user entered attribution for this group.
    pub attributable: Vec<(String, Group)>,
    /// The RFM segment before and after this evaluation, when it changed.
    pub segment_change: Option<SegmentChange>,
    /// Users counted in a rule's experiment: first triggered (or held out) in an arm, or
    /// first back within the attribution window after such a trigger.
    pub experiments: Vec<ExperimentCount>,
}

/// One user counted in one arm of a rule's experiment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentCount {
    pub rule: String,
    pub experiment: String,
    pub arm: String,
    /// `false`: triggered (or held out); `true`: reactivated.
    pub reactivated: bool,
}

/// A user's segment moved (`None`: no segment, before the first activity or deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentChange {
    pub from: Option<u8>,
    pub to: Option<u8>,
}

impl Outcome {
    pub fn clear(&mut self) {
        self.decisions.clear();
        self.stage_change = None;
        self.reactivated = None;
        self.attributable.clear();
        self.segment_change = None;
        self.experiments.clear();
    }

    pub(crate) fn segment(&mut self, from: Option<u8>, to: Option<u8>) {
        // Several changes in one evaluation report as one, from the first to the last.
        let from = self.segment_change.map_or(from, |earlier| earlier.from);
        self.segment_change = (from != to).then_some(SegmentChange { from, to });
    }

    pub(crate) fn stage(&mut self, change: Option<StageChange>) {
        if let Some(change) = change {
            // Several changes in one evaluation report as one, from the first to the last.
            self.stage_change = Some(match self.stage_change {
                Some(earlier) => StageChange {
                    from: earlier.from,
                    to: change.to,
                },
                None => change,
            });
            if self.stage_change.is_some_and(|c| c.from == c.to) {
                self.stage_change = None;
            }
        }
    }
}
