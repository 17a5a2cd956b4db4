//! Quorum arithmetic: pure, with time and randomness passed in.
//!
//! Nothing here does IO or reads a clock. The IO layer feeds node answers
//! into a [`Tally`], asks it for a [`Decision`] after every answer, and uses
//! the functions below for validity, drift, backoff and renewal times. All of
//! it is tested with tables and property tests, without a server.

use std::time::{Duration, Instant};

/// One node's answer to a request in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Vote {
    /// The node did what was asked (granted the lock with this fence,
    /// extended it, released it).
    Granted(u64),
    /// The node answered no: the lock is held by another token there (for
    /// acquire), or not held by our token there (for extend).
    Refused,
    /// No usable answer: connection error, timeout, server error.
    Failed,
}

/// What a round amounts to, once it is certain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A quorum said yes.
    Won,
    /// A quorum can no longer say yes, whatever the nodes still pending say.
    Lost,
}

/// The answers of one round so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tally {
    nodes: usize,
    quorum: usize,
    granted: usize,
    refused: usize,
    failed: usize,
    max_fence: Option<u64>,
}

impl Tally {
    /// A round over `nodes` nodes that needs `quorum` of them. The
    /// configuration guarantees `nodes / 2 < quorum <= nodes`.
    pub(crate) fn new(nodes: usize, quorum: usize) -> Self {
        Tally {
            nodes,
            quorum,
            granted: 0,
            refused: 0,
            failed: 0,
            max_fence: None,
        }
    }

    /// Counts one node's answer. Answers beyond the number of nodes are
    /// ignored (they cannot happen through the IO layer).
    pub(crate) fn record(&mut self, vote: Vote) {
        if self.answered() >= self.nodes {
            return;
        }
        match vote {
            Vote::Granted(fence) => {
                self.granted += 1;
                self.max_fence = Some(self.max_fence.map_or(fence, |m| m.max(fence)));
            }
            Vote::Refused => self.refused += 1,
            Vote::Failed => self.failed += 1,
        }
    }

    pub(crate) fn answered(&self) -> usize {
        self.granted + self.refused + self.failed
    }

    pub(crate) fn pending(&self) -> usize {
        self.nodes.saturating_sub(self.answered())
    }

    /// The decision, as soon as it is certain: `None` while the pending
    /// nodes could still tip it either way.
    pub(crate) fn decision(&self) -> Option<Decision> {
        if self.granted >= self.quorum {
            Some(Decision::Won)
        } else if self.granted + self.pending() < self.quorum {
            Some(Decision::Lost)
        } else {
            None
        }
    }

    /// More nodes failed than the quorum can spare: the round could not
    /// have been won even if no one else held the lock.
    pub(crate) fn failed_beyond_spare(&self) -> bool {
        self.failed > self.nodes - self.quorum.min(self.nodes)
    }

    /// More nodes refused than the quorum can spare: our token is absent
    /// from so many nodes that it cannot be on a quorum of them.
    pub(crate) fn refused_beyond_spare(&self) -> bool {
        self.refused > self.nodes - self.quorum.min(self.nodes)
    }

    pub(crate) fn granted(&self) -> usize {
        self.granted
    }

    pub(crate) fn refused(&self) -> usize {
        self.refused
    }

    pub(crate) fn failed(&self) -> usize {
        self.failed
    }

    pub(crate) fn nodes(&self) -> usize {
        self.nodes
    }

    pub(crate) fn quorum(&self) -> usize {
        self.quorum
    }

    /// The largest fence among the granting nodes.
    pub(crate) fn max_fence(&self) -> Option<u64> {
        self.max_fence
    }
}

/// The fence raise that follows a won acquisition round (fenced mode): it
/// makes a quorum of nodes hold the lease's fence, so that every later grant
/// by any quorum is above it (the argument is in `docs/DESIGN.md`, "Fencing
/// tokens").
///
/// The floor `T` is the largest fence among the granting nodes. A granting
/// node whose own fence is `T` already holds it (a node's counter is at
/// least every fence it handed out), so it counts as confirmed without a
/// request. Every other granting node is sent `LOCK.ACQUIRE ... FENCE T`
/// and confirms by replying a fence `>= T` for our token: the module never
/// lowers a fence, so a reply above `T` only means the node granted our
/// token afresh (its first grant was lost), and its counter is above `T`
/// all the same. A reply below `T` breaks the module's contract and counts
/// as a failure; nil (another token holds it there) as a refusal.
///
/// The raise is won once `quorum` granting nodes confirm. The lease's fence
/// is then the largest value a quorum of them confirmed: the
/// `quorum`-th largest confirmed fence. It is at least `T`, and is `T`
/// unless `quorum` nodes replied above it, so no second raise is ever
/// needed: whatever it is, a quorum holds a fence at least that high.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Raise {
    floor: u64,
    tally: Tally,
    confirmed: Vec<u64>,
}

