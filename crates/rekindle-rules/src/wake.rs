//! When a user needs looking at next without new activity, and the stage and segment
//! changes that only move counts on the way there.
//!
//! A stage or segment change that silence brings (a recency threshold passes, an active
//! bucket leaves the lookback) changes nothing but the partition's counts: no rule reads
//! the stored stage or segment. Such changes are planned when the user is evaluated, carried
//! by the user's timer entry ([`Wake::encode`]) and counted when due without reading the
//! profile, which at millions of users is a read from disk. The profile catches up with
//! them the next time it is read ([`crate::RuleBook::catch_up`]).

use crate::varint::{get_varint, put_varint};
use crate::{LifecycleStage, RulesError, SegmentChange, StageChange};

/// Steps a plan carries at most; the change after the last one is a full evaluation.
pub const COUNT_STEPS: usize = 8;

/// A user's stage and segment as the partition counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CountedAs {
    pub stage: Option<LifecycleStage>,
    pub segment: Option<u8>,
}

/// More steps than any plan carries: a value claiming them is damaged.
const MAX_STEPS_READ: u64 = 64;

/// Stage codes 0-4, 5 for none; segment codes 0-15, 16 for none.
const NO_STAGE: u8 = 5;
const NO_SEGMENT: u8 = 16;

impl CountedAs {
    fn pack(self) -> u8 {
        let stage = self.stage.map_or(NO_STAGE, |s| s.index() as u8);
        let segment = self.segment.map_or(NO_SEGMENT, |s| s.min(NO_SEGMENT - 1));
        stage | segment << 3
    }

    fn unpack(byte: u8) -> Result<CountedAs, RulesError> {
        let (stage, segment) = (byte & 7, byte >> 3);
        let stage = match stage {
            NO_STAGE => None,
            s => Some(
                *LifecycleStage::ALL
                    .get(usize::from(s))
                    .ok_or(corrupt("stage code out of range"))?,
            ),
        };
        let segment = match segment {
            NO_SEGMENT => None,
            s if s < NO_SEGMENT => Some(s),
            _ => return Err(corrupt("segment code out of range")),
        };
        Ok(CountedAs { stage, segment })
    }
}

/// One moment at which the user's counted stage or segment (or both) changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountStep {
    pub at_ms: i64,
    pub from: CountedAs,
    pub to: CountedAs,
}

impl CountStep {
    pub fn stage_change(&self) -> Option<StageChange> {
        (self.from.stage != self.to.stage).then_some(StageChange {
            from: self.from.stage,
            to: self.to.stage,
        })
    }

    pub fn segment_change(&self) -> Option<SegmentChange> {
        (self.from.segment != self.to.segment).then_some(SegmentChange {
            from: self.from.segment,
            to: self.to.segment,
        })
    }
}

/// A plan's steps: on the stack up to as many as a plan carries.
pub type Steps = smallvec::SmallVec<[CountStep; COUNT_STEPS]>;

/// The user's next full evaluation and the counted changes before it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Wake {
    /// A rule deadline, a deferred release, or a stage or segment change beyond the steps a
    /// plan carries; `None`: nothing to evaluate without new activity.
    pub full_ms: Option<i64>,
    /// Changes strictly before `full_ms`, ascending, each following the one before.
    pub steps: Steps,
}

fn corrupt(reason: &'static str) -> RulesError {
    RulesError::TimerEntry(reason)
}

/// A varint of the timer entry's value.
fn take_varint(bytes: &mut &[u8]) -> Result<u64, RulesError> {
    get_varint(bytes).map_err(RulesError::TimerEntry)
}

fn take_byte(bytes: &mut &[u8]) -> Result<u8, RulesError> {
    let (&b, rest) = bytes.split_first().ok_or(corrupt("truncated"))?;
    *bytes = rest;
    Ok(b)
}

impl Wake {
    /// The time of the user's timer entry: the first step, else the full evaluation.
    pub fn next_ms(&self) -> Option<i64> {
        self.steps.first().map(|s| s.at_ms).or(self.full_ms)
    }

    /// What is left once the first step is counted.
    pub fn after_first_step(mut self) -> Wake {
        if !self.steps.is_empty() {
            self.steps.remove(0);
        }
        self
    }

    /// The timer entry's value: empty for a full evaluation; otherwise the steps and the
    /// full evaluation after them. The first step's time is the entry's own.
    pub fn encode(&self) -> Vec<u8> {
        let Some(first) = self.steps.first() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(3 + 5 * self.steps.len());
        out.push(first.from.pack());
        put_varint(&mut out, self.steps.len() as u64);
        let mut previous = first.at_ms;
        for step in &self.steps {
            put_varint(&mut out, step.at_ms.abs_diff(previous));
            out.push(step.to.pack());
            previous = step.at_ms;
        }
        // 0 for none; the full evaluation always comes after the last step.
        put_varint(&mut out, self.full_ms.map_or(0, |f| f.abs_diff(previous)));
        out
    }

