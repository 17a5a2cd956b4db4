use super::*;
use proptest::prelude::*;

/// name, current lock, token, now, expected reply, expected change
type Case<R> = (&'static str, Option<Lock>, &'static [u8], Micros, R, Change);

const A: &[u8] = b"token-a";
const B: &[u8] = b"token-b";

fn held(owner: &[u8], fence: u64, deadline: Micros) -> Lock {
    Lock::new(owner, fence, deadline, 100)
}

fn req(token: &[u8], ttl: Micros) -> AcquireRequest<&[u8]> {
    AcquireRequest {
        token,
        ttl,
        fence_floor: 0,
        max_hold: None,
    }
}

#[test]
fn acquire_table() {
    struct Case {
        name: &'static str,
        current: Option<Lock>,
        token: &'static [u8],
        now: Micros,
        reply: Acquired,
        deadline: Option<Micros>,
    }
    let cases = [
        Case {
            name: "free lock is granted with the next fence",
            current: None,
            token: A,
            now: 1_000,
            reply: Acquired::Granted(8),
            deadline: Some(1_500),
        },
        Case {
            name: "live lock of another token is refused",
            current: Some(held(B, 3, 2_000)),
            token: A,
            now: 1_999,
            reply: Acquired::Taken,
            deadline: None,
        },
        Case {
            name: "re-acquire by the holder keeps the fence and moves the deadline",
            current: Some(held(A, 3, 2_000)),
            token: A,
            now: 1_000,
            reply: Acquired::Refreshed(3),
            deadline: Some(1_500),
        },
        Case {
            name: "a lock is free exactly at its deadline",
            current: Some(held(B, 3, 2_000)),
            token: A,
            now: 2_000,
            reply: Acquired::Granted(8),
            deadline: Some(2_500),
        },
        Case {
            name: "the holder of an expired lock gets a new grant",
            current: Some(held(A, 3, 2_000)),
            token: A,
            now: 2_001,
            reply: Acquired::Granted(8),
            deadline: Some(2_501),
        },
    ];
    for case in cases {
        let mut fences = FenceCounter::starting_at(7);
        let out = acquire(
            case.current.as_ref(),
            &req(case.token, 500),
            case.now,
            &mut fences,
        );
        assert_eq!(out.reply, case.reply, "{}", case.name);
        match (&out.change, case.deadline) {
            (Change::Put(lock), Some(deadline)) => {
                assert_eq!(lock.deadline, deadline, "{}", case.name);
                assert_eq!(lock.owner(), case.token, "{}", case.name);
            }
            (Change::Keep, None) => {}
            (change, _) => panic!("{}: unexpected change {change:?}", case.name),
        }
    }
}

#[test]
fn a_new_grant_resets_acquisition_time_and_extensions() {
    let mut fences = FenceCounter::default();
    let old = held(A, 1, 10).with_extensions(4);
    let out = acquire(Some(&old), &req(B, 100), 50, &mut fences);
    let Change::Put(lock) = out.change else {
        panic!("expected a grant")
    };
    assert_eq!((lock.acquired_at, lock.extensions()), (50, 0));
}

#[test]
fn re_acquire_keeps_acquisition_time_and_extensions() {
    let mut fences = FenceCounter::default();
    let old = held(A, 1, 1_000).with_extensions(4);
    let out = acquire(Some(&old), &req(A, 100), 50, &mut fences);
    assert_eq!(
        out.change,
        Change::Put(Lock {
            deadline: 150,
            ..old
        })
    );
    assert_eq!(fences.last(), 1, "a refresh draws no new fence");
}

#[test]
fn extend_table() {
    let cases: [Case<Extended>; 5] = [
        (
            "nothing to extend",
            None,
            A,
            10,
            Extended::NotHeld,
            Change::Keep,
        ),
        (
            "holder extends",
            Some(held(A, 2, 100)),
            A,
            99,
            Extended::Extended,
            Change::Put(
                Lock {
                    deadline: 149,
                    ..held(A, 2, 100)
                }
                .with_extensions(1),
            ),
        ),
        (
            "another token cannot extend",
            Some(held(B, 2, 100)),
            A,
            99,
            Extended::NotHeld,
            Change::Keep,
        ),
        (
            "an expired lock is not revived and goes away",
            Some(held(A, 2, 100)),
            A,
            100,
            Extended::NotHeld,
            Change::Remove,
        ),
        (
            "an expired lock of another token goes away too",
            Some(held(B, 2, 100)),
            A,
            150,
            Extended::NotHeld,
            Change::Remove,
        ),
    ];
    for (name, current, token, now, reply, change) in cases {
        let out = extend(current.as_ref(), token, 50, now);
        assert_eq!((out.reply, out.change), (reply, change), "{name}");
    }
}

