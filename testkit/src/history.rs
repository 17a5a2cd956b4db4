//! A history of lock operations and a checker for it.
//!
//! Tests record every operation as it happens: an *invoke* event when it
//! starts, then *ok*, *fail* or *unknown* when it ends, each stamped on one
//! monotonic clock (a [`Recorder`] is shared by every task of a test).
//! Injected faults are recorded too. [`check`] then looks at the history
//! alone, without trusting the lock service or the resource, and reports:
//!
//! - (a) **fence order**: a lease granted after another lease (on the same
//!   resource) had ended must carry a greater fencing token. A lease is
//!   *granted* when its acquisition returned (the ok event) and *ends* at
//!   the earlier of its validity deadline and the invocation of its release.
//! - (b) **stale writes**: no write accepted by the resource may come from
//!   a lease that had ended before a lease whose write the resource had
//!   already accepted was granted (the resource let an old holder overwrite
//!   a newer one); and no accepted write may carry a lower token than one
//!   accepted before it was invoked (or an equal one from another lease).
//! - (c) **mutual exclusion**: no two leases on a resource were valid at the
//!   same time (their intervals from grant to end overlap).
//!
//! Plus well-formedness: timestamps never go backwards, every completion
//! matches one invocation, writes and releases name a granted lease.
//!
//! "Before" and "after" are strict real-time order on the recorder's clock:
//! an operation completed before another was invoked. Operations whose
//! outcome is unknown are never counted as having happened (a lease that
//! may have been granted, a write that may have landed), so they can hide a
//! violation but never invent one. The checker is pure: hand-made histories
//! test it (`cargo test -p testkit`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Time since the recorder's origin, on a monotonic clock.
pub type Time = Duration;

/// The id of one operation (its invocation and completion share it). A
/// lease is named by the id of the acquisition that granted it.
pub type OpId = u64;

/// What an operation does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Take a lock on `resource`; completes with [`Value::Lease`].
    Acquire { resource: String },
    /// Give back the lease granted by acquisition `lease`. The lease ends
    /// when this is invoked (if its validity had not run out before).
    Release { lease: OpId },
    /// Write to the fenced resource as the holder of `lease`, with fencing
    /// token `fence`. Ok: accepted; fail: rejected as stale.
    Write { lease: OpId, fence: u64 },
}

/// What a successful operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A granted lease: its fencing token, and until when it may be relied
    /// on (on the recorder's clock: see [`Recorder::time`]).
    Lease { fence: u64, valid_until: Time },
    /// Anything else (a release, an accepted write).
    Done,
}

/// One event of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Invoke(Op),
    /// The operation happened and returned this.
    Ok(Value),
    /// The operation certainly did not happen (a refused acquisition, a
    /// rejected write), with why.
    Fail(String),
    /// It may or may not have happened (a timeout, a crash).
    Unknown(String),
    /// A fault injected by the test (a node killed, a holder paused).
    Fault(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The operation (for `Fault`, an id of its own).
    pub id: OpId,
    /// Who did it (a client task, the fault injector...).
    pub process: usize,
    pub time: Time,
    pub kind: Kind,
}

#[derive(Debug, Default)]
struct Log {
    next: OpId,
    process: HashMap<OpId, usize>,
    events: Vec<Event>,
}

