//! The versioned encoding of a lock: one byte string used by RDB, `DUMP`,
//! the AOF and replication (`LOCK.LOAD`), so there is one format to version
//! and one decoder to harden.
//!
//! Deadlines are monotonic-clock instants, which mean nothing in another
//! process, so the encoding carries durations relative to the moment of
//! encoding: the time left and the time held. Decoding adds the time left to
//! the decoder's `now`. Since a payload is always decoded after it was
//! encoded, the decoded deadline can only come later than the original,
//! never earlier.
//!
//! Version 2 (written), all integers little-endian:
//! ```text
//! u8  version (= 2)
//! u64 fence
//! u64 remaining   microseconds left at encoding
//! u64 held        microseconds since the grant at encoding
//! u64 extensions
//! u64 hold left   microseconds until the hold limit (MAXHOLD); u64::MAX: none
//! u16 owner length (1..=256), then the owner bytes
//! ```
//! Version 1 (read only) is the same without the hold-left field.

use crate::pure::lock::{Lock, Micros, MAX_FENCE, MAX_TOKEN_LEN};
use std::fmt;

/// The encoding written by this build. Also the module type's encoding
/// version, so a server refuses RDB files from a newer module.
pub const VERSION: u8 = 2;

/// `hold left` of a lock without a hold limit.
const NO_HOLD_LIMIT: u64 = u64::MAX;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Empty,
    UnknownVersion(u8),
    Truncated,
    TrailingBytes,
    BadOwnerLength(usize),
    BadFence(u64),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty payload"),
            DecodeError::UnknownVersion(v) => write!(f, "unknown encoding version {v}"),
            DecodeError::Truncated => write!(f, "truncated payload"),
            DecodeError::TrailingBytes => write!(f, "trailing bytes after the payload"),
            DecodeError::BadOwnerLength(n) => write!(f, "owner length {n} out of range"),
            DecodeError::BadFence(n) => write!(f, "fencing token {n} out of range"),
        }
    }
}

pub fn encode(lock: &Lock, now: Micros) -> Vec<u8> {
    let owner = lock.owner();
    let owner = owner.get(..MAX_TOKEN_LEN).unwrap_or(owner);
    let hold_left = lock.hold_limit().map_or(NO_HOLD_LIMIT, |limit| {
        limit.saturating_sub(now).min(NO_HOLD_LIMIT - 1)
    });
    let mut out = Vec::with_capacity(1 + 8 * 5 + 2 + owner.len());
    out.push(VERSION);
    out.extend_from_slice(&lock.fence.to_le_bytes());
    out.extend_from_slice(&lock.remaining(now).to_le_bytes());
    out.extend_from_slice(&lock.held_for(now).to_le_bytes());
    out.extend_from_slice(&lock.extensions().to_le_bytes());
    out.extend_from_slice(&hold_left.to_le_bytes());
    // The owner is at most 256 bytes (checked on input), so this never truncates.
    out.extend_from_slice(&(owner.len() as u16).to_le_bytes());
    out.extend_from_slice(owner);
    out
}

