//! The rounds of the quorum client as pure bookkeeping: each node's answer
//! as it comes in -> decided or not, and what the round amounts to. No IO:
//! the drivers in `client.rs` feed them the answers of a fan-out; here they
//! are tested against a fake node set, answers in every order.
//!
//! - [`Round`]: an acquisition (which nodes may hold our token, and so need
//!   a release if it is lost; the error a lost round returns);
//! - [`RaiseRound`]: the fence raise after a won fenced acquisition;
//! - [`TokenRound`]: a request by our token (extend, release): on which
//!   nodes it did it, and whether the token held the lock on a quorum.

use std::time::Duration;

use crate::client::Released;
use crate::error::{Error, LossReason, NodeError, NodeErrorKind};
use crate::nodeset::NodeMask;
use crate::proto::Extended;
use crate::quorum::{Decision, Raise, Tally, Vote};

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
        self.tally.record(vote(&answer));
        match answer {
            Ok(Some(fence)) => {
                let at = self.granted.partition_point(|(j, _)| *j < i);
                self.granted.insert(at, (i, fence));
            }
            Ok(None) => self.may_hold.remove(i),
            Err(e) => {
                tracing::debug!(error = %e, "node failed");
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

/// A node's answer to `LOCK.ACQUIRE` as a vote: granted with its fence,
/// refused (another token holds it), or no usable answer.
fn vote(answer: &Result<Option<u64>, NodeError>) -> Vote {
    match answer {
        Ok(Some(fence)) => Vote::Granted(*fence),
        Ok(None) => Vote::Refused,
        Err(_) => Vote::Failed,
    }
}

/// The fence raise of a fenced acquisition (see [`Raise`]) over the nodes
/// that granted: which of them hold the floor for our token (those already
/// at it, and those that confirm the raise), and what the raise amounts to.
pub(crate) struct RaiseRound {
    raise: Raise,
    holders: NodeMask,
    to_raise: NodeMask,
    errors: Vec<NodeError>,
}

impl RaiseRound {
    /// The raise after a won round whose granting nodes replied `granted`
    /// (node, fence), needing `quorum` of them.
    pub(crate) fn new(quorum: usize, granted: &[(usize, u64)]) -> RaiseRound {
        let fences: Vec<u64> = granted.iter().map(|(_, f)| *f).collect();
        let raise = Raise::new(quorum, &fences);
        let (below, at): (Vec<_>, Vec<_>) =
            granted.iter().partition(|(_, f)| raise.needs_raise(*f));
        let to_raise = if raise.decision().is_some() {
            NodeMask::default()
        } else {
            below.iter().map(|(i, _)| *i).collect()
        };
        RaiseRound {
            holders: at.iter().map(|(i, _)| *i).collect(),
            raise,
            to_raise,
            errors: Vec::new(),
        }
    }

    /// `T`: the fence every granting node is raised to.
    pub(crate) fn floor(&self) -> u64 {
        self.raise.floor()
    }

    /// The nodes to send `LOCK.ACQUIRE ... FENCE T` to (none if the nodes
    /// already at the floor are a quorum).
    pub(crate) fn to_raise(&self) -> NodeMask {
        self.to_raise
    }

    /// Records node `i`'s reply to the raise; the decision so far.
    pub(crate) fn note(
        &mut self,
        i: usize,
        answer: Result<Option<u64>, NodeError>,
    ) -> Option<Decision> {
        self.raise.record(vote(&answer));
        match answer {
            Ok(Some(fence)) if fence >= self.raise.floor() => self.holders.insert(i),
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "fence raise failed on a node");
                self.errors.push(e);
            }
        }
        self.raise.decision()
    }

    /// The lease's fence and the nodes that hold it, or, if a quorum did
    /// not confirm, the error of the acquisition (over `nodes` nodes; the
    /// acquisition round's own node errors are `earlier`).
    pub(crate) fn outcome(
        self,
        resource: &str,
        nodes: usize,
        earlier: Vec<NodeError>,
    ) -> Result<(u64, Vec<usize>), Error> {
        match self.raise.fence() {
            Some(fence) => Ok((fence, self.holders.iter(nodes).collect())),
            None => {
                let mut errors = earlier;
                errors.extend(self.errors);
                let t = self.raise.tally();
                Err(not_won(resource, t, nodes, t.failed() > 0, errors))
            }
        }
    }
}

/// A node's answer to a request by our token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ByToken {
    /// Done (extended, released): our token held it there.
    Done,
    /// Our token does not hold it there.
    NotHeld,
    /// Our token holds it, but the node's hold limit keeps it from
    /// extending.
    HoldLimit,
}

impl From<Extended> for ByToken {
    fn from(e: Extended) -> ByToken {
        match e {
            Extended::Yes => ByToken::Done,
            Extended::NotHeld => ByToken::NotHeld,
            Extended::HoldLimit => ByToken::HoldLimit,
        }
    }
}

impl From<bool> for ByToken {
    /// `LOCK.RELEASE`'s answer: whether our token held it.
    fn from(held: bool) -> ByToken {
        if held {
            ByToken::Done
        } else {
            ByToken::NotHeld
        }
    }
}