/// Records a history from many tasks or threads at once. Every event is
/// stamped under one lock, so the history's order is its time order.
#[derive(Debug)]
pub struct Recorder {
    origin: Instant,
    log: Mutex<Log>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            origin: Instant::now(),
            log: Mutex::new(Log::default()),
        }
    }

    /// `at` on the recorder's clock (for a lease's `valid_until`).
    pub fn time(&self, at: Instant) -> Time {
        at.saturating_duration_since(self.origin)
    }

    fn push(&self, id: Option<OpId>, process: Option<usize>, kind: Kind) -> OpId {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let time = self.origin.elapsed();
        let id = id.unwrap_or_else(|| {
            log.next += 1;
            log.next
        });
        let process = match process {
            Some(p) => {
                log.process.insert(id, p);
                p
            }
            None => log.process.get(&id).copied().unwrap_or(usize::MAX),
        };
        log.events.push(Event {
            id,
            process,
            time,
            kind,
        });
        id
    }

    /// `process` starts `op`; returns its id.
    pub fn invoke(&self, process: usize, op: Op) -> OpId {
        self.push(None, Some(process), Kind::Invoke(op))
    }

    pub fn ok(&self, id: OpId, value: Value) {
        self.push(Some(id), None, Kind::Ok(value));
    }

    pub fn fail(&self, id: OpId, why: impl Into<String>) {
        self.push(Some(id), None, Kind::Fail(why.into()));
    }

    pub fn unknown(&self, id: OpId, why: impl Into<String>) {
        self.push(Some(id), None, Kind::Unknown(why.into()));
    }

    /// Records an injected fault.
    pub fn fault(&self, process: usize, what: impl Into<String>) {
        self.push(None, Some(process), Kind::Fault(what.into()));
    }

    /// Everything recorded so far, in order.
    pub fn history(&self) -> Vec<Event> {
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .events
            .clone()
    }
}

/// Something the history shows that must not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The history itself is inconsistent (a test bug, or a recorder bug).
    Malformed { id: OpId, reason: String },
    /// (a) `later` was granted after `earlier` ended, with a token not
    /// greater than `earlier`'s.
    FenceOrder {
        resource: String,
        earlier: OpId,
        earlier_fence: u64,
        later: OpId,
        later_fence: u64,
    },
    /// (b) `write` (by `lease`) was accepted although `newer_write`, by a
    /// lease granted after `lease` ended, had been accepted before it was
    /// invoked.
    StaleWrite {
        write: OpId,
        lease: OpId,
        newer_write: OpId,
        newer_lease: OpId,
    },
    /// (b) `write` was accepted with token `fence` although `earlier_write`
    /// had been accepted with a greater one (or an equal one from another
    /// lease) before it was invoked.
    FenceRegressed {
        write: OpId,
        fence: u64,
        earlier_write: OpId,
        earlier_fence: u64,
    },
    /// (c) leases `a` and `b` were valid at the same time.
    Overlap { resource: String, a: OpId, b: OpId },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Malformed { id, reason } => write!(f, "malformed history at op {id}: {reason}"),
            Violation::FenceOrder {
                resource,
                earlier,
                earlier_fence,
                later,
                later_fence,
            } => write!(
                f,
                "fence order on {resource:?}: lease {later} (fence {later_fence}) was granted after \
                 lease {earlier} (fence {earlier_fence}) ended, with a token not greater"
            ),
            Violation::StaleWrite {
                write,
                lease,
                newer_write,
                newer_lease,
            } => write!(
                f,
                "stale write accepted: write {write} of lease {lease} after write {newer_write} of \
                 lease {newer_lease}, which was granted after lease {lease} ended"
            ),
            Violation::FenceRegressed {
                write,
                fence,
                earlier_write,
                earlier_fence,
            } => write!(
                f,
                "stale token accepted: write {write} with fence {fence} after write {earlier_write} \
                 with fence {earlier_fence}"
            ),
            Violation::Overlap { resource, a, b } => write!(
                f,
                "mutual exclusion on {resource:?}: leases {a} and {b} were valid at the same time"
            ),
        }
    }
}

