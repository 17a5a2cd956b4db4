//! One error type for the whole client, with predicates, and the per-node
//! errors it carries.

use std::fmt;
use std::time::Duration;

/// Why a held lock stopped being held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LossReason {
    /// The validity ran out before a renewal reached a quorum (nodes down,
    /// slow or unreachable).
    Expired,
    /// A quorum of nodes answered that our token no longer holds the lock
    /// there (it expired on the nodes, was deleted, or another holder took
    /// it).
    NotHeld,
    /// Renewal stopped at the configured maximum hold time and the lease
    /// then ran out.
    MaxHold,
    /// The nodes still hold the lock for our token but refuse to extend it:
    /// their hold limit (`MAXHOLD` at acquisition, or `lock.max-hold-ms`)
    /// is reached (`LOCK.EXTEND` replied -1). The lock runs out at its
    /// current deadline.
    HoldLimit,
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LossReason::Expired => "its validity ran out before a renewal reached a quorum",
            LossReason::NotHeld => "a quorum of nodes no longer holds it for this token",
            LossReason::MaxHold => "the maximum hold time was reached",
            LossReason::HoldLimit => {
                "the nodes' hold limit (MAXHOLD / lock.max-hold-ms) was reached; they refuse to extend it"
            }
        })
    }
}

/// What went wrong on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeErrorKind {
    /// Could not connect (refused, unreachable, DNS, TLS).
    Connect,
    /// The connection or the request timed out.
    Timeout,
    /// Authentication failed (`WRONGPASS`, `NOAUTH`): a wrong user or
    /// password.
    Auth,
    /// The user is known but an ACL denies it this command or key
    /// (`NOPERM`); the message names the command, the key and the user.
    Permission,
    /// The node refuses new grants for a while (`TRYAGAIN`: its rejoin
    /// delay after a restart without data, or its promotion delay);
    /// [`NodeError::retry_after`] says how long.
    Refusing,
    /// The node rejected the request itself (`ERR invalid ...`): an
    /// argument outside the node's limits, as a TTL above its
    /// `lock.max-ttl-ms`. Sending it again will not help.
    Rejected,
    /// The node does not know the `LOCK.*` commands: the module is not loaded.
    ModuleNotLoaded,
    /// The node answered with an error (`ERR`, `WRONGTYPE`, `READONLY`, `OOM`, ...).
    Server,
    /// The node answered something the client does not understand.
    Protocol,
    /// The connection broke.
    Io,
}

/// An error from one node, as part of a round.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeError {
    /// The node's position in the configured list.
    pub node: usize,
    /// `host:port` of the node (never its credentials).
    pub addr: String,
    /// What kind of failure.
    pub kind: NodeErrorKind,
    /// The server's error code (`ERR`, `WRONGTYPE`, ...) when it sent one.
    pub code: Option<String>,
    /// A readable description.
    pub message: String,
    /// Whether the request may have reached the node. False when no
    /// connection could be made for it: such a node cannot hold anything
    /// the request asked for, so it needs no release.
    pub(crate) sent: bool,
    /// For [`NodeErrorKind::Refusing`]: how long the node said it will
    /// refuse new grants.
    pub retry_after: Option<Duration>,
}

impl NodeError {
    pub(crate) fn new(node: usize, addr: &str, kind: NodeErrorKind, message: String) -> Self {
        NodeError {
            node,
            addr: addr.to_owned(),
            kind,
            code: None,
            message,
            sent: true,
            retry_after: None,
        }
    }

    /// The message with every occurrence of `secret` (a token) replaced:
    /// servers echo a command's arguments in some errors.
    pub(crate) fn redact(mut self, secret: &str) -> Self {
        if !secret.is_empty() && self.message.contains(secret) {
            self.message = self.message.replace(secret, "(token)");
        }
        self
    }

    /// A permission error names the request it refused: `what` (a command)
    /// and `key` (if any).
    pub(crate) fn about(mut self, what: &str, key: &str) -> Self {
        if self.kind == NodeErrorKind::Permission {
            self.message = if key.is_empty() {
                format!("{what}: {}", self.message)
            } else {
                format!("{what} on key {key:?}: {}", self.message)
            };
        }
        self
    }

    /// Marks the request as never sent (see [`NodeError::may_have_reached`]).
    pub(crate) fn unsent(mut self) -> Self {
        self.sent = false;
        self
    }

    /// Whether the request may have reached the node (false: no connection
    /// could be made for it, so the node cannot have acted on it).
    pub fn may_have_reached(&self) -> bool {
        self.sent
    }

