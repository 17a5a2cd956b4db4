//! The token that identifies a holder, and the lease a successful acquisition
//! returns.

use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::OsRng;
use rand::TryRngCore;

use crate::error::Error;

/// Random bytes in a generated token (hex-encoded: twice as many characters).
pub const TOKEN_BYTES: usize = 20;
/// Longest token the module accepts, in bytes.
pub const MAX_TOKEN_LEN: usize = 256;

/// The holder's secret: whoever knows it can extend and release the lock.
/// Its `Debug` form shows only a prefix.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Token(String);

impl Token {
    /// 20 bytes from the operating system's CSPRNG, hex-encoded.
    pub fn random() -> Result<Token, Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| Error::runtime(format!("no randomness from the OS: {e}")))?;
        let mut hex = String::with_capacity(TOKEN_BYTES * 2);
        for b in bytes {
            hex.push_str(&format!("{b:02x}"));
        }
        Ok(Token(hex))
    }

    /// A token chosen by the caller, for instance to retry an acquisition
    /// whose reply was lost, or to take over a lease from another process.
    pub fn new(token: impl Into<String>) -> Result<Token, Error> {
        let token = token.into();
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(Error::invalid(format!(
                "a token must have 1 to {MAX_TOKEN_LEN} bytes, not {}",
                token.len()
            )));
        }
        Ok(Token(token))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.0.chars().take(6).collect();
        write!(f, "Token({prefix}…)")
    }
}

/// A lock held on a quorum of nodes, until [`Lease::valid_until`].
///
/// A plain value: dropping it does nothing (the lock runs out at its TTL);
/// release it with [`crate::Client::release`], or use
/// [`crate::Client::lock`] / [`crate::Client::with_lock`] for a guard that
/// renews and releases by itself.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Lease {
    pub(crate) resource: String,
    pub(crate) token: Token,
    pub(crate) fence: u64,
    pub(crate) acquired_at: Instant,
    pub(crate) renewed_at: Instant,
    pub(crate) valid_until: Instant,
    pub(crate) ttl: Duration,
    pub(crate) nodes: Vec<usize>,
}

impl Lease {
    /// The locked resource (the key on every node).
    pub fn resource(&self) -> &str {
        &self.resource
    }

    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The fencing token: pass it to the protected resource, which must
    /// refuse a write carrying a smaller fence than one it has seen.
    ///
    /// With fenced acquisition (the default) a quorum of nodes held it
    /// before the lease was handed out, so a lease granted after this one
    /// ended has a greater fence, whichever majority granted it. Unfenced
    /// (`Config::builder(..).fenced(false)`), it is only the largest of the
    /// granting nodes' fences: monotonic per node, not across the set.
    /// Extension keeps it.
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// When the first request of the winning round was sent.
    pub fn acquired_at(&self) -> Instant {
        self.acquired_at
    }

    /// When the round that last set the validity (acquisition or extension)
    /// began.
    pub fn renewed_at(&self) -> Instant {
        self.renewed_at
    }

    /// Until when the lock may be relied on: start of the round + TTL −
    /// drift, by the client's monotonic clock.
    pub fn valid_until(&self) -> Instant {
        self.valid_until
    }

    /// The validity left now (zero once expired).
    pub fn remaining(&self) -> Duration {
        self.valid_until.saturating_duration_since(Instant::now())
    }

    pub fn is_valid(&self) -> bool {
        Instant::now() < self.valid_until
    }

    /// The TTL of the last acquisition or extension.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The nodes (indexes in the configured list) that granted the last
    /// acquisition (fenced: that hold its fence) or extension.
    pub fn nodes(&self) -> &[usize] {
        &self.nodes
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn random_tokens_are_long_hex_and_distinct() {
        let a = Token::random().unwrap();
        let b = Token::random().unwrap();
        assert_eq!(a.as_str().len(), 2 * TOKEN_BYTES);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn debug_hides_the_token() {
        let t = Token::random().unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains(t.as_str()), "{shown}");
    }

    #[test]
    fn caller_tokens_are_checked() {
        assert!(Token::new("").unwrap_err().is_invalid());
        assert!(Token::new("x".repeat(MAX_TOKEN_LEN + 1))
            .unwrap_err()
            .is_invalid());
        assert_eq!(Token::new("abc").unwrap().as_str(), "abc");
    }
}