/// What [`check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Leases granted (acquisitions that returned ok).
    pub leases: usize,
    /// Acquisitions that failed, or whose outcome is unknown.
    pub acquisitions_failed: usize,
    pub acquisitions_unknown: usize,
    /// Injected faults.
    pub faults: usize,
    pub writes_accepted: usize,
    pub writes_rejected: usize,
    pub writes_unknown: usize,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// How many violations of each kind: (malformed, fence order, stale
    /// writes and regressed tokens, overlaps).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for v in &self.violations {
            match v {
                Violation::Malformed { .. } => c.0 += 1,
                Violation::FenceOrder { .. } => c.1 += 1,
                Violation::StaleWrite { .. } | Violation::FenceRegressed { .. } => c.2 += 1,
                Violation::Overlap { .. } => c.3 += 1,
            }
        }
        c
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (malformed, order, stale, overlap) = self.counts();
        write!(
            f,
            "{} leases ({} acquisitions failed, {} unknown), {} faults, writes {} accepted / {} rejected / {} unknown; \
             {} violations (fence order {order}, stale writes {stale}, overlaps {overlap}, malformed {malformed})",
            self.leases,
            self.acquisitions_failed,
            self.acquisitions_unknown,
            self.faults,
            self.writes_accepted,
            self.writes_rejected,
            self.writes_unknown,
            self.violations.len(),
        )?;
        for v in self.violations.iter().take(10) {
            write!(f, "\n  {v}")?;
        }
        if self.violations.len() > 10 {
            write!(f, "\n  ... and {} more", self.violations.len() - 10)?;
        }
        Ok(())
    }
}

/// A granted lease, as the history shows it.
#[derive(Clone, Debug)]
struct Lease {
    id: OpId,
    fence: u64,
    granted: Time,
    /// The earlier of its validity deadline and its release's invocation,
    /// never before `granted`.
    end: Time,
}

/// An accepted write.
#[derive(Clone, Debug)]
struct Write {
    id: OpId,
    lease: OpId,
    fence: u64,
    invoked: Time,
    completed: Time,
}

/// Checks a history; see the module documentation for what it checks.
pub fn check(history: &[Event]) -> Report {
    let mut report = Report::default();
    let malformed = |id: OpId, reason: String| Violation::Malformed { id, reason };
    let mut violations = Vec::new();

    // Pair invocations with completions.
    let mut invoked: HashMap<OpId, (Time, Op)> = HashMap::new();
    let mut done: HashMap<OpId, (Time, Kind)> = HashMap::new();
    let mut last = Duration::ZERO;
    let mut order: Vec<OpId> = Vec::new();
    for e in history {
        if e.time < last {
            violations.push(malformed(
                e.id,
                format!("time goes back from {last:?} to {:?}", e.time),
            ));
        }
        last = last.max(e.time);
        match &e.kind {
            Kind::Invoke(op) => {
                if invoked.insert(e.id, (e.time, op.clone())).is_some() {
                    violations.push(malformed(e.id, "invoked twice".into()));
                } else {
                    order.push(e.id);
                }
            }
            Kind::Fault(_) => report.faults += 1,
            kind => {
                if !invoked.contains_key(&e.id) {
                    violations.push(malformed(e.id, "completed but never invoked".into()));
                } else if done.insert(e.id, (e.time, kind.clone())).is_some() {
                    violations.push(malformed(e.id, "completed twice".into()));
                }
            }
        }
    }

    // Leases, per resource.
    let mut leases: BTreeMap<String, Vec<Lease>> = BTreeMap::new();
    let mut lease_index: HashMap<OpId, (String, usize)> = HashMap::new();
    for id in &order {
        let Some((_, Op::Acquire { resource })) = invoked.get(id) else {
            continue;
        };
        match done.get(id) {
            Some((time, Kind::Ok(Value::Lease { fence, valid_until }))) => {
                report.leases += 1;
                let list = leases.entry(resource.clone()).or_default();
                lease_index.insert(*id, (resource.clone(), list.len()));
                list.push(Lease {
                    id: *id,
                    fence: *fence,
                    granted: *time,
                    end: (*valid_until).max(*time),
                });
            }
            Some((_, Kind::Ok(other))) => {
                violations.push(malformed(*id, format!("acquisition returned {other:?}")));
            }
            Some((_, Kind::Fail(_))) => report.acquisitions_failed += 1,
            _ => report.acquisitions_unknown += 1,
        }
    }
    // Releases end their lease early.
    for id in &order {
        let Some((time, Op::Release { lease })) = invoked.get(id) else {
            continue;
        };
        match lease_index.get(lease) {
            Some((resource, i)) => {
                if let Some(l) = leases.get_mut(resource).and_then(|list| list.get_mut(*i)) {
                    if *time < l.granted {
                        violations.push(malformed(
                            *id,
                            format!("release of lease {lease} before it was granted"),
                        ));
                    }
                    l.end = l.end.min(*time).max(l.granted);
                }
            }
            None => violations.push(malformed(
                *id,
                format!("release of lease {lease}, which was never granted"),
            )),
        }
    }
    // Writes, per resource.
    let mut writes: BTreeMap<String, Vec<Write>> = BTreeMap::new();
    for id in &order {
        let Some((invoked_at, Op::Write { lease, fence })) = invoked.get(id) else {
            continue;
        };
        let Some((resource, _)) = lease_index.get(lease) else {
            violations.push(malformed(
                *id,
                format!("write by lease {lease}, which was never granted"),
            ));
            continue;
        };
        match done.get(id) {
            Some((completed, Kind::Ok(_))) => {
                report.writes_accepted += 1;
                writes.entry(resource.clone()).or_default().push(Write {
                    id: *id,
                    lease: *lease,
                    fence: *fence,
                    invoked: *invoked_at,
                    completed: *completed,
                });
            }
            Some((_, Kind::Fail(_))) => report.writes_rejected += 1,
            _ => report.writes_unknown += 1,
        }
    }

    for (resource, list) in &leases {
        check_fence_order(resource, list, &mut violations);
        check_overlap(resource, list, &mut violations);
    }
    for (resource, list) in &writes {
        let Some(resource_leases) = leases.get(resource) else {
            continue;
        };
        let by_id: HashMap<OpId, &Lease> = resource_leases.iter().map(|l| (l.id, l)).collect();
        check_writes(list, &by_id, &mut violations);
    }
    report.violations = violations;
    report
}

