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
//! Version 1, all integers little-endian:
//! ```text
//! u8  version (= 1)
//! u64 fence
//! u64 remaining   microseconds left at encoding
//! u64 held        microseconds since the grant at encoding
//! u64 extensions
//! u16 owner length (1..=256), then the owner bytes
//! ```

use crate::lock::{Lock, Micros, Token, MAX_FENCE, MAX_TOKEN_LEN};
use std::fmt;

/// The encoding written by this build. Also the module type's encoding
/// version, so a server refuses RDB files from a newer module.
pub const VERSION: u8 = 1;

const HEADER_LEN: usize = 1 + 8 * 4 + 2;

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
    let owner = lock.owner.get(..MAX_TOKEN_LEN).unwrap_or(&lock.owner);
    let mut out = Vec::with_capacity(HEADER_LEN + owner.len());
    out.push(VERSION);
    out.extend_from_slice(&lock.fence.to_le_bytes());
    out.extend_from_slice(&lock.remaining(now).to_le_bytes());
    out.extend_from_slice(&lock.held_for(now).to_le_bytes());
    out.extend_from_slice(&lock.extensions.to_le_bytes());
    // The owner is at most 256 bytes (checked on input), so this never truncates.
    out.extend_from_slice(&(owner.len() as u16).to_le_bytes());
    out.extend_from_slice(owner);
    out
}

pub fn decode(bytes: &[u8], now: Micros) -> Result<Lock, DecodeError> {
    let mut r = Reader(bytes);
    match r.u8()? {
        1 => {}
        v => return Err(DecodeError::UnknownVersion(v)),
    }
    let fence = r.u64()?;
    let remaining = r.u64()?;
    let held = r.u64()?;
    let extensions = r.u64()?;
    let owner_len = usize::from(r.u16()?);
    if owner_len == 0 || owner_len > MAX_TOKEN_LEN {
        return Err(DecodeError::BadOwnerLength(owner_len));
    }
    if fence == 0 || fence > MAX_FENCE {
        return Err(DecodeError::BadFence(fence));
    }
    let owner = Token::from_slice(r.take(owner_len)?);
    if !r.0.is_empty() {
        return Err(DecodeError::TrailingBytes);
    }
    Ok(Lock {
        owner,
        fence,
        deadline: now.saturating_add(remaining),
        acquired_at: now.saturating_sub(held),
        extensions,
    })
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
        Lock {
            owner: b"owner-token"[..].into(),
            fence: 42,
            deadline: 10_000_000,
            acquired_at: 4_000_000,
            extensions: 3,
        }
    }

    /// The committed fixture of version 1: changing the encoding without a
    /// new version breaks this test.
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
    fn version_1_fixture_is_stable() {
        assert_eq!(hex(&encode(&sample(), 8_000_000)), FIXTURE_V1);
        let decoded = decode(&unhex(FIXTURE_V1), 100_000_000).unwrap();
        assert_eq!(decoded.owner.as_slice(), b"owner-token");
        assert_eq!(decoded.fence, 42);
        assert_eq!(decoded.deadline, 102_000_000);
        assert_eq!(decoded.acquired_at, 96_000_000);
        assert_eq!(decoded.extensions, 3);
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
        let good = unhex(FIXTURE_V1);
        assert_eq!(decode(&[], 0), Err(DecodeError::Empty));
        assert_eq!(decode(&[2], 0), Err(DecodeError::UnknownVersion(2)));
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
        let mut zero_owner = good[..HEADER_LEN].to_vec();
        zero_owner[HEADER_LEN - 2] = 0;
        zero_owner[HEADER_LEN - 1] = 0;
        assert_eq!(decode(&zero_owner, 0), Err(DecodeError::BadOwnerLength(0)));
        let mut huge_owner = good.clone();
        huge_owner[HEADER_LEN - 2] = 0x01;
        huge_owner[HEADER_LEN - 1] = 0x01;
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
                      now in u64::MAX / 2..u64::MAX / 2 + 1_000_000) {
            let lock = Lock {
                owner: owner.into(),
                fence,
                deadline: now + remaining,
                acquired_at: now - held,
                extensions,
            };
            prop_assert_eq!(decode(&encode(&lock, now), now), Ok(lock));
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&bytes, 1_000);
        }
    }
}