impl Raise {
    /// The raise after a won round whose granting nodes replied `fences`
    /// (one per granting node), needing `quorum` of them. The nodes already
    /// at the floor are counted as confirmed.
    pub(crate) fn new(quorum: usize, fences: &[u64]) -> Raise {
        let floor = fences.iter().copied().max().unwrap_or(0);
        let mut raise = Raise {
            floor,
            tally: Tally::new(fences.len(), quorum),
            confirmed: Vec::with_capacity(fences.len()),
        };
        for &fence in fences {
            if !raise.needs_raise(fence) {
                raise.record(Vote::Granted(fence));
            }
        }
        raise
    }

    /// `T`: the fence every granting node is raised to.
    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    /// Whether a granting node that was granted `fence` must be sent the
    /// raise (the others already hold the floor).
    pub(crate) fn needs_raise(&self, fence: u64) -> bool {
        fence < self.floor
    }

    /// Counts one raised node's reply: `Granted(f)` for a fence `f` held
    /// by our token, `Refused` for nil, `Failed` for no usable answer.
    pub(crate) fn record(&mut self, vote: Vote) {
        if self.tally.answered() >= self.tally.nodes() {
            return;
        }
        let vote = match vote {
            Vote::Granted(fence) if fence < self.floor => Vote::Failed,
            other => other,
        };
        if let Vote::Granted(fence) = vote {
            self.confirmed.push(fence);
        }
        self.tally.record(vote);
    }

    /// As for an acquisition round: `Won` once a quorum confirmed, `Lost`
    /// once a quorum cannot.
    pub(crate) fn decision(&self) -> Option<Decision> {
        self.tally.decision()
    }

    /// The lease's fence once the raise is won: the largest value that a
    /// quorum of nodes confirmed holding.
    pub(crate) fn fence(&self) -> Option<u64> {
        if self.decision() != Some(Decision::Won) {
            return None;
        }
        let mut confirmed = self.confirmed.clone();
        confirmed.sort_unstable_by(|a, b| b.cmp(a));
        confirmed.get(self.tally.quorum().checked_sub(1)?).copied()
    }

    /// The answers so far, over all the granting nodes.
    pub(crate) fn tally(&self) -> &Tally {
        &self.tally
    }
}

/// The smallest quorum that is a strict majority of `nodes`.
pub(crate) fn majority(nodes: usize) -> usize {
    nodes / 2 + 1
}

/// Allowance for clock drift between the client and the nodes over a TTL:
/// `ttl * factor + fixed`. `factor` is checked by the configuration
/// (finite, in `[0, 1)`); anything else yields the whole TTL, which makes
/// every validity non-positive rather than too long.
pub(crate) fn drift(ttl: Duration, factor: f64, fixed: Duration) -> Duration {
    let scaled = if factor.is_finite() && (0.0..1.0).contains(&factor) {
        Duration::try_from_secs_f64(ttl.as_secs_f64() * factor).unwrap_or(ttl)
    } else {
        ttl
    };
    scaled.saturating_add(fixed)
}

/// What is left of a lock taken with `ttl` after `elapsed` (measured on a
/// monotonic clock from before the first request was sent), less `drift`.
/// `None` when nothing is left: the lock must be treated as not held.
pub(crate) fn validity(ttl: Duration, elapsed: Duration, drift: Duration) -> Option<Duration> {
    ttl.checked_sub(elapsed)
        .and_then(|left| left.checked_sub(drift))
        .filter(|left| !left.is_zero())
}

