//! Exit statuses: what each failure means to a calling script.
//!
//! The numbers follow `sysexits.h` where one fits (64 usage, 69 unavailable,
//! 70 internal, 75 temporary failure, 78 configuration) and the shells'
//! conventions for a command (126, 127, 128+signal). `run` passes its
//! command's status through, so a script that must tell them apart should
//! keep its own command off these numbers.

use std::process::ExitStatus;

use redis_lock_client::{Error, NodeErrorKind};

/// Success; for `run`, the command's own status is passed through instead.
pub const OK: u8 = 0;
/// `extend`, `release`: the token does not hold the lock on a quorum.
pub const NOT_HELD: u8 = 1;
/// `status`: some node is unhealthy, but a quorum is healthy.
pub const DEGRADED: u8 = 1;
/// Bad flag, duration, node URL or setting.
pub const USAGE: u8 = 64;
/// Fewer than a quorum of nodes answered (down, timed out), or accept
/// grants (their rejoin or promotion delay).
pub const UNAVAILABLE: u8 = 69;
/// A bug or an OS failure (no runtime, no signals).
pub const INTERNAL: u8 = 70;
/// The lock was held by another until `--wait` ran out.
pub const NOT_ACQUIRED: u8 = 75;
/// `run`: the lock was lost while the command ran; the command was stopped.
pub const LOST: u8 = 76;
/// A node is reachable but unusable: the module is not loaded, or
/// authentication or an ACL refused us.
pub const MISCONFIGURED: u8 = 78;
/// `run`: the command exists but could not be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// `run`: the command was not found.
pub const NOT_FOUND: u8 = 127;

/// The table shown in `--help` and kept in step with the constants above.
pub const TABLE: &str = "\
Exit status:
  0        success (run: the command's own exit status is passed through)
  1        extend/release: the token does not hold the lock on a quorum;
           status/info: some node is unhealthy or did not answer, but a
           quorum is fine
  64       usage: bad flag, duration, node URL or setting
  69       fewer than a quorum of nodes reachable, or accepting grants
           (a node's rejoin or promotion delay: the time left is shown)
  70       internal error
  75       not acquired: the lock was held by another until --wait ran out
  76       run: the lock was lost while the command ran; it was stopped
  78       a node refused us: module not loaded, authentication failed
           (user or password) or permission denied (ACL)
  126/127  run: the command could not be executed / was not found
  128+N    run: the command was killed by signal N";

/// What kind of failure happened, independent of where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Usage,
    Taken,
    Unavailable,
    Misconfigured,
    NotHeld,
    Lost,
    Internal,
}

impl Failure {
    pub fn code(self) -> u8 {
        match self {
            Failure::Usage => USAGE,
            Failure::Taken => NOT_ACQUIRED,
            Failure::Unavailable => UNAVAILABLE,
            Failure::Misconfigured => MISCONFIGURED,
            Failure::NotHeld => NOT_HELD,
            Failure::Lost => LOST,
            Failure::Internal => INTERNAL,
        }
    }

    /// Nodes failed this way: misconfiguration wins over a plain outage,
    /// since retrying will not fix it.
    pub fn from_node_kinds(kinds: impl IntoIterator<Item = NodeErrorKind>) -> Failure {
        if kinds.into_iter().any(|k| {
            matches!(
                k,
                NodeErrorKind::Auth | NodeErrorKind::Permission | NodeErrorKind::ModuleNotLoaded
            )
        }) {
            Failure::Misconfigured
        } else {
            Failure::Unavailable
        }
    }
}

/// Classifies an error of the quorum client.
pub fn classify(e: &Error) -> Failure {
    if e.is_invalid() {
        Failure::Usage
    } else if e.is_unreachable() {
        // Also when the wait ran out with the nodes still unreachable.
        Failure::from_node_kinds(e.node_errors().iter().map(|n| n.kind))
    } else if e.is_refused() {
        // Nodes up but refusing grants for a while (rejoin or promotion
        // delay): a quorum is not available.
        Failure::Unavailable
    } else if e.is_not_held() {
        Failure::NotHeld
    } else if e.is_taken() || e.is_timeout() {
        // Held by another, or every round came too late to leave validity:
        // either way, not acquired in time.
        Failure::Taken
    } else if e.is_lost() || e.is_expired() {
        Failure::Lost
    } else {
        Failure::Internal
    }
}

/// The status to exit with for a command that ended with `status`: its code,
/// or 128 + the signal that killed it (as shells report it).
pub fn for_child(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(INTERNAL),
        (None, Some(signal)) => u8::try_from(128 + (signal & 0x7f)).unwrap_or(INTERNAL),
        (None, None) => INTERNAL,
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn failures_have_distinct_codes() {
        let all = [
            Failure::Usage,
            Failure::Taken,
            Failure::Unavailable,
            Failure::Misconfigured,
            Failure::NotHeld,
            Failure::Lost,
            Failure::Internal,
        ];
        let mut codes: Vec<u8> = all.iter().map(|f| f.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        assert_eq!(
            Failure::Taken.code(),
            75,
            "the issue fixes 75 for 'not acquired'"
        );
        for code in codes {
            assert!(
                code != OK && code < 126,
                "{code} collides with shell conventions"
            );
            assert!(
                TABLE.contains(&format!("\n  {code} ")),
                "{code} missing from the help table"
            );
        }
    }

    #[test]
    fn node_kinds_decide_between_outage_and_misconfiguration() {
        use NodeErrorKind::*;
        let cases: [(&[NodeErrorKind], Failure); 5] = [
            (&[Connect, Timeout], Failure::Unavailable),
            (&[Io], Failure::Unavailable),
            (&[Connect, ModuleNotLoaded], Failure::Misconfigured),
            (&[Auth], Failure::Misconfigured),
            (&[], Failure::Unavailable),
        ];
        for (kinds, want) in cases {
            assert_eq!(
                Failure::from_node_kinds(kinds.iter().copied()),
                want,
                "{kinds:?}"
            );
        }
    }

    #[test]
    fn client_errors_we_can_build_are_classified() {
        let config = redis_lock_client::Config::builder("not a url")
            .build()
            .unwrap_err();
        assert_eq!(classify(&config), Failure::Usage);
        let token = redis_lock_client::Token::new("").unwrap_err();
        assert_eq!(classify(&token), Failure::Usage);
    }

    #[test]
    fn child_status_is_passed_through_or_mapped_from_the_signal() {
        // Raw wait statuses: exit code in the high byte, signal in the low bits.
        let cases = [
            (0, 0),
            (7 << 8, 7),
            (255 << 8, 255),
            (libc::SIGTERM, 143),
            (libc::SIGKILL, 137),
            (libc::SIGINT, 130),
        ];
        for (raw, want) in cases {
            assert_eq!(for_child(ExitStatus::from_raw(raw)), want, "raw {raw:#x}");
        }
    }
}
