//! One acquisition round as pure bookkeeping: each node's answer as it
//! comes in -> decided or not, which nodes may hold our token (and so need
//! a release if the round is lost), and the error a lost round returns.
//! No IO: tested against a fake node set, answers in every order.

use std::time::Duration;

use crate::error::{Error, NodeError, NodeErrorKind};
use crate::nodeset::NodeMask;
use crate::quorum::{Decision, Tally, Vote};

/// The answers of one round so far.
pub(crate) struct Round {
    tally: Tally,
    /// (node, fence) of every grant, in node order.
    granted: Vec<(usize, u64)>,
    /// Nodes that may hold our token: all but those that said another
    /// holds it, and those the request never reached.
    may_hold: NodeMask,
    errors: Vec<NodeError>,
}

impl Round {
    pub(crate) fn new(nodes: usize, quorum: usize) -> Round {
        Round {
            tally: Tally::new(nodes, quorum),
            granted: Vec::new(),
            may_hold: NodeMask::all(nodes),
            errors: Vec::new(),
        }
    }

    /// Records node `i`'s answer (its fence, `None` if another holds the
    /// lock, or its error); the decision so far.
    pub(crate) fn note(
        &mut self,
        i: usize,
        answer: Result<Option<u64>, NodeError>,
    ) -> Option<Decision> {
        match answer {
            Ok(Some(fence)) => {
                self.tally.record(Vote::Granted(fence));
                let at = self.granted.partition_point(|(j, _)| *j < i);
                self.granted.insert(at, (i, fence));
            }
            Ok(None) => {
                self.tally.record(Vote::Refused);
                self.may_hold.remove(i);
            }
            Err(e) => {
                tracing::debug!(error = %e, "node failed");
                self.tally.record(Vote::Failed);
                // Never connected: the request did not go out, so there is
                // nothing to release there.
                if !e.may_have_reached() {
                    self.may_hold.remove(i);
                }
                self.errors.push(e);
            }
        }
        self.tally.decision()
    }

    pub(crate) fn decision(&self) -> Option<Decision> {
        self.tally.decision()
    }

    pub(crate) fn tally(&self) -> &Tally {
        &self.tally
    }

    pub(crate) fn granted(&self) -> Vec<(usize, u64)> {
        self.granted.clone()
    }

    pub(crate) fn may_hold(&self) -> NodeMask {
        self.may_hold
    }

    /// Whether a lost round must release: a node granted, failed (its grant
    /// may have landed) or has not answered.
    pub(crate) fn needs_release(&self) -> bool {
        self.tally.granted() > 0 || self.tally.failed() > 0 || self.tally.pending() > 0
    }

    pub(crate) fn into_errors(self) -> Vec<NodeError> {
        self.errors
    }

    /// The error of a round that was not won.
    pub(crate) fn error(self, resource: &str) -> Error {
        let short = self.tally.failed_beyond_spare();
        not_won(
            resource,
            &self.tally,
            self.tally.nodes(),
            short,
            self.errors,
        )
    }
}

/// What a round that was not won amounts to: too few answers when
/// `short` (more nodes failed than the quorum can spare in a plain round,
/// any failed to confirm in a raise), taken otherwise.
pub(crate) fn not_won(
    resource: &str,
    t: &Tally,
    nodes: usize,
    short: bool,
    node_errors: Vec<NodeError>,
) -> Error {
    if short {
        too_few_answers(
            resource,
            t.granted() + t.refused(),
            (t.quorum(), nodes),
            node_errors,
        )
    } else {
        Error::Taken {
            resource: resource.to_owned(),
            held_elsewhere: t.refused(),
            granted: t.granted(),
            quorum: t.quorum(),
            nodes,
            node_errors,
        }
    }
}

/// Why fewer than a quorum of nodes gave a usable answer: a request the
/// nodes reject (a TTL above their limit) is the caller's mistake; nodes
/// refusing grants for a while (`TRYAGAIN`) are not unreachable, and say
/// when a quorum may grant again; otherwise the nodes are unreachable.
pub(crate) fn too_few_answers(
    resource: &str,
    answered: usize,
    (quorum, nodes): (usize, usize),
    node_errors: Vec<NodeError>,
) -> Error {
    if let Some(rejected) = node_errors
        .iter()
        .find(|e| e.kind == NodeErrorKind::Rejected)
    {
        return Error::invalid(rejected_reason(rejected));
    }
    // A quorum needs this many more nodes than answered; the refusing
    // nodes come back in the order of their time left.
    let missing = quorum.saturating_sub(answered);
    let mut waits: Vec<Duration> = node_errors
        .iter()
        .filter_map(|e| e.retry_after.filter(|_| e.is_refusing()))
        .collect();
    waits.sort_unstable();
    match waits.get(missing.wrapping_sub(1)) {
        Some(&retry_after) if missing > 0 => Error::Refused {
            resource: resource.to_owned(),
            retry_after,
            quorum,
            nodes,
            node_errors,
        },
        _ => Error::Unreachable {
            resource: resource.to_owned(),
            answered,
            quorum,
            nodes,
            node_errors,
        },
    }
}

