//! Experiments on a rule: arms (e.g. `push_reminder` 45 %, `coupon` 45 %, `holdout` 10 %)
//! assigned by a salted hash of the experiment id and the user id, so a user's arm is the
//! same on every worker, restart and replay. The arm goes into the trigger; a holdout arm's
//! triggers are recorded, not sent, and count for caps, cooldowns and attribution like the
//! others, so the arms differ only in what is delivered. Lift is measured per user: of the
//! users a rule triggered (or held out) in an arm, how many came back within the
//! attribution window after one of those triggers.

use serde::Deserialize;

use crate::error::invalid;
use crate::RulesError;

/// One arm of `[rules.<id>] arms`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArmConfig {
    pub name: String,
    /// Share of the rule's users, in percent; the arms of a rule add up to 100.
    pub percent: f64,
    /// Triggers of this arm are recorded (audit reason `holdout`) and never sent: the
    /// control the other arms are measured against. At most one arm per rule.
    #[serde(default)]
    pub holdout: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    pub name: String,
    pub holdout: bool,
    /// Users whose hash (out of 10,000) is below this and above the previous arm's.
    upto: u64,
}

/// A rule's validated experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    id: String,
    /// Identifies the experiment in a user's rule memory (which experiment the user was
    /// counted in), never 0.
    tag: u32,
    arms: Vec<Arm>,
}