#[test]
fn release_table() {
    let cases: [Case<Released>; 4] = [
        (
            "nothing to release",
            None,
            A,
            10,
            Released::NotHeld,
            Change::Keep,
        ),
        (
            "holder releases",
            Some(held(A, 2, 100)),
            A,
            99,
            Released::Freed,
            Change::Remove,
        ),
        (
            "release by another token keeps the lock",
            Some(held(B, 2, 100)),
            A,
            99,
            Released::HeldByAnother,
            Change::Keep,
        ),
        (
            "release after expiry replies 0 and removes the key",
            Some(held(A, 2, 100)),
            A,
            100,
            Released::NotHeld,
            Change::Remove,
        ),
    ];
    for (name, current, token, now, reply, change) in cases {
        let out = release(current.as_ref(), token, now);
        assert_eq!((out.reply, out.change), (reply, change), "{name}");
    }
}

#[test]
fn view_rounds_ttl_up_and_hides_the_token() {
    let lock = Lock::new(b"secret", 9, 10_001, 1_000)
        .with_extensions(2)
        .with_hold_limit(Some(20_000));
    let v = view(Some(&lock), 5_999).expect("live");
    assert_eq!(v.ttl_ms, 5, "4002 us left shows as 5 ms");
    assert_eq!(v.acquired_ms, 4);
    assert_eq!((v.fence, v.extensions), (9, 2));
    assert_eq!(v.owner.len(), 16);
    assert!(!v.owner.contains("secret"));
    assert_eq!(v.owner, fingerprint(b"secret"));
    assert_eq!(v.hold_left_ms, Some(14));
    assert_ne!(v.owner, fingerprint(b"secreT"));
    assert_eq!(view(Some(&lock), 10_001), None, "expired shows as free");
    assert_eq!(view(None, 0), None);
}

#[test]
fn fence_counter_stops_below_i64_max() {
    let mut fences = FenceCounter::starting_at(MAX_FENCE - 1);
    assert_eq!(fences.next_fence(), Some(MAX_FENCE));
    assert_eq!(fences.next_fence(), None);
    let out = acquire(None, &req(A, 10), 0, &mut fences);
    assert_eq!(
        (out.reply, out.change),
        (Acquired::FencesExhausted, Change::Keep)
    );
}

#[test]
fn observe_only_raises() {
    let mut fences = FenceCounter::starting_at(10);
    fences.observe(5);
    assert_eq!(fences.last(), 10);
    fences.observe(20);
    assert_eq!(fences.next_fence(), Some(21));
}