/// A request the nodes rejected, in one line, naming their limit.
fn rejected_reason(e: &NodeError) -> String {
    let limit = e
        .message
        .contains("lock.max-ttl-ms")
        .then(|| {
            e.message
                .split(" to ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .flatten();
    match limit {
        Some(ms) => format!(
            "the TTL is above the nodes' limit, lock.max-ttl-ms = {ms} ({}); node {} said: {}",
            crate::error::human_duration(Duration::from_millis(ms)),
            e.addr,
            e.message
        ),
        None => format!("node {} rejected the request: {}", e.addr, e.message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What one node of the fake node set answers.
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        Grant(u64),
        Refuse,
        Fail { sent: bool },
    }

    fn answer() -> impl Strategy<Value = Answer> {
        prop_oneof![
            (1u64..1000).prop_map(Answer::Grant),
            Just(Answer::Refuse),
            any::<bool>().prop_map(|sent| Answer::Fail { sent }),
        ]
    }

    fn reply(i: usize, a: Answer) -> Result<Option<u64>, NodeError> {
        match a {
            Answer::Grant(f) => Ok(Some(f)),
            Answer::Refuse => Ok(None),
            Answer::Fail { sent } => {
                let e = NodeError::new(i, "fake:1", NodeErrorKind::Connect, "down".into());
                Err(if sent { e } else { e.unsent() })
            }
        }
    }

    proptest! {
        #[test]
        fn a_round_decides_releases_and_fails_as_its_answers_say(
            answers in prop::collection::vec(answer(), 1..8),
            order_seed in any::<u64>(),
        ) {
            let n = answers.len();
            let quorum = n / 2 + 1;
            // The answers arrive in some order.
            let mut order: Vec<usize> = (0..n).collect();
            let mut seed = order_seed;
            for k in (1..n).rev() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(k, usize::try_from(seed >> 33).unwrap() % (k + 1));
            }
            let mut round = Round::new(n, quorum);
            let (mut grants, mut others) = (0, 0);
            let mut decided = None;
            for &i in &order {
                let got = round.note(i, reply(i, answers[i]));
                match answers[i] {
                    Answer::Grant(_) => grants += 1,
                    _ => others += 1,
                }
                let want = if grants >= quorum {
                    Some(Decision::Won)
                } else if others > n - quorum {
                    Some(Decision::Lost)
                } else {
                    None
                };
                prop_assert_eq!(got, want);
                if got.is_some() { decided = got; break; }
            }
            prop_assert!(decided.is_some(), "every round is decided once all answered");
            // Who may hold our token: never a node that refused, nor one
            // the request did not reach; every grant.
            for (i, a) in answers.iter().enumerate() {
                let heard = order.iter().position(|&j| j == i).unwrap() < grants + others;
                let may = round.may_hold().contains(i);
                match a {
                    Answer::Refuse | Answer::Fail { sent: false } if heard => prop_assert!(!may),
                    _ => prop_assert!(may),
                }
            }
            let granted: Vec<usize> = round.granted().iter().map(|(i, _)| *i).collect();
            prop_assert!(granted.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(granted.len(), grants);
            if decided == Some(Decision::Lost) {
                let failed = round.tally().failed();
                let e = round.error("r");
                if failed > n - quorum {
                    prop_assert!(e.is_unreachable(), "{}", e);
                } else {
                    prop_assert!(e.is_taken(), "{}", e);
                }
            }
        }
    }

    #[test]
    fn a_rejected_request_is_the_callers_error_and_refusals_say_when() {
        let rejected = NodeError::new(
            0,
            "a:1",
            NodeErrorKind::Rejected,
            "invalid ttl-ms '172800000': must be an integer from 1 to 86400000 (lock.max-ttl-ms)"
                .into(),
        );
        let e = too_few_answers("r", 0, (2, 3), vec![rejected]);
        assert!(e.is_invalid(), "{e}");
        assert!(
            e.to_string()
                .contains("lock.max-ttl-ms = 86400000 (24h00m)"),
            "{e}"
        );
        let refusing = |i, ms| {
            let mut e = NodeError::new(i, "a:1", NodeErrorKind::Refusing, "rejoining".into());
            e.retry_after = Some(Duration::from_millis(ms));
            e
        };
        // One node answered; a quorum of 3 needs two of the refusing ones.
        let e = too_few_answers(
            "r",
            1,
            (3, 5),
            vec![refusing(1, 500), refusing(2, 9_000), refusing(3, 2_000)],
        );
        assert_eq!(e.retry_after(), Some(Duration::from_millis(2_000)), "{e}");
        assert!(e.is_refused() && !e.is_unreachable(), "{e}");
    }
}
