//! Key layouts. Big-endian everywhere so that RocksDB's byte order is numeric order.

pub(crate) fn partition_prefix(partition: u32) -> [u8; 4] {
    partition.to_be_bytes()
}

/// The partition's growth figures, in the meta family beside its position. Five bytes, so
/// that listing partitions (four-byte keys) passes over it.
pub(crate) fn growth_key(partition: u32) -> [u8; 5] {
    let [a, b, c, d] = partition_prefix(partition);
    [a, b, c, d, b'g']
}

pub(crate) fn profile_key(partition: u32, user_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + user_id.len());
    write_profile_key(&mut key, partition, user_id);
    key
}

/// [`profile_key`] into `key`, replacing what it held: a commit writes tens of thousands of
/// keys through one buffer instead of allocating each.
pub(crate) fn write_profile_key(key: &mut Vec<u8>, partition: u32, user_id: &str) {
    key.clear();
    key.extend_from_slice(&partition_prefix(partition));
    key.extend_from_slice(user_id.as_bytes());
}

/// Flips the sign bit so that negative times sort before positive ones as unsigned bytes.
fn ordered_time(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_from_ordered(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

pub(crate) fn timer_key(partition: u32, due_ms: i64, user_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(12 + user_id.len());
    write_timer_key(&mut key, partition, due_ms, user_id);
    key
}

/// [`timer_key`] into `key`, replacing what it held.
pub(crate) fn write_timer_key(key: &mut Vec<u8>, partition: u32, due_ms: i64, user_id: &str) {
    key.clear();
    key.extend_from_slice(&partition_prefix(partition));
    key.extend_from_slice(&ordered_time(due_ms));
    key.extend_from_slice(user_id.as_bytes());
}

/// The first timer key of `partition` at or after `due_ms`.
pub(crate) fn timer_seek(partition: u32, due_ms: i64) -> Vec<u8> {
    timer_key(partition, due_ms, "")
}

/// Splits a timer key into due time and user id; `None` for a key of another layout.
pub(crate) fn parse_timer_key(key: &[u8]) -> Option<(u32, i64, String)> {
    let partition = u32::from_be_bytes(key.get(0..4)?.try_into().ok()?);
    let due = time_from_ordered(key.get(4..12)?.try_into().ok()?);
    let user = std::str::from_utf8(key.get(12..)?).ok()?.to_string();
    Some((partition, due, user))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn timer_keys_sort_by_partition_then_time(p1 in 0u32..4, p2 in 0u32..4, a in any::<i64>(), b in any::<i64>(), u in "[a-z]{0,8}") {
            let ka = timer_key(p1, a, &u);
            let kb = timer_key(p2, b, &u);
            prop_assert_eq!(ka.cmp(&kb), (p1, a).cmp(&(p2, b)));
            prop_assert_eq!(parse_timer_key(&ka), Some((p1, a, u.clone())));
            // Written over a longer key, the buffer holds exactly the new one.
            let mut reused = timer_key(p2, b, "a-much-longer-user-id");
            write_timer_key(&mut reused, p1, a, &u);
            prop_assert_eq!(&reused, &ka);
            let mut reused = profile_key(p2, "a-much-longer-user-id");
            write_profile_key(&mut reused, p1, &u);
            prop_assert_eq!(reused, profile_key(p1, &u));
        }
    }
}