pub fn decode(bytes: &[u8], now: Micros) -> Result<Lock, DecodeError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if !(1..=VERSION).contains(&version) {
        return Err(DecodeError::UnknownVersion(version));
    }
    let fence = r.u64()?;
    let remaining = r.u64()?;
    let held = r.u64()?;
    let extensions = r.u64()?;
    let hold_left = if version >= 2 {
        r.u64()?
    } else {
        NO_HOLD_LIMIT
    };
    let owner_len = usize::from(r.u16()?);
    if owner_len == 0 || owner_len > MAX_TOKEN_LEN {
        return Err(DecodeError::BadOwnerLength(owner_len));
    }
    if fence == 0 || fence > MAX_FENCE {
        return Err(DecodeError::BadFence(fence));
    }
    let owner = r.take(owner_len)?;
    if !r.0.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(Lock::new(
        owner,
        fence,
        now.saturating_add(remaining),
        now.saturating_sub(held),
    )
    .with_extensions(extensions)
    .with_hold_limit((hold_left != NO_HOLD_LIMIT).then(|| now.saturating_add(hold_left))))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        match self.0.split_first() {
            Some((b, tail)) => {
                self.0 = tail;
                Ok(*b)
            }
            None => Err(DecodeError::Empty),
        }
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let mut buf = [0u8; 2];
        buf.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(buf))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Lock {
        Lock::new(b"owner-token", 42, 10_000_000, 4_000_000)
            .with_extensions(3)
            .with_hold_limit(Some(18_000_000))
    }

    const HEADER_LEN_V1: usize = 1 + 8 * 4 + 2;
    const HEADER_LEN: usize = 1 + 8 * 5 + 2;

    /// The committed fixtures, one per version: changing an encoding
    /// without a new version breaks these tests, and every version ever
    /// written must still decode.
    const FIXTURE_V2: &str = concat!(
        "02",               // version
        "2a00000000000000", // fence 42
        "80841e0000000000", // 2 s left
        "00093d0000000000", // held 4 s
        "0300000000000000", // 3 extensions
        "8096980000000000", // 10 s until the hold limit
        "0b00",             // owner length 11
        "6f776e65722d746f6b656e",
    );
    const FIXTURE_V1: &str = concat!(
        "01",               // version
        "2a00000000000000", // fence 42
        "80841e0000000000", // 2 s left
        "00093d0000000000", // held 4 s
        "0300000000000000", // 3 extensions
        "0b00",             // owner length 11
        "6f776e65722d746f6b656e",
    );

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn version_2_fixture_is_stable() {
        assert_eq!(hex(&encode(&sample(), 8_000_000)), FIXTURE_V2);
        let decoded = decode(&unhex(FIXTURE_V2), 100_000_000).unwrap();
        assert_eq!(decoded.owner(), b"owner-token");
        assert_eq!(decoded.fence, 42);
        assert_eq!(decoded.deadline, 102_000_000);
        assert_eq!(decoded.acquired_at, 96_000_000);
        assert_eq!(decoded.extensions(), 3);
        assert_eq!(decoded.hold_limit(), Some(110_000_000));
    }

    #[test]
    fn version_1_fixture_still_decodes() {
        let decoded = decode(&unhex(FIXTURE_V1), 100_000_000).unwrap();
        assert_eq!(decoded.owner(), b"owner-token");
        assert_eq!(decoded.fence, 42);
        assert_eq!(decoded.deadline, 102_000_000);
        assert_eq!(decoded.acquired_at, 96_000_000);
        assert_eq!(decoded.extensions(), 3);
        assert_eq!(decoded.hold_limit(), None);
        let no_limit = sample().with_hold_limit(None);
        let again = decode(&encode(&no_limit, 8_000_000), 8_000_000).unwrap();
        assert_eq!(again.hold_limit(), None);
    }

    #[test]
    fn decoding_later_never_moves_the_deadline_earlier() {
        let lock = sample();
        let bytes = encode(&lock, 8_000_000);
        // Same clock, decoded 1 s later: deadline 1 s later than the original.
        let later = decode(&bytes, 9_000_000).unwrap();
        assert_eq!(later.deadline, lock.deadline + 1_000_000);
    }

    #[test]
    fn expired_lock_encodes_zero_remaining() {
        let lock = sample();
        let decoded = decode(&encode(&lock, 20_000_000), 50).unwrap();
        assert!(!decoded.is_live(50));
    }

    #[test]
    fn rejects_bad_payloads() {
        for (fixture, header) in [(FIXTURE_V1, HEADER_LEN_V1), (FIXTURE_V2, HEADER_LEN)] {
            rejects_bad_variants_of(&unhex(fixture), header);
        }
        assert_eq!(decode(&[], 0), Err(DecodeError::Empty));
        assert_eq!(decode(&[3], 0), Err(DecodeError::UnknownVersion(3)));
        assert_eq!(decode(&[0], 0), Err(DecodeError::UnknownVersion(0)));
    }

    fn rejects_bad_variants_of(good: &[u8], header_len: usize) {
        let good = good.to_vec();
        for cut in 1..good.len() {
            assert_eq!(
                decode(&good[..cut], 0),
                Err(DecodeError::Truncated),
                "cut at {cut}"
            );
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode(&long, 0), Err(DecodeError::TrailingBytes));
        let mut zero_owner = good[..header_len].to_vec();
        zero_owner[header_len - 2] = 0;
        zero_owner[header_len - 1] = 0;
        assert_eq!(decode(&zero_owner, 0), Err(DecodeError::BadOwnerLength(0)));
        let mut huge_owner = good.clone();
        huge_owner[header_len - 2] = 0x01;
        huge_owner[header_len - 1] = 0x01;
        assert_eq!(
            decode(&huge_owner, 0),
            Err(DecodeError::BadOwnerLength(257))
        );
        let mut zero_fence = good.clone();
        zero_fence[1] = 0;
        assert_eq!(decode(&zero_fence, 0), Err(DecodeError::BadFence(0)));
    }

    proptest! {
        #[test]
        fn round_trip(owner in proptest::collection::vec(any::<u8>(), 1..=256),
                      fence in 1..=MAX_FENCE,
                      remaining in 0..u64::MAX / 4,
                      held in 0..u64::MAX / 4,
                      extensions: u64,
                      hold in proptest::option::of(0..u64::MAX / 4),
                      now in u64::MAX / 2..u64::MAX / 2 + 1_000_000) {
            let lock = Lock::new(&owner, fence, now + remaining, now - held)
                .with_extensions(extensions)
                .with_hold_limit(hold.map(|h| now + h));
            prop_assert_eq!(decode(&encode(&lock, now), now), Ok(lock));
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&bytes, 1_000);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// A valid encoding with random bytes overwritten, truncated or
        /// extended: never a panic, and whatever decodes is a valid lock.
        #[test]
        fn decoder_survives_mutated_encodings(
            owner in proptest::collection::vec(any::<u8>(), 1..=40),
            fence in 1..=MAX_FENCE,
            patches in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            cut in proptest::option::of(any::<usize>()),
            tail in proptest::collection::vec(any::<u8>(), 0..3),
        ) {
            let now = u64::MAX / 2;
            let lock = Lock::new(&owner, fence, now + 5_000, now - 10).with_extensions(3);
            let mut bytes = encode(&lock, now);
            for (at, b) in patches {
                let n = bytes.len();
                if let Some(x) = bytes.get_mut(at % n) {
                    *x = b;
                }
            }
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            bytes.extend_from_slice(&tail);
            if let Ok(got) = decode(&bytes, now) {
                prop_assert!((1..=256).contains(&got.owner().len()));
                prop_assert!(got.fence >= 1 && got.fence <= MAX_FENCE);
                prop_assert!(got.deadline >= now);
            }
        }
    }
}