impl Experiment {
    /// `None` when the rule declares no arms. `id` defaults to the rule id.
    pub fn new(
        rule_id: &str,
        id: Option<&str>,
        arms: &[ArmConfig],
    ) -> Result<Option<Experiment>, RulesError> {
        let key = format!("rules.{rule_id}.arms");
        if arms.is_empty() {
            if id.is_some() {
                return Err(invalid(format!("rules.{rule_id}.experiment"), "needs arms"));
            }
            return Ok(None);
        }
        if arms.len() < 2 {
            return Err(invalid(key, "an experiment needs at least two arms"));
        }
        let mut total = 0.0;
        let mut built: Vec<Arm> = Vec::new();
        for arm in arms {
            let valid_name = !arm.name.is_empty()
                && arm
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
            if !valid_name {
                return Err(invalid(
                    &key,
                    format!(
                        "arm name {:?}: lowercase letters, digits, _ and -",
                        arm.name
                    ),
                ));
            }
            if built.iter().any(|a| a.name == arm.name) {
                return Err(invalid(&key, format!("arm {:?} is named twice", arm.name)));
            }
            if !(arm.percent > 0.0 && arm.percent <= 100.0) {
                return Err(invalid(
                    &key,
                    format!(
                        "arm {:?}: percent must be above 0 and at most 100",
                        arm.name
                    ),
                ));
            }
            total += arm.percent;
            built.push(Arm {
                name: arm.name.clone(),
                holdout: arm.holdout,
                upto: (total * 100.0).round() as u64,
            });
        }
        if (total - 100.0).abs() > 1e-6 {
            return Err(invalid(
                &key,
                format!("the arms' percent add up to {total}, not 100"),
            ));
        }
        if built.iter().filter(|a| a.holdout).count() > 1 {
            return Err(invalid(&key, "at most one arm is the holdout"));
        }
        let id = id.unwrap_or(rule_id).to_string();
        if id.is_empty() {
            return Err(invalid(
                format!("rules.{rule_id}.experiment"),
                "must not be empty",
            ));
        }
        let tag = (xxhash_rust::xxh3::xxh3_64(id.as_bytes()) as u32).max(1);
        Ok(Some(Experiment {
            id,
            tag,
            arms: built,
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn tag(&self) -> u32 {
        self.tag
    }

    pub fn arms(&self) -> &[Arm] {
        &self.arms
    }

    /// The user's arm: a salted hash, the same everywhere and every time.
    pub fn arm_of(&self, user_id: &str) -> &Arm {
        let mut key = Vec::with_capacity(self.id.len() + 1 + user_id.len());
        key.extend_from_slice(self.id.as_bytes());
        key.push(0x1f);
        key.extend_from_slice(user_id.as_bytes());
        let point = xxhash_rust::xxh3::xxh3_64(&key) % 10_000;
        // Percentages add up to 100, so the last arm reaches 10,000; `last` covers rounding.
        self.arms
            .iter()
            .find(|a| point < a.upto)
            .or(self.arms.last())
            .unwrap_or(&self.arms[0])
    }

    /// What the canonical configuration of the rule adds for its experiment.
    pub(crate) fn canonical(&self) -> String {
        let arms: Vec<String> = self
            .arms
            .iter()
            .map(|a| format!("{}:{}:{}", a.name, a.upto, a.holdout))
            .collect();
        format!("experiment={};arms={};", self.id, arms.join(","))
    }
}

/// The difference of two reactivation rates with its 95 % confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lift {
    /// The arm's rate minus the holdout's.
    pub lift: f64,
    pub low: f64,
    pub high: f64,
}

impl Lift {
    /// The interval excludes zero.
    pub fn significant(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// Two-proportion comparison (normal approximation, unpooled standard error): `arm` and
/// `holdout` as (users, reactivated). `None` when either has no users.
pub fn lift(arm: (u64, u64), holdout: (u64, u64)) -> Option<Lift> {
    let rate = |(users, back): (u64, u64)| {
        (users > 0).then(|| (back.min(users) as f64 / users as f64, users as f64))
    };
    let (p1, n1) = rate(arm)?;
    let (p0, n0) = rate(holdout)?;
    let se = (p1 * (1.0 - p1) / n1 + p0 * (1.0 - p0) / n0).sqrt();
    let lift = p1 - p0;
    // 97.5th percentile of the standard normal distribution.
    let z = 1.959_963_984_540_054;
    Some(Lift {
        lift,
        low: lift - z * se,
        high: lift + z * se,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arms(spec: &[(&str, f64, bool)]) -> Vec<ArmConfig> {
        spec.iter()
            .map(|(name, percent, holdout)| ArmConfig {
                name: (*name).into(),
                percent: *percent,
                holdout: *holdout,
            })
            .collect()
    }

    #[test]
    fn users_split_in_the_configured_shares_and_keep_their_arm() {
        let e = Experiment::new(
            "lapsed_7d",
            Some("winback-q4"),
            &arms(&[
                ("push", 45.0, false),
                ("coupon", 45.0, false),
                ("holdout", 10.0, true),
            ]),
        )
        .expect("valid")
        .expect("declared");
        let mut counts = [0usize; 3];
        for i in 0..100_000 {
            let user = format!("user-{i}");
            let arm = e.arm_of(&user);
            assert_eq!(e.arm_of(&user), arm, "stable");
            counts[e.arms().iter().position(|a| a == arm).expect("one of them")] += 1;
        }
        // 45 %, 45 %, 10 % of 100,000 within a few standard deviations (about 160 and 95).
        assert!((44_300..45_700).contains(&counts[0]), "{counts:?}");
        assert!((44_300..45_700).contains(&counts[1]), "{counts:?}");
        assert!((9_600..10_400).contains(&counts[2]), "{counts:?}");
        // Another experiment id reshuffles users independently.
        let other = Experiment::new(
            "lapsed_7d",
            Some("winback-q1"),
            &arms(&[("a", 50.0, false), ("b", 50.0, true)]),
        )
        .expect("valid")
        .expect("declared");
        let same = (0..10_000)
            .filter(|i| {
                let user = format!("user-{i}");
                (e.arm_of(&user).name == "push") == (other.arm_of(&user).name == "a")
            })
            .count();
        assert!((4_700..5_300).contains(&same), "{same}");
    }

    #[test]
    fn arms_are_checked() {
        let bad = [
            arms(&[("a", 100.0, false)]),
            arms(&[("a", 60.0, false), ("b", 30.0, true)]),
            arms(&[("a", 50.0, true), ("b", 50.0, true)]),
            arms(&[("a", 50.0, false), ("a", 50.0, true)]),
            arms(&[("A b", 50.0, false), ("c", 50.0, true)]),
            arms(&[("a", 0.0, false), ("b", 100.0, true)]),
        ];
        for spec in bad {
            assert!(Experiment::new("r", None, &spec).is_err(), "{spec:?}");
        }
        assert!(
            Experiment::new("r", Some("x"), &[]).is_err(),
            "an experiment without arms"
        );
        assert_eq!(Experiment::new("r", None, &[]).expect("valid"), None);
    }

    #[test]
    fn lift_and_its_interval() {
        // 30 % of 1,000 against 20 % of 1,000: lift 0.1, standard error sqrt(0.00037).
        let l = lift((1000, 300), (1000, 200)).expect("both have users");
        assert!((l.lift - 0.1).abs() < 1e-12);
        let half = 1.959_963_984_540_054 * 0.00037f64.sqrt();
        assert!((l.low - (0.1 - half)).abs() < 1e-12 && (l.high - (0.1 + half)).abs() < 1e-12);
        assert!(l.significant());
        // 21 % against 20 % of 1,000 each: the interval crosses zero.
        let l = lift((1000, 210), (1000, 200)).expect("both have users");
        assert!(l.low < 0.0 && l.high > 0.0 && !l.significant());
        // Worse than the holdout is significant too, with a negative lift.
        let l = lift((2000, 200), (2000, 400)).expect("both have users");
        assert!(l.lift < 0.0 && l.significant());
        assert_eq!(lift((0, 0), (10, 1)), None);
    }
}