#[test]
fn fence_ceiling_table() {
    // 2026-12-05 in microseconds since the epoch.
    const WALL: u64 = 1_796_460_000_000_000;
    let cases: &[(&str, u64, u64, u64)] = &[
        // name, counter, wall clock (µs), ceiling
        (
            "the clock plus the headroom",
            WALL,
            WALL,
            WALL + FENCE_HEADROOM,
        ),
        (
            "a counter a little ahead",
            WALL + 5,
            WALL,
            WALL + FENCE_HEADROOM,
        ),
        (
            "a counter above the bound is its own ceiling",
            WALL + 2 * FENCE_HEADROOM,
            WALL,
            WALL + 2 * FENCE_HEADROOM,
        ),
        (
            "a clock at 0 still allows the headroom",
            0,
            0,
            FENCE_HEADROOM,
        ),
        ("never above 2^63 - 1", 0, u64::MAX, MAX_FENCE),
        ("an exhausted counter", MAX_FENCE, WALL, MAX_FENCE),
    ];
    for (name, last, wall, ceiling) in cases {
        assert_eq!(fence_ceiling(*last, *wall), *ceiling, "{name}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Whatever floors clients send, accepted only up to the ceiling, the
    /// counter never ends above the last ceiling plus the grants made: the
    /// node keeps its headroom, and repeating a raise gains nothing.
    #[test]
    fn admitted_floors_never_spend_the_counter(
        start in 1_700_000_000_000_000u64..1_900_000_000_000_000,
        steps in proptest::collection::vec((0u64..1_000_000, any::<u64>(), any::<bool>()), 1..200),
    ) {
        let mut fences = FenceCounter::starting_at(start);
        let mut wall = start;
        let mut grants = 0u64;
        let mut slot: Option<Lock> = None;
        for (now, (advance, asked, holder_a)) in (1u64..).zip(steps) {
            wall = wall.saturating_add(advance);
            let ceiling = fence_ceiling(fences.last(), wall);
            let floor = if asked % 2 == 0 { asked.min(ceiling) } else { asked };
            if floor > ceiling || floor == 0 {
                continue; // refused when parsed: nothing changes
            }
            let token = if holder_a { A } else { B };
            let request = AcquireRequest { fence_floor: floor, ..req(token, 1) };
            let out = acquire(slot.as_ref(), &request, now * 10, &mut fences);
            if out.reply.fence().is_some() {
                grants += 1;
            }
            prop_assert_ne!(out.reply, Acquired::FencesExhausted);
            apply(&mut slot, out.change);
            prop_assert!(fences.last() <= (wall + FENCE_HEADROOM).max(start) + grants);
        }
    }
}

#[test]
fn a_fence_floor_raises_new_grants_refreshes_and_the_counter() {
    let mut fences = FenceCounter::starting_at(10);
    let floor = |token, fence_floor| AcquireRequest {
        fence_floor,
        ..req(token, 100)
    };
    let out = acquire(None, &floor(A, 50), 0, &mut fences);
    assert_eq!(
        out.reply,
        Acquired::Granted(50),
        "a new grant takes the floor"
    );
    assert_eq!(fences.last(), 50);
    let Change::Put(lock) = out.change else {
        panic!()
    };
    let out = acquire(Some(&lock), &floor(A, 70), 10, &mut fences);
    assert_eq!(
        out.reply,
        Acquired::Refreshed(70),
        "the holder raises its fence"
    );
    assert_eq!(fences.last(), 70);
    let Change::Put(lock) = out.change else {
        panic!()
    };
    let out = acquire(Some(&lock), &floor(A, 60), 20, &mut fences);
    assert_eq!(
        out.reply,
        Acquired::Refreshed(70),
        "a lower floor never lowers it"
    );
    let out = acquire(Some(&lock), &floor(B, 90), 20, &mut fences);
    assert_eq!(
        (out.reply, fences.last()),
        (Acquired::Taken, 70),
        "others raise nothing"
    );
    let out = acquire(None, &floor(B, 5), 20, &mut fences);
    assert_eq!(
        out.reply,
        Acquired::Granted(71),
        "a floor below the counter has no effect"
    );
}

#[test]
fn the_hold_limit_bounds_extensions_and_refreshes() {
    let mut fences = FenceCounter::default();
    let bounded = AcquireRequest {
        max_hold: Some(1_000),
        ..req(A, 400)
    };
    let out = acquire(None, &bounded, 0, &mut fences);
    let Change::Put(lock) = out.change else {
        panic!()
    };
    assert_eq!(lock.hold_limit(), Some(1_000));
    let out = extend(Some(&lock), A, 400, 300);
    assert_eq!(
        out.reply,
        Extended::Extended,
        "deadline 700 is within the limit"
    );
    let Change::Put(lock) = out.change else {
        panic!()
    };
    let out = extend(Some(&lock), A, 400, 650);
    assert_eq!(
        (out.reply, out.change),
        (Extended::HoldLimit, Change::Keep),
        "1050 is past the limit"
    );
    let out = acquire(Some(&lock), &req(A, 400), 650, &mut fences);
    assert_eq!((out.reply, out.change), (Acquired::HoldLimit, Change::Keep));
    assert_eq!(
        extend(Some(&lock), A, 350, 650).reply,
        Extended::Extended,
        "up to the limit is fine"
    );
    assert_eq!(
        view(Some(&lock), 650).map(|v| v.hold_left_ms),
        Some(Some(0))
    );
}

#[test]
fn operations_report_finding_an_ended_lock() {
    let mut fences = FenceCounter::default();
    let old = held(A, 1, 100);
    assert!(acquire(Some(&old), &req(B, 10), 100, &mut fences).ended);
    assert!(!acquire(Some(&old), &req(B, 10), 99, &mut fences).ended);
    assert!(extend(Some(&old), A, 10, 150).ended);
    assert!(release(Some(&old), A, 150).ended);
    assert!(!release(None, A, 150).ended);
}

// ---- property test against a reference model ----

#[derive(Clone, Debug)]
enum Op {
    Acquire {
        key: usize,
        who: usize,
        ttl: u64,
        floor: u64,
    },
    Extend {
        key: usize,
        who: usize,
        ttl: u64,
    },
    Release {
        key: usize,
        who: usize,
    },
    Info {
        key: usize,
    },
    Pass {
        micros: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0..2usize,
            0..3usize,
            1..60u64,
            prop_oneof![3 => Just(0u64), 1 => 0..40u64]
        )
            .prop_map(|(key, who, ttl, floor)| Op::Acquire {
                key,
                who,
                ttl,
                floor
            }),
        (0..2usize, 0..3usize, 1..60u64).prop_map(|(key, who, ttl)| Op::Extend { key, who, ttl }),
        (0..2usize, 0..3usize).prop_map(|(key, who)| Op::Release { key, who }),
        (0..2usize).prop_map(|key| Op::Info { key }),
        (0..80u64).prop_map(|micros| Op::Pass { micros }),
    ]
}

/// The model: who holds each key until when, written as plainly as possible.
#[derive(Default)]
struct Model {
    holder: [Option<(usize, u64, Micros)>; 2],
    last_fence: u64,
}

impl Model {
    fn live(&self, key: usize, now: Micros) -> Option<(usize, u64, Micros)> {
        self.holder[key].filter(|(_, _, until)| now < *until)
    }
}

const WHO: [&[u8]; 3] = [b"alice", b"bob", b"carol"];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn state_machine_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let mut keys: [Option<Lock>; 2] = [None, None];
        let mut fences = FenceCounter::default();
        let mut model = Model::default();
        // The latest deadline each key was promised to its holder: nobody
        // else may get the key before it.
        let mut promised: [Option<(usize, Micros)>; 2] = [None, None];
        let mut now: Micros = 0;

        for op in ops {
            match op {
                Op::Pass { micros } => now += micros,
                Op::Acquire { key, who, ttl, floor } => {
                    let request = AcquireRequest { fence_floor: floor, ..req(WHO[who], ttl) };
                    let before = fences.last();
                    let out = acquire(keys[key].as_ref(), &request, now, &mut fences);
                    let expected = match model.live(key, now) {
                        Some((holder, fence, _)) if holder == who => {
                            let fence = fence.max(floor);
                            model.last_fence = model.last_fence.max(fence);
                            model.holder[key] = Some((who, fence, now + ttl));
                            Acquired::Refreshed(fence)
                        }
                        Some(_) => Acquired::Taken,
                        None => {
                            model.last_fence = (model.last_fence + 1).max(floor);
                            model.holder[key] = Some((who, model.last_fence, now + ttl));
                            prop_assert!(model.last_fence > before, "a new grant's fence exceeds every earlier one");
                            Acquired::Granted(model.last_fence)
                        }
                    };
                    prop_assert_eq!(out.reply, expected);
                    if out.reply.fence().is_some() {
                        if let Some((holder, until)) = promised[key] {
                            prop_assert!(holder == who || now >= until,
                                "key {} granted to {} at {} but promised to {} until {}", key, who, now, holder, until);
                        }
                        promised[key] = Some((who, now + ttl));
                    }
                    apply(&mut keys[key], out.change);
                }
                Op::Extend { key, who, ttl } => {
                    let out = extend(keys[key].as_ref(), WHO[who], ttl, now);
                    let expected = match model.live(key, now) {
                        Some((holder, fence, _)) if holder == who => {
                            model.holder[key] = Some((who, fence, now + ttl));
                            Extended::Extended
                        }
                        _ => Extended::NotHeld,
                    };
                    prop_assert_eq!(out.reply, expected);
                    if out.reply == Extended::Extended {
                        promised[key] = Some((who, now + ttl));
                    }
                    apply(&mut keys[key], out.change);
                }
                Op::Release { key, who } => {
                    let out = release(keys[key].as_ref(), WHO[who], now);
                    let expected = matches!(model.live(key, now), Some((holder, _, _)) if holder == who);
                    if expected {
                        model.holder[key] = None;
                        promised[key] = None;
                    }
                    prop_assert_eq!(out.reply.freed(), expected);
                    apply(&mut keys[key], out.change);
                }
                Op::Info { key } => {
                    let shown = view(keys[key].as_ref(), now);
                    let expected = model.live(key, now);
                    prop_assert_eq!(shown.as_ref().map(|v| v.fence), expected.map(|(_, f, _)| f));
                    if let (Some(v), Some((holder, _, until))) = (shown, expected) {
                        prop_assert_eq!(v.ttl_ms, (until - now).div_ceil(1000));
                        prop_assert_eq!(v.owner, fingerprint(WHO[holder]));
                    }
                }
            }
            // A stored lock that has expired is garbage only: nothing shows it.
            for (key, stored) in keys.iter().enumerate() {
                if let Some(lock) = stored {
                    prop_assert_eq!(lock.is_live(now), model.live(key, now).is_some());
                }
            }
        }
    }
}

