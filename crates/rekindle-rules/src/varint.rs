//! LEB128 varints (little-endian groups of 7 bits) and zigzag, the integers of the stored
//! layouts: profiles ([`crate::encode_profile`]) and timer entries ([`crate::Wake`]).

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

/// Small magnitudes of either sign in few bytes.
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(crate) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(v in any::<u64>(), s in any::<i64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            put_varint(&mut out, zigzag(s));
            let mut input = out.as_slice();
            prop_assert_eq!(get_varint(&mut input), Ok(v));
            prop_assert_eq!(get_varint(&mut input).map(unzigzag), Ok(s));
            prop_assert!(input.is_empty());
        }
    }

    #[test]
    fn small_magnitudes_take_one_byte() {
        let mut out = Vec::new();
        put_varint(&mut out, zigzag(-64));
        put_varint(&mut out, zigzag(63));
        assert_eq!(out.len(), 2);
        assert_eq!(get_varint(&mut &[0x80u8][..]), Err("truncated varint"));
    }
}
