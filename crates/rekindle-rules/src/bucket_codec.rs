//! The stored form of a profile's buckets: most of a profile's bytes, so worth a layout of
//! its own. A derived encoding spends 15-20 bytes per bucket (its full index, and an 8-byte
//! amount that is almost always zero); this one spends 3-5.
//!
//! Layout (varints are LEB128, little-endian groups of 7 bits):
//! `count`, then if `count > 0` the latest index (zigzag varint), then per bucket from the
//! latest back: `(latest - index) << 1 | has_amount`, `events`, `session_seconds`, and the
//! amount as 8 little-endian bytes only when `has_amount`.

use serde::de::{Error as _, Visitor};
use serde::{Deserializer, Serializer};

use crate::Bucket;

pub(crate) fn serialize<S: Serializer>(
    buckets: &[Bucket],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(&encode(buckets))
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Bucket>, D::Error> {
    struct Bytes;
    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<Bucket>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("encoded activity buckets")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            decode(v).map_err(E::custom)
        }
        fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
            self.visit_bytes(v)
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
            self.visit_bytes(&v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut bytes = Vec::new();
            while let Some(b) = seq.next_element::<u8>()? {
                bytes.push(b);
            }
            decode(&bytes).map_err(A::Error::custom)
        }
    }
    deserializer.deserialize_bytes(Bytes)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(crate) fn get_varint(bytes: &mut &[u8]) -> Result<u64, &'static str> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first().ok_or("truncated varint")?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 64 bits")
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

pub(crate) fn encode(buckets: &[Bucket]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + buckets.len() * 5);
    put_varint(&mut out, buckets.len() as u64);
    let Some(latest) = buckets.last().map(|b| b.index) else {
        return out;
    };
    put_varint(&mut out, zigzag(latest));
    for b in buckets.iter().rev() {
        let has_amount = b.amount != 0.0;
        let back = latest.wrapping_sub(b.index) as u64;
        put_varint(&mut out, (back << 1) | u64::from(has_amount));
        put_varint(&mut out, u64::from(b.events));
        put_varint(&mut out, b.session_seconds);
        if has_amount {
            out.extend_from_slice(&b.amount.to_le_bytes());
        }
    }
    out
}

pub(crate) fn decode(mut bytes: &[u8]) -> Result<Vec<Bucket>, &'static str> {
    let input = &mut bytes;
    let count = get_varint(input)?;
    // Every bucket takes at least three bytes: a count beyond that is corruption, not a
    // reason to allocate.
    if count > (input.len() as u64) / 3 + 1 {
        return Err("bucket count exceeds the data");
    }
    let mut buckets = Vec::with_capacity(count as usize);
    if count == 0 {
        return Ok(buckets);
    }
    let latest = unzigzag(get_varint(input)?);
    for _ in 0..count {
        let head = get_varint(input)?;
        let index = latest.wrapping_sub((head >> 1) as i64);
        let events = u32::try_from(get_varint(input)?).map_err(|_| "event count out of range")?;
        let session_seconds = get_varint(input)?;
        let amount = if head & 1 == 1 {
            let (raw, rest) = input.split_first_chunk::<8>().ok_or("truncated amount")?;
            *input = rest;
            f64::from_le_bytes(*raw)
        } else {
            0.0
        };
        buckets.push(Bucket {
            index,
            events,
            session_seconds,
            amount,
        });
    }
    if !input.is_empty() {
        return Err("trailing bytes after buckets");
    }
    buckets.reverse();
    Ok(buckets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(mut raw in proptest::collection::btree_map(-30_000i64..30_000, (0u32..u32::MAX, any::<u64>(), prop_oneof![Just(0.0), -1e9f64..1e9]), 0..60)) {
            let buckets: Vec<Bucket> = std::mem::take(&mut raw)
                .into_iter()
                .map(|(index, (events, session_seconds, amount))| Bucket { index, events, session_seconds, amount })
                .collect();
            let bytes = encode(&buckets);
            prop_assert_eq!(decode(&bytes), Ok(buckets.clone()));
        }

        /// The size claim holds for the buckets a profile can hold: at most 400 retained
        /// back from the latest, whose index counts buckets since 1970 (10,957 and more for
        /// times after 2000 at widths up to a day). Spread over tens of thousands of
        /// indices down to 0, as `round_trips` generates them, distances back can cost more
        /// than postcard's absolute indices.
        #[test]
        fn stays_within_four_bytes_of_postcard(
            latest in 10_957i64..50_000_000,
            raw in proptest::collection::btree_map(0i64..400, (0u32..u32::MAX, any::<u64>(), prop_oneof![Just(0.0), -1e9f64..1e9]), 0..60),
        ) {
            let buckets: Vec<Bucket> = raw
                .into_iter()
                .rev()
                .map(|(back, (events, session_seconds, amount))| Bucket { index: latest - back, events, session_seconds, amount })
                .collect();
            let bytes = encode(&buckets);
            prop_assert_eq!(decode(&bytes), Ok(buckets.clone()));
            let postcard = postcard::to_allocvec(&buckets).expect("postcard");
            prop_assert!(bytes.len() <= postcard.len() + 4);
        }

        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn a_typical_bucket_takes_four_bytes() {
        let buckets: Vec<Bucket> = (0..28)
            .map(|i| Bucket {
                index: 20_000 + i,
                events: 3,
                session_seconds: 600,
                amount: 0.0,
            })
            .collect();
        let bytes = encode(&buckets);
        assert!(bytes.len() <= 4 + 28 * 4, "{}", bytes.len());
        assert_eq!(decode(&bytes[..bytes.len() - 1]), Err("truncated varint"));
    }
}