fn apply(slot: &mut Option<Lock>, change: Change) {
    match change {
        Change::Keep => {}
        Change::Put(lock) => *slot = Some(lock),
        Change::Remove => *slot = None,
    }
}

#[test]
fn a_lock_is_one_80_byte_allocation_with_its_token_inline() {
    assert_eq!(std::mem::size_of::<Lock>(), 80);
    let token = [7u8; INLINE_TOKEN];
    let lock = Lock::new(&token, 1, 2, 3);
    assert_eq!((lock.owner(), lock.spilled_bytes()), (&token[..], 0));
    let long = [9u8; MAX_TOKEN_LEN];
    let lock = Lock::new(&long, 1, 2, 3).with_extensions(u64::MAX);
    assert_eq!(lock.owner(), &long[..]);
    assert_eq!(lock.spilled_bytes(), MAX_TOKEN_LEN);
    assert_eq!(
        lock.extensions(),
        u64::from(u32::MAX),
        "the count saturates"
    );
    assert_eq!(lock.hold_limit(), None);
}

#[test]
fn while_only_holders_are_admitted_nothing_new_is_granted_and_ended_locks_stay() {
    let only = Admission::HolderOnly;
    let mut fences = FenceCounter::starting_at(5);
    let cases: [Case<Acquired>; 5] = [
        (
            "a free lock is not granted",
            None,
            A,
            100,
            Acquired::Refused,
            Change::Keep,
        ),
        (
            "another's live lock is refused, not reported taken",
            Some(held(B, 2, 1_000)),
            A,
            100,
            Acquired::Refused,
            Change::Keep,
        ),
        (
            "the holder refreshes its live grant",
            Some(held(A, 2, 1_000)),
            A,
            100,
            Acquired::Refreshed(2),
            Change::Put(held(A, 2, 600)),
        ),
        (
            "the holder of an ended lock gets nothing, and the lock stays",
            Some(held(A, 2, 50)),
            A,
            100,
            Acquired::Refused,
            Change::Keep,
        ),
        (
            "another token does not take over an ended lock",
            Some(held(B, 2, 50)),
            A,
            100,
            Acquired::Refused,
            Change::Keep,
        ),
    ];
    for (name, current, token, now, reply, change) in cases {
        let out = acquire_admitted(current.as_ref(), &req(token, 500), only, now, &mut fences);
        assert_eq!((out.reply, out.change), (reply, change), "{name}");
        assert!(!out.ended, "{name}: a refusal counts nothing as expired");
    }
    assert_eq!(fences.last(), 5, "no fence drawn");
}

#[test]
fn release_tells_a_lock_held_by_another_from_no_lock() {
    assert_eq!(
        release(Some(&held(B, 1, 100)), A, 50).reply,
        Released::HeldByAnother
    );
    assert_eq!(
        release(Some(&held(B, 1, 100)), A, 100).reply,
        Released::NotHeld
    );
    assert_eq!(release(None, A, 50).reply, Released::NotHeld);
    assert!(release(Some(&held(A, 1, 100)), A, 50).reply.freed());
}