/// The instant until which a lock sent at `started` with `ttl` may be
/// relied on, judged at `now`; `None` if it is already over.
pub(crate) fn valid_until(
    started: Instant,
    ttl: Duration,
    drift: Duration,
    now: Instant,
) -> Option<Instant> {
    let left = validity(ttl, now.saturating_duration_since(started), drift)?;
    now.checked_add(left)
}

/// Delay between acquisition rounds: `base` plus a uniform share of
/// `jitter`, so that competing clients spread out instead of colliding
/// again in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) jitter: Duration,
}

impl Backoff {
    /// `unit` is a random number in `[0, 1)`; values outside are clamped.
    pub(crate) fn delay(&self, unit: f64) -> Duration {
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let extra = Duration::try_from_secs_f64(self.jitter.as_secs_f64() * unit)
            .unwrap_or(self.jitter)
            .min(self.jitter);
        self.base.saturating_add(extra)
    }

    /// How long to sleep before the next round, or `None` to give up.
    ///
    /// `attempts` rounds have been made so far (at least one), `elapsed`
    /// time has passed since the first began, the caller allows `wait` in
    /// all and at most `max_retries` rounds after the first (`None`: no
    /// limit but `wait`). The sleep never goes past the end of `wait`.
    pub(crate) fn next_delay(
        &self,
        attempts: u32,
        max_retries: Option<u32>,
        elapsed: Duration,
        wait: Duration,
        unit: f64,
    ) -> Option<Duration> {
        if let Some(max) = max_retries {
            if attempts > max {
                return None;
            }
        }
        let remaining = wait.checked_sub(elapsed).filter(|r| !r.is_zero())?;
        Some(self.delay(unit).min(remaining))
    }
}

/// When the holder of a lease renews it: at a third of the TTL after the
/// last successful acquisition or extension.
pub(crate) fn renew_at(last_renewed: Instant, ttl: Duration) -> Instant {
    last_renewed + ttl / 3
}

/// How soon to try again after a renewal that could not reach a quorum (but
/// was not refused by one): a tenth of the TTL, at least 5 ms.
pub(crate) fn renew_retry_delay(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(5))
}

/// Whether an extension by `ttl` at `now` keeps the total hold, counted from
/// `held_since`, within `max_hold`. Past that, renewal stops and the lease
/// runs out at its current validity.
pub(crate) fn may_renew(
    held_since: Instant,
    now: Instant,
    ttl: Duration,
    max_hold: Duration,
) -> bool {
    now.saturating_duration_since(held_since)
        .saturating_add(ttl)
        <= max_hold
}

#[cfg(test)]
mod tests {

    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn tally_of(nodes: usize, quorum: usize, votes: &[Vote]) -> Tally {
        let mut t = Tally::new(nodes, quorum);
        for v in votes {
            t.record(*v);
        }
        t
    }

    use Vote::{Failed as F, Granted as G, Refused as R};

    #[test]
    fn decisions_table() {
        // (nodes, quorum, answers so far, expected decision)
        let cases: &[(usize, usize, &[Vote], Option<Decision>)] = &[
            (5, 3, &[], None),
            (5, 3, &[G(1)], None),
            (5, 3, &[G(1), G(2)], None),
            (5, 3, &[G(1), G(2), G(3)], Some(Decision::Won)),
            (5, 3, &[R, R], None),
            (5, 3, &[R, R, R], Some(Decision::Lost)),
            (5, 3, &[F, F, F], Some(Decision::Lost)),
            (5, 3, &[R, F, F], Some(Decision::Lost)),
            (5, 3, &[G(1), R, F], None),
            (5, 3, &[G(1), R, F, G(2)], None),
            (5, 3, &[G(1), R, F, G(2), G(3)], Some(Decision::Won)),
            (5, 3, &[G(1), R, F, R], Some(Decision::Lost)),
            (1, 1, &[], None),
            (1, 1, &[G(7)], Some(Decision::Won)),
            (1, 1, &[F], Some(Decision::Lost)),
            (3, 2, &[G(1), F], None),
            (3, 2, &[G(1), F, G(4)], Some(Decision::Won)),
            (4, 3, &[R, G(1)], None),
            (4, 3, &[R, R], Some(Decision::Lost)),
            (5, 5, &[G(1), G(1), G(1), G(1), F], Some(Decision::Lost)),
        ];
        for (nodes, quorum, votes, want) in cases {
            let t = tally_of(*nodes, *quorum, votes);
            assert_eq!(
                t.decision(),
                *want,
                "{nodes} nodes, quorum {quorum}, votes {votes:?}"
            );
        }
    }