    pub(crate) fn with_code(mut self, code: Option<String>) -> Self {
        self.code = code;
        self
    }

    pub fn is_timeout(&self) -> bool {
        self.kind == NodeErrorKind::Timeout
    }

    pub fn is_connect(&self) -> bool {
        self.kind == NodeErrorKind::Connect
    }

    pub fn is_auth(&self) -> bool {
        self.kind == NodeErrorKind::Auth
    }

    pub fn is_module_not_loaded(&self) -> bool {
        self.kind == NodeErrorKind::ModuleNotLoaded
    }

    pub fn is_permission(&self) -> bool {
        self.kind == NodeErrorKind::Permission
    }

    /// The node refuses new grants for a while (`TRYAGAIN`).
    pub fn is_refusing(&self) -> bool {
        self.kind == NodeErrorKind::Refusing
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            NodeErrorKind::Connect => "cannot connect",
            NodeErrorKind::Timeout => "timed out",
            NodeErrorKind::Auth => "authentication failed",
            NodeErrorKind::Permission => "permission denied",
            NodeErrorKind::Refusing => "refusing new grants",
            NodeErrorKind::Rejected => "request rejected",
            NodeErrorKind::ModuleNotLoaded => "module not loaded",
            NodeErrorKind::Server => "server error",
            NodeErrorKind::Protocol => "unexpected reply",
            NodeErrorKind::Io => "connection broken",
        };
        write!(
            f,
            "node {} ({}): {what}: {}",
            self.node, self.addr, self.message
        )
    }
}

impl std::error::Error for NodeError {}

/// Every error of the client.
///
/// Match on the variant, or ask the predicates: [`Error::is_taken`],
/// [`Error::is_unreachable`], [`Error::is_timeout`], [`Error::is_expired`],
/// [`Error::is_lost`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Error {
    /// The configuration was rejected; nothing was sent.
    #[non_exhaustive]
    Config { reason: String },
    /// An argument of the call was rejected (an empty resource, a TTL too
    /// short to leave any validity); nothing was sent.
    #[non_exhaustive]
    InvalidArgument { reason: String },
    /// Another holder has the lock: enough nodes refused that a quorum was
    /// out of reach.
    #[non_exhaustive]
    Taken {
        resource: String,
        /// How many nodes said the lock is held by another token.
        held_elsewhere: usize,
        /// How many nodes granted it to us (released again at once).
        granted: usize,
        quorum: usize,
        nodes: usize,
        /// Nodes that failed in the same round.
        node_errors: Vec<NodeError>,
    },
    /// Too few nodes answered to make up a quorum.
    #[non_exhaustive]
    Unreachable {
        resource: String,
        /// How many nodes gave a usable answer.
        answered: usize,
        quorum: usize,
        nodes: usize,
        /// Why the others did not.
        node_errors: Vec<NodeError>,
    },
    /// Too few nodes accept new grants: enough of them refuse for a while
    /// (`TRYAGAIN`, their rejoin or promotion delay) that no quorum can
    /// grant for `retry_after` at least. Not [`Error::is_unreachable`]:
    /// the nodes are up, and retrying sooner cannot succeed.
    #[non_exhaustive]
    Refused {
        resource: String,
        /// How long until enough nodes may accept grants for a quorum.
        retry_after: Duration,
        quorum: usize,
        nodes: usize,
        /// Every node error of the round, the refusals among them.
        node_errors: Vec<NodeError>,
    },
    /// A token handed over from elsewhere ([`crate::Client::extend_token`],
    /// [`crate::Client::release_token`]) does not hold the lock on a
    /// quorum: so many nodes answered "not held by this token" that a
    /// quorum cannot hold it.
    #[non_exhaustive]
    NotHeld {
        resource: String,
        /// Nodes where the token held it.
        held: usize,
        /// Nodes where it did not.
        not_held: usize,
        quorum: usize,
        nodes: usize,
        node_errors: Vec<NodeError>,
    },
    /// The caller's wait budget ran out; `last` is the error of the last
    /// round.
    #[non_exhaustive]
    Timeout {
        resource: String,
        waited: Duration,
        attempts: u32,
        last: Box<Error>,
    },
    /// A quorum granted the lock, but the round took so long that no
    /// validity was left (elapsed + drift >= TTL); the grants were released.
    #[non_exhaustive]
    NoValidityLeft {
        resource: String,
        ttl: Duration,
        elapsed: Duration,
    },
    /// The lease had already expired (by the client's monotonic clock), or
    /// ran out while the operation was under way.
    #[non_exhaustive]
    Expired { resource: String },
    /// The lock was lost while held.
    #[non_exhaustive]
    Lost {
        resource: String,
        reason: LossReason,
    },
    /// The runtime could not be used (a blocking call inside an async
    /// runtime, no runtime to spawn on, no OS randomness).
    #[non_exhaustive]
    Runtime { reason: String },
}