/// Who asks by the token: it decides how a token that no longer holds the
/// lock on a quorum is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Asker {
    /// The holder of a lease: it lost the lock ([`Error::Lost`]).
    Lease,
    /// A token handed over from elsewhere: it does not hold the lock
    /// ([`Error::NotHeld`]).
    Token,
}

/// A request by our token to every node (extend, release).
pub(crate) struct TokenRound {
    tally: Tally,
    done: NodeMask,
    not_held: usize,
    hold_limited: usize,
    errors: Vec<NodeError>,
}

impl TokenRound {
    pub(crate) fn new(nodes: usize, quorum: usize) -> TokenRound {
        TokenRound {
            tally: Tally::new(nodes, quorum),
            done: NodeMask::default(),
            not_held: 0,
            hold_limited: 0,
            errors: Vec::new(),
        }
    }

    /// Records node `i`'s answer; the decision so far: `Won` once a quorum
    /// did it, `Lost` once a quorum cannot.
    pub(crate) fn note(
        &mut self,
        i: usize,
        answer: Result<impl Into<ByToken>, NodeError>,
    ) -> Option<Decision> {
        match answer.map(Into::into) {
            Ok(ByToken::Done) => {
                self.tally.record(Vote::Granted(0));
                self.done.insert(i);
            }
            Ok(ByToken::NotHeld) => {
                self.not_held += 1;
                self.tally.record(Vote::Refused);
            }
            Ok(ByToken::HoldLimit) => {
                self.hold_limited += 1;
                self.tally.record(Vote::Refused);
            }
            Err(e) => {
                self.tally.record(Vote::Failed);
                self.errors.push(e);
            }
        }
        self.tally.decision()
    }

    /// Nodes that gave an answer (did it or not).
    pub(crate) fn answered(&self) -> usize {
        self.tally.granted() + self.tally.refused()
    }

    /// What a release amounts to, `pending` nodes not waited for.
    pub(crate) fn released(&self, pending: usize) -> Released {
        Released {
            held: self.tally.granted(),
            not_held: self.tally.refused(),
            failed: self.errors.clone(),
            pending,
        }
    }