/// (a): for every lease B, every lease A that ended before B was granted
/// has a smaller fence. Sorted by end, a prefix maximum of the fence answers
/// "the largest fence of the leases ended before t" for any t.
fn check_fence_order(resource: &str, leases: &[Lease], out: &mut Vec<Violation>) {
    let mut by_end: Vec<&Lease> = leases.iter().collect();
    by_end.sort_by_key(|l| (l.end, l.granted, l.id));
    let mut best: Vec<&Lease> = Vec::with_capacity(by_end.len());
    for l in &by_end {
        let keep = match best.last() {
            Some(b) if b.fence >= l.fence => *b,
            _ => *l,
        };
        best.push(keep);
    }
    for b in leases {
        // Leases with end < b.granted (never b itself: its end >= its grant).
        let n = by_end.partition_point(|a| a.end < b.granted);
        if let Some(a) = n.checked_sub(1).and_then(|i| best.get(i)) {
            if a.fence >= b.fence {
                out.push(Violation::FenceOrder {
                    resource: resource.to_owned(),
                    earlier: a.id,
                    earlier_fence: a.fence,
                    later: b.id,
                    later_fence: b.fence,
                });
            }
        }
    }
}

/// (c): sorted by grant, each lease must start at or after the latest end
/// so far.
fn check_overlap(resource: &str, leases: &[Lease], out: &mut Vec<Violation>) {
    let mut by_grant: Vec<&Lease> = leases.iter().filter(|l| l.end > l.granted).collect();
    by_grant.sort_by_key(|l| (l.granted, l.id));
    let mut latest: Option<&Lease> = None;
    for l in by_grant {
        if let Some(a) = latest {
            if l.granted < a.end {
                out.push(Violation::Overlap {
                    resource: resource.to_owned(),
                    a: a.id,
                    b: l.id,
                });
            }
        }
        if latest.is_none_or(|a| l.end > a.end) {
            latest = Some(l);
        }
    }
}