    /// Reads [`Wake::encode`]'s bytes back for the entry due at `due_ms`.
    pub fn decode(due_ms: i64, mut bytes: &[u8]) -> Result<Wake, RulesError> {
        if bytes.is_empty() {
            return Ok(Wake {
                full_ms: Some(due_ms),
                steps: Steps::new(),
            });
        }
        let bytes = &mut bytes;
        let mut from = CountedAs::unpack(take_byte(bytes)?)?;
        let count = take_varint(bytes)?;
        if count == 0 || count > MAX_STEPS_READ {
            return Err(corrupt("step count out of range"));
        }
        let mut steps = Steps::with_capacity(count as usize);
        let mut at = due_ms;
        for i in 0..count {
            let delta = take_varint(bytes)?;
            if (i == 0) != (delta == 0) {
                return Err(corrupt("steps out of order"));
            }
            at = i64::try_from(delta)
                .ok()
                .and_then(|d| at.checked_add(d))
                .ok_or(corrupt("time out of range"))?;
            let to = CountedAs::unpack(take_byte(bytes)?)?;
            steps.push(CountStep {
                at_ms: at,
                from,
                to,
            });
            from = to;
        }
        let full = take_varint(bytes)?;
        let full_ms = match full {
            0 => None,
            d => Some(
                i64::try_from(d)
                    .ok()
                    .and_then(|d| at.checked_add(d))
                    .ok_or(corrupt("time out of range"))?,
            ),
        };
        if !bytes.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(Wake { full_ms, steps })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn counted() -> impl Strategy<Value = CountedAs> {
        (
            proptest::option::of(0usize..5),
            proptest::option::of(0u8..16),
        )
            .prop_map(|(stage, segment)| CountedAs {
                stage: stage.map(|i| LifecycleStage::ALL[i]),
                segment,
            })
    }

    fn wake() -> impl Strategy<Value = (i64, Wake)> {
        (
            -1_000_000_000_000i64..4_000_000_000_000,
            counted(),
            proptest::collection::vec((1i64..100 * 86_400_000, counted()), 0..COUNT_STEPS),
            proptest::option::of(1i64..400 * 86_400_000),
        )
            .prop_map(|(due, first, rest, full)| {
                let mut steps = Steps::new();
                let mut from = first;
                let mut at = due;
                for (i, (delta, to)) in rest.into_iter().enumerate() {
                    if i > 0 {
                        at += delta;
                    }
                    steps.push(CountStep {
                        at_ms: at,
                        from,
                        to,
                    });
                    from = to;
                }
                let full_ms = if steps.is_empty() {
                    Some(due)
                } else {
                    full.map(|d| at + d)
                };
                (due, Wake { full_ms, steps })
            })
    }

    proptest! {
        #[test]
        fn round_trips((due, wake) in wake()) {
            let bytes = wake.encode();
            prop_assert_eq!(bytes.is_empty(), wake.steps.is_empty());
            prop_assert_eq!(Wake::decode(due, &bytes)?, wake.clone());
            prop_assert_eq!(wake.next_ms(), Some(due));
        }

        #[test]
        fn damaged_bytes_are_refused_or_read_as_some_plan(
            (due, wake) in wake(),
            at in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<bool>(),
        ) {
            let mut bytes = wake.encode();
            if bytes.is_empty() {
                return Ok(());
            }
            let i = at.index(bytes.len());
            if cut {
                bytes.truncate(i);
            } else {
                bytes[i] = byte;
            }
            if let Ok(read) = Wake::decode(due, &bytes) {
                // Whatever is read is a plan the engine can follow: ascending steps, each
                // from where the one before went, and the full evaluation after them.
                for pair in read.steps.windows(2) {
                    prop_assert!(pair[0].at_ms < pair[1].at_ms);
                    prop_assert_eq!(pair[0].to, pair[1].from);
                }
                if let (Some(last), Some(full)) = (read.steps.last(), read.full_ms) {
                    prop_assert!(full > last.at_ms);
                }
            }
        }
    }

    #[test]
    fn an_empty_value_is_a_full_evaluation_at_the_entry() {
        assert_eq!(
            Wake::decode(42, &[]),
            Ok(Wake {
                full_ms: Some(42),
                steps: Steps::new()
            })
        );
    }
}