    /// The nodes that did it, in node order, if a quorum did; else why not:
    /// so many nodes refused that the token cannot hold it on a quorum (the
    /// hold limit, if it alone made the difference), or too few answered.
    pub(crate) fn verdict(self, resource: &str, asker: Asker) -> Result<Vec<usize>, Error> {
        let t = &self.tally;
        let (quorum, nodes) = (t.quorum(), t.nodes());
        if t.granted() >= quorum {
            return Ok(self.done.iter(nodes).collect());
        }
        if !t.refused_beyond_spare() {
            return Err(too_few_answers(
                resource,
                self.answered(),
                (quorum, nodes),
                self.errors,
            ));
        }
        // The nodes that no longer hold it would not have been enough to
        // lose it: the hold limit is what ended it.
        let spare = nodes.saturating_sub(quorum);
        if self.hold_limited > 0 && self.not_held <= spare {
            return Err(Error::Lost {
                resource: resource.to_owned(),
                reason: LossReason::HoldLimit,
            });
        }
        Err(match asker {
            Asker::Lease => Error::Lost {
                resource: resource.to_owned(),
                reason: LossReason::NotHeld,
            },
            Asker::Token => Error::NotHeld {
                resource: resource.to_owned(),
                held: t.granted(),
                not_held: t.refused(),
                quorum,
                nodes,
                node_errors: self.errors,
            },
        })
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

    fn shuffled(n: usize, mut seed: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        for k in (1..n).rev() {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            order.swap(k, usize::try_from(seed >> 33).unwrap() % (k + 1));
        }
        order
    }

    fn failed(i: usize) -> NodeError {
        NodeError::new(i, "fake:1", NodeErrorKind::Timeout, "slow".into())
    }

    /// What one node answers to a request by our token.
    fn by_token() -> impl Strategy<Value = Option<ByToken>> {
        prop_oneof![
            Just(Some(ByToken::Done)),
            Just(Some(ByToken::NotHeld)),
            Just(Some(ByToken::HoldLimit)),
            Just(None),
        ]
    }

    proptest! {
        #[test]
        fn a_token_round_holds_on_a_quorum_or_says_why_not(
            answers in prop::collection::vec(by_token(), 1..8),
            order_seed in any::<u64>(),
            until_decided in any::<bool>(),
            lease in any::<bool>(),
        ) {
            let n = answers.len();
            let quorum = n / 2 + 1;
            let spare = n - quorum;
            let mut round = TokenRound::new(n, quorum);
            let mut heard = Vec::new();
            for i in shuffled(n, order_seed) {
                let answer = answers[i].ok_or_else(|| failed(i));
                heard.push(i);
                if round.note(i, answer).is_some() && until_decided {
                    break;
                }
            }
            let count = |want: Option<ByToken>| heard.iter().filter(|&&i| answers[i] == want).count();
            let (done, not_held, limited) = (
                count(Some(ByToken::Done)),
                count(Some(ByToken::NotHeld)),
                count(Some(ByToken::HoldLimit)),
            );
            prop_assert_eq!(round.answered(), done + not_held + limited);
            let released = round.released(n - heard.len());
            prop_assert_eq!(released.held, done);
            prop_assert_eq!(released.failed.len(), heard.len() - round.answered());
            let asker = if lease { Asker::Lease } else { Asker::Token };
            match round.verdict("r", asker) {
                Ok(nodes) => {
                    prop_assert!(done >= quorum);
                    let mut want: Vec<usize> = heard
                        .iter()
                        .copied()
                        .filter(|&i| answers[i] == Some(ByToken::Done))
                        .collect();
                    want.sort_unstable();
                    prop_assert_eq!(nodes, want);
                }
                Err(Error::Lost { reason: LossReason::HoldLimit, .. }) => {
                    prop_assert!(done < quorum && not_held + limited > spare);
                    prop_assert!(limited > 0 && not_held <= spare);
                }
                Err(Error::Lost { reason: LossReason::NotHeld, .. }) => {
                    prop_assert!(lease && not_held > spare);
                }
                Err(Error::NotHeld { held, not_held: nh, .. }) => {
                    prop_assert!(!lease && not_held > spare);
                    prop_assert_eq!((held, nh), (done, not_held + limited));
                }
                Err(e) => {
                    prop_assert!(done < quorum && not_held + limited <= spare, "{}", e);
                    prop_assert!(e.is_unreachable(), "{}", e);
                }
            }
        }

        #[test]
        fn a_raise_confirms_the_floor_on_a_quorum_or_fails_the_round(
            fences in prop::collection::vec(1u64..20, 1..8),
            replies in prop::collection::vec(0u8..4, 8),
            quorum_seed in any::<usize>(),
        ) {
            // The granting nodes are some of a larger node set.
            let granted: Vec<(usize, u64)> =
                fences.iter().enumerate().map(|(k, f)| (2 * k + 1, *f)).collect();
            let g = granted.len();
            let quorum = g / 2 + 1 + quorum_seed % (g - g / 2);
            let mut raise = RaiseRound::new(quorum, &granted);
            let floor = raise.floor();
            prop_assert_eq!(Some(floor), fences.iter().copied().max());
            let at_floor = fences.iter().filter(|&&f| f == floor).count();
            let to_raise: Vec<usize> = raise.to_raise().iter(64).collect();
            if at_floor >= quorum {
                prop_assert!(to_raise.is_empty());
            } else {
                let below: Vec<usize> =
                    granted.iter().filter(|(_, f)| *f < floor).map(|(i, _)| *i).collect();
                prop_assert_eq!(&to_raise, &below);
            }
            let mut confirmed = at_floor;
            for (k, &i) in to_raise.iter().enumerate() {
                let answer = match replies[k] {
                    0 => Ok(Some(floor)),
                    1 => Ok(Some(floor + 5)),
                    2 => Ok(None),
                    _ => Err(failed(i)),
                };
                if matches!(answer, Ok(Some(_))) {
                    confirmed += 1;
                }
                if raise.note(i, answer).is_some() {
                    break;
                }
            }
            match raise.outcome("r", 2 * g + 1, Vec::new()) {
                Ok((fence, holders)) => {
                    prop_assert!(confirmed >= quorum && fence >= floor);
                    prop_assert!(holders.len() >= quorum);
                    prop_assert!(holders.windows(2).all(|w| w[0] < w[1]));
                    prop_assert!(holders.iter().all(|i| granted.iter().any(|(j, _)| j == i)));
                }
                Err(e) => prop_assert!(confirmed < quorum && (e.is_taken() || e.is_unreachable()), "{}", e),
            }
        }
    }

    #[test]
    fn a_hold_limit_ends_a_lease_only_where_it_alone_made_the_difference() {
        use ByToken::{Done, HoldLimit, NotHeld};
        let cases: [(&[ByToken], Result<usize, LossReason>); 4] = [
            (&[Done, Done, Done, HoldLimit, NotHeld], Ok(3)),
            (
                &[HoldLimit, HoldLimit, Done, Done, NotHeld],
                Err(LossReason::HoldLimit),
            ),
            (
                &[NotHeld, NotHeld, NotHeld, Done, HoldLimit],
                Err(LossReason::NotHeld),
            ),
            (
                &[HoldLimit, NotHeld, NotHeld, NotHeld, Done],
                Err(LossReason::NotHeld),
            ),
        ];
        for (answers, want) in cases {
            let mut round = TokenRound::new(answers.len(), 3);
            for (i, a) in answers.iter().enumerate() {
                round.note(i, Ok::<_, NodeError>(*a));
            }
            let got = match round.verdict("r", Asker::Lease) {
                Ok(nodes) => Ok(nodes.len()),
                Err(Error::Lost { reason, .. }) => Err(reason),
                Err(e) => panic!("{answers:?}: {e}"),
            };
            assert_eq!(got, want, "{answers:?}");
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