    #[test]
    fn loss_classification_table() {
        // (votes, failed beyond spare, refused beyond spare) on 5 nodes, quorum 3
        let cases: &[(&[Vote], bool, bool)] = &[
            (&[F, F, F], true, false),
            (&[R, R, R], false, true),
            (&[R, F, F], false, false),
            (&[R, R, F], false, false),
            (&[R, R, F, F, F], true, false),
        ];
        for (votes, failed, refused) in cases {
            let t = tally_of(5, 3, votes);
            assert_eq!(t.failed_beyond_spare(), *failed, "{votes:?}");
            assert_eq!(t.refused_beyond_spare(), *refused, "{votes:?}");
        }
    }

    #[test]
    fn fence_is_the_largest_granted() {
        let t = tally_of(5, 3, &[G(4), R, G(9), F, G(2)]);
        assert_eq!(t.max_fence(), Some(9));
        assert_eq!(tally_of(5, 3, &[R, F]).max_fence(), None);
    }

    /// A raise over granting nodes that were granted `grants`, then
    /// answered `replies` (one per node below the floor, in order).
    fn raise_of(quorum: usize, grants: &[u64], replies: &[Vote]) -> Raise {
        let mut r = Raise::new(quorum, grants);
        for v in replies {
            r.record(*v);
        }
        r
    }