impl Error {
    pub(crate) fn config(reason: impl Into<String>) -> Self {
        Error::Config {
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            reason: reason.into(),
        }
    }

    pub(crate) fn runtime(reason: impl Into<String>) -> Self {
        Error::Runtime {
            reason: reason.into(),
        }
    }

    /// Another holder has the lock (also when the wait budget ran out while
    /// it was held).
    pub fn is_taken(&self) -> bool {
        match self {
            Error::Taken { .. } => true,
            Error::Timeout { last, .. } => last.is_taken(),
            _ => false,
        }
    }

    /// Not enough nodes could be reached (also when the wait budget ran out
    /// for that reason).
    pub fn is_unreachable(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Timeout { last, .. } => last.is_unreachable(),
            _ => false,
        }
    }

    /// The wait budget ran out, or a round took longer than the TTL allowed
    /// (tell them apart with [`Error::is_wait_exhausted`] and
    /// [`Error::is_no_validity_left`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. } | Error::NoValidityLeft { .. })
    }

    /// The caller's wait budget was spent without a lease.
    pub fn is_wait_exhausted(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }

    /// A quorum granted, but too late for the lease to have any validity
    /// left (the grants were released).
    pub fn is_no_validity_left(&self) -> bool {
        match self {
            Error::NoValidityLeft { .. } => true,
            Error::Timeout { last, .. } => last.is_no_validity_left(),
            _ => false,
        }
    }

    /// Too few nodes accept new grants for now (`TRYAGAIN`); see
    /// [`Error::retry_after`].
    pub fn is_refused(&self) -> bool {
        match self {
            Error::Refused { .. } => true,
            Error::Timeout { last, .. } => last.is_refused(),
            _ => false,
        }
    }

    /// For [`Error::Refused`]: how long until a quorum may accept grants.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Refused { retry_after, .. } => Some(*retry_after),
            Error::Timeout { last, .. } => last.retry_after(),
            _ => None,
        }
    }

    /// The lease had expired before or during the operation.
    pub fn is_expired(&self) -> bool {
        matches!(self, Error::Expired { .. })
    }

    /// The token does not hold the lock on a quorum ([`Error::NotHeld`]).
    pub fn is_not_held(&self) -> bool {
        matches!(self, Error::NotHeld { .. })
    }

    /// The lock was lost while held (see [`LossReason`]).
    pub fn is_lost(&self) -> bool {
        matches!(self, Error::Lost { .. })
    }

    /// The configuration or an argument was rejected.
    pub fn is_invalid(&self) -> bool {
        matches!(self, Error::Config { .. } | Error::InvalidArgument { .. })
    }

    /// Why the loss happened, for [`Error::Lost`].
    pub fn loss_reason(&self) -> Option<LossReason> {
        match self {
            Error::Lost { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// How many nodes said the lock is held by someone else.
    pub fn held_elsewhere(&self) -> Option<usize> {
        match self {
            Error::Taken { held_elsewhere, .. } => Some(*held_elsewhere),
            Error::Timeout { last, .. } => last.held_elsewhere(),
            _ => None,
        }
    }

    /// The per-node errors of the (last) round.
    pub fn node_errors(&self) -> &[NodeError] {
        match self {
            Error::Taken { node_errors, .. }
            | Error::Unreachable { node_errors, .. }
            | Error::Refused { node_errors, .. }
            | Error::NotHeld { node_errors, .. } => node_errors,
            Error::Timeout { last, .. } => last.node_errors(),
            _ => &[],
        }
    }
}

/// A duration as messages show it: `850ms`, `4.99s`, `2m05s`, `1h30m`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let centis = (ms % 1_000) / 10;
        if centis == 0 {
            format!("{}s", ms / 1_000)
        } else {
            let fraction = format!("{centis:02}");
            format!("{}.{}s", ms / 1_000, fraction.trim_end_matches('0'))
        }
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1_000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

fn write_node_errors(f: &mut fmt::Formatter<'_>, errors: &[NodeError]) -> fmt::Result {
    for e in errors {
        write!(f, "; {e}")?;
    }
    Ok(())
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { reason } => write!(f, "invalid configuration: {reason}"),
            Error::InvalidArgument { reason } => write!(f, "invalid argument: {reason}"),
            Error::Taken {
                resource,
                held_elsewhere,
                granted,
                quorum,
                nodes,
                node_errors,
            } => {
                write!(
                    f,
                    "lock {resource:?} is held by another token on {held_elsewhere} of {nodes} nodes \
                     (granted by {granted}, {quorum} needed)"
                )?;
                write_node_errors(f, node_errors)
            }
            Error::Unreachable {
                resource,
                answered,
                quorum,
                nodes,
                node_errors,
            } => {
                write!(
                    f,
                    "not enough nodes reachable for {resource:?}: {answered} of {nodes} answered, {quorum} needed"
                )?;
                write_node_errors(f, node_errors)
            }
            Error::NotHeld {
                resource,
                held,
                not_held,
                quorum,
                nodes,
                node_errors,
            } => {
                write!(
                    f,
                    "this token does not hold the lock {resource:?} on a quorum: held on {held}, \
                     not held on {not_held} of {nodes} nodes ({quorum} needed)"
                )?;
                write_node_errors(f, node_errors)
            }
            Error::Refused {
                resource,
                retry_after,
                quorum,
                nodes,
                node_errors,
            } => {
                write!(
                    f,
                    "too few nodes accept new grants for {resource:?}: {quorum} of {nodes} needed, \
                     possible again in {}",
                    human_duration(*retry_after)
                )?;
                write_node_errors(f, node_errors)
            }
            Error::Timeout {
                resource,
                waited,
                attempts,
                last,
            } => {
                // `last` names the resource already.
                let _ = resource;
                let rounds = if *attempts == 1 { "round" } else { "rounds" };
                write!(
                    f,
                    "{last} (gave up after waiting {}, {attempts} {rounds})",
                    human_duration(*waited)
                )
            }
            Error::NoValidityLeft {
                resource,
                ttl,
                elapsed,
            } => write!(
                f,
                "lock {resource:?} was granted too late: {} elapsed of a {} TTL left no validity",
                human_duration(*elapsed),
                human_duration(*ttl)
            ),
            Error::Expired { resource } => write!(f, "the lease on {resource:?} has expired"),
            Error::Lost { resource, reason } => write!(f, "lock {resource:?} was lost: {reason}"),
            Error::Runtime { reason } => write!(f, "runtime error: {reason}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Timeout { last, .. } => Some(last.as_ref()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken() -> Error {
        Error::Taken {
            resource: "r".into(),
            held_elsewhere: 3,
            granted: 1,
            quorum: 3,
            nodes: 5,
            node_errors: vec![],
        }
    }

    fn unreachable() -> Error {
        Error::Unreachable {
            resource: "r".into(),
            answered: 2,
            quorum: 3,
            nodes: 5,
            node_errors: vec![NodeError::new(
                4,
                "127.0.0.1:1",
                NodeErrorKind::ModuleNotLoaded,
                "unknown command 'LOCK.ACQUIRE'".into(),
            )],
        }
    }

    #[test]
    fn predicates_table() {
        let timeout_taken = Error::Timeout {
            resource: "r".into(),
            waited: Duration::from_secs(1),
            attempts: 4,
            last: Box::new(taken()),
        };
        let cases: Vec<(Error, [bool; 5])> = vec![
            // taken, unreachable, timeout, expired, lost
            (taken(), [true, false, false, false, false]),
            (unreachable(), [false, true, false, false, false]),
            (timeout_taken, [true, false, true, false, false]),
            (
                Error::Expired {
                    resource: "r".into(),
                },
                [false, false, false, true, false],
            ),
            (
                Error::Lost {
                    resource: "r".into(),
                    reason: LossReason::NotHeld,
                },
                [false, false, false, false, true],
            ),
            (
                Error::NoValidityLeft {
                    resource: "r".into(),
                    ttl: Duration::from_millis(10),
                    elapsed: Duration::from_millis(20),
                },
                [false, false, true, false, false],
            ),
            (Error::config("x"), [false, false, false, false, false]),
        ];
        for (e, [t, u, ti, ex, l]) in cases {
            assert_eq!(
                [
                    e.is_taken(),
                    e.is_unreachable(),
                    e.is_timeout(),
                    e.is_expired(),
                    e.is_lost()
                ],
                [t, u, ti, ex, l],
                "{e}"
            );
        }
    }

    #[test]
    fn messages_name_the_cause() {
        let text = unreachable().to_string();
        assert!(text.contains("2 of 5 answered, 3 needed"), "{text}");
        assert!(text.contains("module not loaded"), "{text}");
        assert!(taken().to_string().contains("3 of 5 nodes"));
        assert_eq!(taken().held_elsewhere(), Some(3));
    }
}