/// (b): for every accepted write w, look at the accepted writes completed
/// before w was invoked (a prefix of them sorted by completion): none may
/// belong to a lease granted after w's lease ended, nor carry a greater
/// token (or an equal one from another lease).
fn check_writes(writes: &[Write], leases: &HashMap<OpId, &Lease>, out: &mut Vec<Violation>) {
    let granted = |w: &Write| leases.get(&w.lease).map_or(Duration::ZERO, |l| l.granted);
    let mut by_done: Vec<&Write> = writes.iter().collect();
    by_done.sort_by_key(|w| (w.completed, w.id));
    // Prefix maxima: the write whose lease was granted last, and the write
    // with the greatest token (and, for equal tokens, the other leases'
    // writes are found through `other_at_max`).
    let mut newest: Vec<&Write> = Vec::with_capacity(by_done.len());
    let mut highest: Vec<&Write> = Vec::with_capacity(by_done.len());
    // For the highest token, a write at that token by a lease other than
    // the first one seen at it, if any.
    let mut other_at_max: Vec<Option<&Write>> = Vec::with_capacity(by_done.len());
    for w in &by_done {
        let n = match newest.last() {
            Some(b) if granted(b) >= granted(w) => *b,
            _ => *w,
        };
        newest.push(n);
        let (h, o) = match (highest.last(), other_at_max.last()) {
            (Some(h), o) if h.fence > w.fence => (*h, o.copied().flatten()),
            (Some(h), o) if h.fence == w.fence => {
                let other = o.copied().flatten().or((h.lease != w.lease).then_some(*w));
                (*h, other)
            }
            _ => (*w, None),
        };
        highest.push(h);
        other_at_max.push(o);
    }
    for w in writes {
        let Some(lease) = leases.get(&w.lease) else {
            continue;
        };
        let n = by_done.partition_point(|x| x.completed < w.invoked);
        let Some(i) = n.checked_sub(1) else {
            continue;
        };
        if let Some(newer) = newest.get(i) {
            if granted(newer) > lease.end {
                out.push(Violation::StaleWrite {
                    write: w.id,
                    lease: w.lease,
                    newer_write: newer.id,
                    newer_lease: newer.lease,
                });
                continue;
            }
        }
        if let Some(h) = highest.get(i) {
            let equal_from_other = if h.fence == w.fence {
                if h.lease != w.lease {
                    Some(*h)
                } else {
                    other_at_max.get(i).copied().flatten()
                }
            } else {
                None
            };
            if h.fence > w.fence {
                out.push(Violation::FenceRegressed {
                    write: w.id,
                    fence: w.fence,
                    earlier_write: h.id,
                    earlier_fence: h.fence,
                });
            } else if let Some(e) = equal_from_other {
                out.push(Violation::FenceRegressed {
                    write: w.id,
                    fence: w.fence,
                    earlier_write: e.id,
                    earlier_fence: e.fence,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Time {
        Duration::from_millis(n)
    }

    /// Builds hand-made histories with explicit times (in ms).
    #[derive(Default)]
    struct H {
        events: Vec<Event>,
        next: OpId,
    }

    impl H {
        fn ev(&mut self, id: OpId, t: u64, kind: Kind) {
            self.events.push(Event {
                id,
                process: 0,
                time: ms(t),
                kind,
            });
        }

        fn invoke(&mut self, t: u64, op: Op) -> OpId {
            self.next += 1;
            let id = self.next;
            self.ev(id, t, Kind::Invoke(op));
            id
        }

        /// A lease on `r` asked at `t0`, granted at `t1` with `fence`,
        /// valid until `until`.
        fn lease(&mut self, r: &str, t0: u64, t1: u64, fence: u64, until: u64) -> OpId {
            let id = self.invoke(t0, Op::Acquire { resource: r.into() });
            self.ev(
                id,
                t1,
                Kind::Ok(Value::Lease {
                    fence,
                    valid_until: ms(until),
                }),
            );
            id
        }

        fn release(&mut self, lease: OpId, t0: u64, t1: u64) {
            let id = self.invoke(t0, Op::Release { lease });
            self.ev(id, t1, Kind::Ok(Value::Done));
        }

        /// A write by `lease` with `fence` from `t0` to `t1`, accepted or not.
        fn write(&mut self, lease: OpId, fence: u64, t0: u64, t1: u64, accepted: bool) -> OpId {
            let id = self.invoke(t0, Op::Write { lease, fence });
            let kind = if accepted {
                Kind::Ok(Value::Done)
            } else {
                Kind::Fail("stale".into())
            };
            self.ev(id, t1, kind);
            id
        }

        fn check(&self) -> Report {
            // Hand-made histories are written in any order: sort by time
            // (stable, so an invocation stays before its completion).
            let mut events = self.events.clone();
            events.sort_by_key(|e| e.time);
            check(&events)
        }
    }

    #[test]
    fn a_clean_history_passes_and_is_counted() {
        let mut h = H::default();
        let a = h.lease("r", 0, 2, 10, 100);
        h.write(a, 10, 3, 4, true);
        h.write(a, 10, 5, 6, true);
        h.release(a, 7, 8);
        let b = h.lease("r", 9, 11, 12, 200);
        h.write(b, 12, 12, 13, true);
        // a woke up late: its write is rejected, as it must be.
        h.write(a, 10, 14, 15, false);
        h.release(b, 20, 21);
        // A failed acquisition and a fault are only counted.
        let c = h.invoke(
            30,
            Op::Acquire {
                resource: "r".into(),
            },
        );
        h.ev(c, 31, Kind::Fail("taken".into()));
        h.ev(99, 32, Kind::Fault("kill node 1".into()));
        // Another resource has its own order.
        let d = h.lease("s", 1, 3, 5, 50);
        h.write(d, 5, 4, 5, true);
        let r = h.check();
        assert!(r.is_ok(), "{r}");
        assert_eq!(
            (
                r.leases,
                r.acquisitions_failed,
                r.faults,
                r.writes_accepted,
                r.writes_rejected
            ),
            (3, 1, 1, 4, 1)
        );
        assert!(r.to_string().contains("0 violations"), "{r}");
    }

    #[test]
    fn tokens_that_go_backwards_are_flagged() {
        let mut h = H::default();
        let a = h.lease("r", 0, 1, 100, 50);
        let b = h.lease("r", 60, 61, 40, 120); // granted after a ended (expired)
        let r = h.check();
        assert_eq!(
            r.violations,
            vec![Violation::FenceOrder {
                resource: "r".into(),
                earlier: a,
                earlier_fence: 100,
                later: b,
                later_fence: 40,
            }]
        );
        // Equal tokens are not an increase either.
        let mut h = H::default();
        let a = h.lease("r", 0, 1, 100, 50);
        h.release(a, 10, 11);
        h.lease("r", 20, 21, 100, 120);
        assert_eq!(h.check().counts().1, 1, "{}", h.check());
    }

    #[test]
    fn order_needs_real_time_precedence() {
        // b granted at 50, a ends at 50: not after, so not ordered (and
        // not overlapping: the intervals are half-open).
        let mut h = H::default();
        h.lease("r", 0, 1, 100, 50);
        h.lease("r", 40, 50, 40, 120);
        assert!(h.check().is_ok(), "{}", h.check());
        // The release ends a lease early: a lease granted after it must be greater.
        let mut h = H::default();
        let a = h.lease("r", 0, 1, 100, 1000);
        h.release(a, 10, 30);
        h.lease("r", 20, 25, 50, 120);
        assert_eq!(h.check().counts(), (0, 1, 0, 0), "{}", h.check());
    }

    #[test]
    fn overlapping_leases_are_flagged() {
        let mut h = H::default();
        let a = h.lease("r", 0, 1, 10, 100);
        let b = h.lease("r", 50, 51, 11, 150);
        let r = h.check();
        assert_eq!(
            r.violations,
            vec![Violation::Overlap {
                resource: "r".into(),
                a,
                b
            }]
        );
        // Leases on different resources may overlap.
        let mut h = H::default();
        h.lease("r", 0, 1, 10, 100);
        h.lease("s", 50, 51, 11, 150);
        assert!(h.check().is_ok());
        // A lease contained in an earlier long one is caught too.
        let mut h = H::default();
        h.lease("r", 0, 1, 10, 1000);
        h.lease("r", 100, 101, 11, 150);
        h.lease("r", 200, 201, 12, 250);
        assert_eq!(h.check().counts().3, 2, "{}", h.check());
    }

    #[test]
    fn a_stale_write_accepted_after_a_newer_lease_wrote_is_flagged() {
        // The classic: a is paused past its lease, b takes over and writes,
        // a wakes up and its write is accepted (fences out of order).
        let mut h = H::default();
        let a = h.lease("r", 0, 1, 100, 50);
        let b = h.lease("r", 60, 61, 40, 120);
        let wb = h.write(b, 40, 62, 63, true);
        let wa = h.write(a, 100, 70, 71, true);
        let r = h.check();
        assert!(r.violations.contains(&Violation::StaleWrite {
            write: wa,
            lease: a,
            newer_write: wb,
            newer_lease: b,
        }));
        // Even with fences in order, a store that accepts the old write is caught.
        let mut h = H::default();
        let a = h.lease("r", 0, 1, 10, 50);
        let b = h.lease("r", 60, 61, 40, 120);
        let wb = h.write(b, 40, 62, 63, true);
        let wa = h.write(a, 10, 70, 71, true);
        let r = h.check();
        assert_eq!(
            r.violations,
            vec![Violation::StaleWrite {
                write: wa,
                lease: a,
                newer_write: wb,
                newer_lease: b,
            }]
        );
    }

    #[test]
    fn a_late_write_before_the_newer_holder_wrote_is_fine() {
        // a's write lands late but before b wrote anything: fencing allows it.
        let mut h = H::default();
        let a = h.lease("r", 0, 1, 10, 50);
        let b = h.lease("r", 60, 61, 40, 120);
        h.write(a, 10, 70, 71, true);
        h.write(b, 40, 72, 73, true);
        assert!(h.check().is_ok(), "{}", h.check());
        // Concurrent (overlapping in time) writes are not ordered.
        let mut h = H::default();
        let a = h.lease("r", 0, 1, 10, 50);
        let b = h.lease("r", 60, 61, 40, 120);
        h.write(b, 40, 62, 80, true);
        h.write(a, 10, 70, 71, true);
        let r = h.check();
        assert!(r.is_ok(), "{r}");
    }

    #[test]
    fn a_lower_token_accepted_after_a_higher_one_is_flagged() {
        // A store without the check (or with a wrong one): the writes are
        // in lease order by time but tokens regress.
        let mut h = H::default();
        let a = h.lease("r", 0, 1, 50, 100);
        let wa = h.write(a, 50, 2, 3, true);
        let b = h.lease("s", 0, 1, 7, 100); // another resource: its own store
        h.write(b, 7, 4, 5, true);
        let wa2 = h.write(a, 40, 6, 7, true); // a bug: the holder sends a lower token
        let r = h.check();
        assert_eq!(
            r.violations,
            vec![Violation::FenceRegressed {
                write: wa2,
                fence: 40,
                earlier_write: wa,
                earlier_fence: 50,
            }]
        );
        // An equal token from another lease.
        let mut h = H::default();
        let a = h.lease("r", 0, 1, 50, 10);
        let wa = h.write(a, 50, 2, 3, true);
        let b = h.lease("r", 20, 21, 50, 100);
        let wb = h.write(b, 50, 22, 23, true);
        let r = h.check();
        assert!(
            r.violations.contains(&Violation::FenceRegressed {
                write: wb,
                fence: 50,
                earlier_write: wa,
                earlier_fence: 50,
            }),
            "{r}"
        );
    }

    #[test]
    fn unknown_outcomes_never_invent_a_violation() {
        let mut h = H::default();
        // A lease that may have been granted, and a write that may have landed.
        let x = h.invoke(
            0,
            Op::Acquire {
                resource: "r".into(),
            },
        );
        h.ev(x, 40, Kind::Unknown("timeout".into()));
        let a = h.lease("r", 0, 1, 100, 50);
        let w = h.invoke(
            2,
            Op::Write {
                lease: a,
                fence: 100,
            },
        );
        h.ev(w, 3, Kind::Unknown("crash".into()));
        let b = h.lease("r", 60, 61, 200, 120);
        h.write(b, 200, 62, 63, true);
        // Still in flight at the end.
        h.invoke(
            70,
            Op::Write {
                lease: b,
                fence: 200,
            },
        );
        let r = h.check();
        assert!(r.is_ok(), "{r}");
        assert_eq!(
            (r.acquisitions_unknown, r.writes_unknown, r.writes_accepted),
            (1, 2, 1)
        );
    }

    #[test]
    fn malformed_histories_are_flagged() {
        let lease_ok = Kind::Ok(Value::Lease {
            fence: 1,
            valid_until: ms(10),
        });
        let acquire = Kind::Invoke(Op::Acquire {
            resource: "r".into(),
        });
        let at = |id, t, kind| Event {
            id,
            process: 0,
            time: ms(t),
            kind,
        };
        let cases: Vec<(Vec<Event>, &str)> = vec![
            (
                vec![at(1, 5, acquire.clone()), at(1, 4, lease_ok.clone())],
                "time goes back",
            ),
            (vec![at(1, 1, lease_ok.clone())], "never invoked"),
            (
                vec![
                    at(1, 1, acquire.clone()),
                    at(1, 2, lease_ok.clone()),
                    at(1, 3, lease_ok.clone()),
                ],
                "completed twice",
            ),
            (
                vec![at(1, 1, acquire.clone()), at(1, 2, acquire.clone())],
                "invoked twice",
            ),
            (
                vec![at(1, 1, acquire.clone()), at(1, 2, Kind::Ok(Value::Done))],
                "acquisition returned",
            ),
            (
                vec![at(1, 1, Kind::Invoke(Op::Write { lease: 7, fence: 1 }))],
                "never granted",
            ),
            (
                vec![at(1, 1, Kind::Invoke(Op::Release { lease: 7 }))],
                "never granted",
            ),
        ];
        for (events, want) in cases {
            let r = check(&events);
            assert!(
                r.violations.iter().any(
                    |v| matches!(v, Violation::Malformed { reason, .. } if reason.contains(want))
                ),
                "{want}: {r}"
            );
        }
    }

    #[test]
    fn the_recorder_stamps_in_order_and_pairs_completions() {
        let rec = Recorder::new();
        let a = rec.invoke(
            3,
            Op::Acquire {
                resource: "r".into(),
            },
        );
        let until = rec.time(Instant::now() + Duration::from_secs(1));
        rec.ok(
            a,
            Value::Lease {
                fence: 9,
                valid_until: until,
            },
        );
        rec.fault(99, "pause node 2");
        let w = rec.invoke(3, Op::Write { lease: a, fence: 9 });
        rec.fail(w, "stale");
        let u = rec.invoke(4, Op::Release { lease: a });
        rec.unknown(u, "timeout");
        let h = rec.history();
        assert_eq!(h.len(), 7);
        assert!(h.windows(2).all(|p| p[0].time <= p[1].time));
        assert_eq!(h[1].process, 3, "a completion has its invocation's process");
        assert_ne!(a, w);
        let r = check(&h);
        assert!(r.is_ok(), "{r}");
        assert_eq!((r.leases, r.faults, r.writes_rejected), (1, 1, 1));
    }
}