    #[test]
    fn raise_table() {
        // (quorum, grants, replies of the nodes below the floor,
        //  requests needed, decision, lease fence)
        type Case<'a> = (
            usize,
            &'a [u64],
            &'a [Vote],
            usize,
            Option<Decision>,
            Option<u64>,
        );
        let cases: &[Case] = &[
            // One node has the max: the two others are raised to it.
            (3, &[5, 9, 7], &[], 2, None, None),
            (3, &[5, 9, 7], &[G(9)], 2, None, None),
            (
                3,
                &[5, 9, 7],
                &[G(9), G(9)],
                2,
                Some(Decision::Won),
                Some(9),
            ),
            // All equal (or a single node): nothing to ask, won at once.
            (3, &[9, 9, 9], &[], 0, Some(Decision::Won), Some(9)),
            (1, &[42], &[], 0, Some(Decision::Won), Some(42)),
            // More grants than the quorum: the first confirmations decide.
            (
                3,
                &[5, 9, 7, 8],
                &[G(9), G(9)],
                3,
                Some(Decision::Won),
                Some(9),
            ),
            (3, &[5, 9, 7, 8], &[F, G(9)], 3, None, None),
            (
                3,
                &[5, 9, 7, 8],
                &[F, G(9), G(9)],
                3,
                Some(Decision::Won),
                Some(9),
            ),
            (3, &[5, 9, 7, 8], &[F, R], 3, Some(Decision::Lost), None),
            // A failure or a refusal among exactly a quorum loses it.
            (3, &[5, 9, 7], &[F], 2, Some(Decision::Lost), None),
            (3, &[5, 9, 7], &[G(9), R], 2, Some(Decision::Lost), None),
            // A reply below the floor breaks the contract: a failure.
            (3, &[5, 9, 7], &[G(8)], 2, Some(Decision::Lost), None),
            // A reply above the floor holds at least the floor; the fence
            // is what a quorum holds: the floor unless a quorum is above.
            (
                3,
                &[5, 9, 7],
                &[G(12), G(9)],
                2,
                Some(Decision::Won),
                Some(9),
            ),
            (
                3,
                &[5, 9, 7],
                &[G(12), G(11)],
                2,
                Some(Decision::Won),
                Some(9),
            ),
            (2, &[5, 9, 7], &[G(12)], 2, Some(Decision::Won), Some(9)),
            (
                2,
                &[5, 9, 7],
                &[G(12), G(11)],
                2,
                Some(Decision::Won),
                Some(11),
            ),
        ];
        for (quorum, grants, replies, ask, decision, fence) in cases {
            let fresh = Raise::new(*quorum, grants);
            assert_eq!(fresh.floor(), *grants.iter().max().unwrap());
            assert_eq!(
                grants.iter().filter(|f| fresh.needs_raise(**f)).count(),
                *ask,
                "{grants:?}"
            );
            assert_eq!(fresh.tally().pending(), *ask, "{grants:?}");
            let r = raise_of(*quorum, grants, replies);
            assert_eq!(r.decision(), *decision, "{grants:?} {replies:?}");
            assert_eq!(r.fence(), *fence, "{grants:?} {replies:?}");
        }
    }

    #[test]
    fn extra_answers_are_ignored() {
        let t = tally_of(2, 2, &[G(1), G(2), G(3), R]);
        assert_eq!((t.granted(), t.refused(), t.answered()), (2, 0, 2));
    }

    /// The counterexample the raise exists for: each node counts on its
    /// own, so without it the later of two leases, granted by another
    /// majority, can carry the smaller fence.
    #[test]
    fn without_the_raise_fences_can_go_backwards() {
        // Node counters far apart: node 0 is a million ahead.
        let mut counters = [1_000_000u64, 10, 10, 10, 10];
        let mut grant = |nodes: &[usize]| -> Vec<u64> {
            nodes
                .iter()
                .map(|&i| {
                    counters[i] += 1;
                    counters[i]
                })
                .collect()
        };
        let a = grant(&[0, 1, 2]);
        let b = grant(&[2, 3, 4]);
        let (fa, fb) = (
            Raise::new(3, &a).floor(),
            tally_of(5, 3, &b.iter().map(|f| G(*f)).collect::<Vec<_>>())
                .max_fence()
                .unwrap(),
        );
        assert!(fb < fa, "unraised: {fb} after {fa}");
        // With the raise, node 2 (in both majorities) is lifted to A's fence
        // before A is handed out, so B's grant there is above it.
        let mut counters = [1_000_000u64, 10, 10, 10, 10];
        let a: Vec<u64> = [0, 1, 2]
            .iter()
            .map(|&i| {
                counters[i] += 1;
                counters[i]
            })
            .collect();
        let mut r = Raise::new(3, &a);
        for (&i, &f) in [0usize, 1, 2].iter().zip(&a) {
            if r.needs_raise(f) {
                counters[i] = counters[i].max(r.floor());
                r.record(G(counters[i]));
            }
        }
        let fa = r.fence().unwrap();
        let b: Vec<u64> = [2, 3, 4]
            .iter()
            .map(|&i| {
                counters[i] += 1;
                counters[i]
            })
            .collect();
        let fb = Raise::new(3, &b).floor();
        assert!(fb > fa, "raised: {fb} after {fa}");
    }

    #[test]
    fn majority_table() {
        for (n, q) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)] {
            assert_eq!(majority(n), q, "{n} nodes");
        }
    }

    #[test]
    fn drift_table() {
        // The common default: 1% of the TTL plus 2 ms.
        assert_eq!(drift(10_000 * MS, 0.01, 2 * MS), 102 * MS);
        assert_eq!(drift(1_000 * MS, 0.01, 2 * MS), 12 * MS);
        assert_eq!(drift(Duration::ZERO, 0.01, 2 * MS), 2 * MS);
        assert_eq!(drift(100 * MS, 0.0, Duration::ZERO), Duration::ZERO);
        // Nonsense factors never shorten the drift below the TTL.
        assert_eq!(drift(100 * MS, f64::NAN, Duration::ZERO), 100 * MS);
        assert_eq!(drift(100 * MS, -1.0, Duration::ZERO), 100 * MS);
        assert_eq!(drift(100 * MS, 2.0, MS), 101 * MS);
    }

    #[test]
    fn validity_table() {
        let cases = [
            // (ttl, elapsed, drift, validity)
            (1000, 10, 12, Some(978)),
            (1000, 0, 0, Some(1000)),
            (1000, 988, 12, None),
            (1000, 989, 12, None),
            (1000, 1000, 0, None),
            (1000, 2000, 0, None),
            (10, 0, 12, None),
        ];
        for (ttl, elapsed, d, want) in cases {
            assert_eq!(
                validity(ttl * MS, elapsed * MS, d * MS),
                want.map(|w| w * MS),
                "ttl {ttl} elapsed {elapsed} drift {d}"
            );
        }
    }

    #[test]
    fn valid_until_counts_from_the_start() {
        let t0 = Instant::now();
        let until = valid_until(t0, 1000 * MS, 12 * MS, t0 + 30 * MS).unwrap();
        assert_eq!(until, t0 + 988 * MS);
        assert_eq!(valid_until(t0, 1000 * MS, 12 * MS, t0 + 988 * MS), None);
    }

    #[test]
    fn backoff_table() {
        let b = Backoff {
            base: 50 * MS,
            jitter: 100 * MS,
        };
        assert_eq!(b.delay(0.0), 50 * MS);
        assert_eq!(b.delay(0.5), 100 * MS);
        assert_eq!(b.delay(1.0), 150 * MS);
        assert_eq!(b.delay(7.0), 150 * MS);
        assert_eq!(b.delay(-1.0), 50 * MS);
        assert_eq!(b.delay(f64::NAN), 50 * MS);
        // Retry count: attempts counts the rounds made, retries those after the first.
        assert_eq!(b.next_delay(1, Some(0), MS, 10_000 * MS, 0.0), None);
        assert_eq!(
            b.next_delay(1, Some(1), MS, 10_000 * MS, 0.0),
            Some(50 * MS)
        );
        assert_eq!(b.next_delay(2, Some(1), MS, 10_000 * MS, 0.0), None);
        // The wait budget: never sleep past it, give up when it is spent.
        assert_eq!(
            b.next_delay(1, None, 980 * MS, 1000 * MS, 0.5),
            Some(20 * MS)
        );
        assert_eq!(b.next_delay(1, None, 1000 * MS, 1000 * MS, 0.5), None);
        assert_eq!(
            b.next_delay(1, None, Duration::ZERO, Duration::ZERO, 0.5),
            None
        );
    }

    #[test]
    fn renewal_table() {
        let t0 = Instant::now();
        assert_eq!(renew_at(t0, 900 * MS), t0 + 300 * MS);
        assert_eq!(renew_retry_delay(1000 * MS), 100 * MS);
        assert_eq!(renew_retry_delay(10 * MS), 5 * MS);
        assert!(may_renew(t0, t0 + 500 * MS, 500 * MS, 1000 * MS));
        assert!(!may_renew(t0, t0 + 501 * MS, 500 * MS, 1000 * MS));
        assert!(may_renew(t0, t0 + 501 * MS, 500 * MS, Duration::MAX));
    }

    fn vote() -> impl Strategy<Value = Vote> {
        prop_oneof![
            any::<u64>().prop_map(Vote::Granted),
            Just(Vote::Refused),
            Just(Vote::Failed)
        ]
    }

    /// A node count, a valid quorum for it and one answer per node.
    fn round() -> impl Strategy<Value = (usize, usize, Vec<Vote>)> {
        (1usize..=9).prop_flat_map(|n| {
            (
                Just(n),
                majority(n)..=n,
                proptest::collection::vec(vote(), n),
            )
        })
    }

    proptest! {
        /// A decision is never made while the pending nodes could still
        /// change the outcome, and once made it is the final outcome.
        #[test]
        fn no_decision_before_it_is_certain((n, q, votes) in round()) {
            let final_granted = votes.iter().filter(|v| matches!(v, Vote::Granted(_))).count();
            let final_outcome = if final_granted >= q { Decision::Won } else { Decision::Lost };
            let mut t = Tally::new(n, q);
            prop_assert_eq!(t.decision(), None);
            for (i, v) in votes.iter().enumerate() {
                t.record(*v);
                let granted_so_far = votes[..=i].iter().filter(|v| matches!(v, Vote::Granted(_))).count();
                let pending = n - (i + 1);
                // Could the remaining answers still go either way?
                let can_win = granted_so_far + pending >= q;
                let can_lose = granted_so_far < q;
                match t.decision() {
                    None => prop_assert!(can_win && can_lose),
                    Some(d) => {
                        prop_assert!(!(can_win && can_lose));
                        prop_assert_eq!(d, final_outcome);
                    }
                }
            }
            prop_assert!(t.decision().is_some(), "every answer in and no decision");
        }

        /// Two disjoint groups of granting nodes can never both win.
        #[test]
        fn two_winners_cannot_coexist((n, q, votes) in round()) {
            let mut mine = Tally::new(n, q);
            let mut theirs = Tally::new(n, q);
            for v in &votes {
                // A node grants to at most one of the two.
                match v {
                    Vote::Granted(f) => { mine.record(Vote::Granted(*f)); theirs.record(Vote::Refused); }
                    _ => { mine.record(Vote::Refused); theirs.record(Vote::Granted(1)); }
                }
            }
            prop_assert!(!(mine.decision() == Some(Decision::Won) && theirs.decision() == Some(Decision::Won)));
        }

        /// A won raise's fence is at least the floor, and a quorum of the
        /// granting nodes holds a fence at least that high (those at the
        /// floor, and those that confirmed); a decision is never premature.
        #[test]
        fn a_won_raise_is_held_by_a_quorum(
            (n, q, grants, replies) in (1usize..=9).prop_flat_map(|n| {
                (Just(n), majority(n)..=n,
                 proptest::collection::vec(1u64..20, n),
                 proptest::collection::vec(prop_oneof![
                     (0u64..30).prop_map(Vote::Granted), Just(Vote::Refused), Just(Vote::Failed)
                 ], n))
            })
        ) {
            let _ = n;
            let mut r = Raise::new(q, &grants);
            let floor = r.floor();
            prop_assert_eq!(floor, *grants.iter().max().unwrap());
            let below: Vec<u64> = grants.iter().copied().filter(|f| r.needs_raise(*f)).collect();
            let mut held: Vec<u64> = grants.iter().copied().filter(|f| *f >= floor).collect();
            for (i, v) in replies.iter().take(below.len()).enumerate() {
                let before = r.decision();
                r.record(*v);
                if let Vote::Granted(f) = v {
                    if *f >= floor { held.push(*f); }
                }
                // Decided once means decided for good, and only when the
                // remaining answers could not change it.
                if let Some(d) = before { prop_assert_eq!(r.decision(), Some(d)); }
                let pending = below.len() - (i + 1);
                if r.decision().is_none() {
                    prop_assert!(held.len() < q && held.len() + pending >= q);
                }
            }
            match r.fence() {
                Some(fence) => {
                    prop_assert!(fence >= floor);
                    prop_assert!(held.iter().filter(|f| **f >= fence).count() >= q);
                }
                None => prop_assert!(r.decision() != Some(Decision::Won)),
            }
            if held.len() >= q { prop_assert!(r.fence().is_some()); }
        }

        /// The protocol on a model of N nodes: leases one after another,
        /// each granted by a random majority and raised with random lost
        /// replies and lost requests. With the raise, every lease's fence
        /// is above the previous one's; node counters start far apart and
        /// jump (restarts raise them to the clock).
        #[test]
        fn raised_fences_increase_from_lease_to_lease(
            n in 1usize..=7,
            starts in proptest::collection::vec(1u64..1_000_000, 7),
            leases in proptest::collection::vec(
                (proptest::collection::vec(any::<bool>(), 7),   // which nodes grant
                 proptest::collection::vec(0u8..4, 7),          // raise outcome per node
                 proptest::option::of((0usize..7, 1u64..2_000_000))), // a counter jump
                1..40)
        ) {
            let q = majority(n);
            let mut counters: Vec<u64> = starts[..n].to_vec();
            let mut last: Option<u64> = None;
            for (grants, outcomes, jump) in leases {
                if let Some((i, to)) = jump {
                    let c = &mut counters[i % n];
                    *c = (*c).max(to);
                }
                // Grant on the chosen nodes, or on the first q if too few.
                let mut chosen: Vec<usize> = (0..n).filter(|i| grants[*i]).collect();
                if chosen.len() < q { chosen = (0..q).collect(); }
                let fences: Vec<u64> = chosen.iter().map(|&i| { counters[i] += 1; counters[i] }).collect();
                let mut r = Raise::new(q, &fences);
                let floor = r.floor();
                for (&i, &f) in chosen.iter().zip(&fences) {
                    if !r.needs_raise(f) { continue; }
                    match outcomes[i] {
                        // raised and confirmed
                        0 => { counters[i] = counters[i].max(floor); r.record(Vote::Granted(floor)); }
                        // the node had lost our grant: granted afresh, at least the floor
                        1 => { counters[i] = (counters[i] + 1).max(floor); r.record(Vote::Granted(counters[i])); }
                        // raised, reply lost
                        2 => { counters[i] = counters[i].max(floor); r.record(Vote::Failed); }
                        // request lost
                        _ => r.record(Vote::Failed),
                    }
                }
                let Some(fence) = r.fence() else { continue };
                if let Some(prev) = last {
                    prop_assert!(fence > prev, "fence {} after {}", fence, prev);
                }
                last = Some(fence);
            }
        }

        /// Once the TTL has elapsed, validity is never positive, whatever the drift.
        #[test]
        fn validity_never_positive_after_the_ttl(ttl_ms in 0u64..10_000_000, over_ms in 0u64..10_000_000,
                                                 factor in 0.0f64..1.0, fixed_ms in 0u64..1000) {
            let ttl = Duration::from_millis(ttl_ms);
            let d = drift(ttl, factor, Duration::from_millis(fixed_ms));
            prop_assert_eq!(validity(ttl, ttl + Duration::from_millis(over_ms), d), None);
        }

        /// Validity is at most ttl - elapsed - drift, and that exactly when positive.
        #[test]
        fn validity_is_exact(ttl_ms in 0u64..10_000_000, elapsed_ms in 0u64..10_000_000,
                             factor in 0.0f64..1.0, fixed_ms in 0u64..1000) {
            let ttl = Duration::from_millis(ttl_ms);
            let elapsed = Duration::from_millis(elapsed_ms);
            let d = drift(ttl, factor, Duration::from_millis(fixed_ms));
            prop_assert!(d >= Duration::from_millis(fixed_ms));
            prop_assert!(d <= ttl + Duration::from_millis(fixed_ms));
            match validity(ttl, elapsed, d) {
                Some(v) => {
                    prop_assert!(!v.is_zero());
                    prop_assert_eq!(v + elapsed + d, ttl);
                }
                None => prop_assert!(elapsed + d >= ttl),
            }
        }

        /// The deadline never reaches past start + ttl - drift.
        #[test]
        fn valid_until_never_beyond_the_ttl(ttl_ms in 1u64..100_000, elapsed_ms in 0u64..200_000, fixed_ms in 0u64..100) {
            let t0 = Instant::now();
            let ttl = Duration::from_millis(ttl_ms);
            let d = drift(ttl, 0.01, Duration::from_millis(fixed_ms));
            let now = t0 + Duration::from_millis(elapsed_ms);
            if let Some(until) = valid_until(t0, ttl, d, now) {
                prop_assert!(until > now);
                prop_assert!(until + d <= t0 + ttl);
            }
        }

        /// Backoff delays stay within [base, base + jitter] and within the wait budget.
        #[test]
        fn backoff_within_bounds(base_ms in 0u64..10_000, jitter_ms in 0u64..10_000, unit in proptest::num::f64::ANY,
                                 attempts in 1u32..100, max in proptest::option::of(0u32..100),
                                 elapsed_ms in 0u64..100_000, wait_ms in 0u64..100_000) {
            let b = Backoff { base: Duration::from_millis(base_ms), jitter: Duration::from_millis(jitter_ms) };
            let d = b.delay(unit);
            prop_assert!(d >= b.base && d <= b.base + b.jitter);
            let elapsed = Duration::from_millis(elapsed_ms);
            let wait = Duration::from_millis(wait_ms);
            match b.next_delay(attempts, max, elapsed, wait, unit) {
                Some(next) => {
                    prop_assert!(elapsed < wait);
                    prop_assert!(max.is_none_or(|m| attempts <= m));
                    prop_assert!(next <= b.base + b.jitter);
                    prop_assert!(elapsed + next <= wait);
                }
                None => prop_assert!(elapsed >= wait || max.is_some_and(|m| attempts > m)),
            }
        }

        /// A renewal never lets the total hold pass the maximum.
        #[test]
        fn renewal_respects_max_hold(held_ms in 0u64..100_000, ttl_ms in 1u64..100_000, max_ms in 0u64..200_000) {
            let t0 = Instant::now();
            let now = t0 + Duration::from_millis(held_ms);
            let ttl = Duration::from_millis(ttl_ms);
            let max = Duration::from_millis(max_ms);
            if may_renew(t0, now, ttl, max) {
                prop_assert!(now + ttl <= t0 + max);
            }
            prop_assert!(renew_at(now, ttl) < now + ttl);
        }
    }
}
