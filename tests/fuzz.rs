//! Fuzzing a live node: random lock commands (random arity, random bytes,
//! random option combinations, random `LOCK.LOAD` payloads) and `RESTORE`
//! of randomly corrupted and truncated `DUMP`s with a correct checksum.
//! Afterwards the server must answer, every lock key must be a valid lock
//! (per `LOCK.INFO`, `DUMP`/`RESTORE` and `DEBUG RELOAD`), and the module's
//! counters must add up.
//!
//! Seeded (`FUZZ_SEED`, default 1); `FUZZ_DURATION` (seconds) runs longer
//! (`make soak`). Each test prints how many inputs it tried.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use redis::{Connection, Value};
use testkit::{crc64_redis, error_text, lock_info_fields, Rng, Server};

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// How long to go on: `FUZZ_DURATION` seconds, or until `short` inputs.
fn budget(short: usize) -> (usize, Option<Instant>) {
    match std::env::var("FUZZ_DURATION")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(secs) => (usize::MAX, Some(Instant::now() + Duration::from_secs(secs))),
        None => (short, None),
    }
}

const KEYS: usize = 6;
const COMMANDS: [&str; 5] = [
    "LOCK.ACQUIRE",
    "LOCK.EXTEND",
    "LOCK.RELEASE",
    "LOCK.INFO",
    "LOCK.LOAD",
];

fn key(i: usize) -> String {
    format!("fuzz:{i}")
}

/// Valid `LOCK.LOAD` payloads: the encoded locks inside `DUMP`s of real
/// locks (the module's RDB value is one string, its encoding; the test
/// cannot link the module's codec: the module crate brings Redis's allocator).
fn payloads(c: &mut Connection) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let extras: [&[&str]; 3] = [&[], &["MAXHOLD", "600000"], &["FENCE", "123456789"]];
    for (i, extra) in extras.iter().enumerate() {
        let k = format!("fuzz:seed:{i}");
        let fence = testkit::lockcmd::acquire_with(c, &k, format!("seed-owner-{i}"), 60_000, extra)
            .unwrap();
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&k).query(c).unwrap();
        let _: i64 = redis::cmd("DEL").arg(&k).query(c).unwrap();
        let found = [2u8, 1].iter().find_map(|version| {
            let mut needle = vec![*version];
            needle.extend_from_slice(&fence.to_le_bytes());
            let at = dump
                .windows(needle.len())
                .position(|w| w == needle.as_slice())?;
            let len = usize::from(*dump.get(at.checked_sub(1)?)?);
            dump.get(at..at + len).map(<[u8]>::to_vec)
        });
        out.push(found.expect("the encoded lock inside DUMP (rdbcompression no)"));
    }
    out
}

fn payload(rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    pool[rng.below(pool.len())].clone()
}

/// One argument: from the commands' vocabulary, or random bytes.
fn word(rng: &mut Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let w: &[u8] = match rng.below(16) {
        0 => b"FENCE",
        1 => b"wait",
        2 => b"MAXHOLD",
        3 => b"ticket",
        4 => b"0",
        5 => b"-1",
        6 => b"9223372036854775807",
        7 => b"",
        8 => b"tok-a",
        9 => b"tok-b",
        10 | 11 => return (1 + rng.next() % 200).to_string().into_bytes(),
        12 => return (rng.next() as i64).to_string().into_bytes(),
        13 => return payload(rng, pool),
        _ => return rng.bytes(300),
    };
    w.to_vec()
}

fn command(rng: &mut Rng, pool: &[Vec<u8>]) -> redis::Cmd {
    let name = COMMANDS[rng.below(COMMANDS.len())];
    let mut cmd = redis::cmd(name);
    // Mostly the right shape, sometimes any arity (0 to 9 arguments).
    let arity = if rng.chance(80) {
        match name {
            "LOCK.ACQUIRE" => 3 + rng.below(6),
            "LOCK.EXTEND" => 3,
            "LOCK.RELEASE" | "LOCK.LOAD" => 2,
            _ => 1,
        }
    } else {
        rng.below(10)
    };
    for i in 0..arity {
        if i == 0 && rng.chance(90) {
            // Lock keys, and one key of another type.
            let k = rng.below(KEYS + 1);
            cmd.arg(if k == KEYS {
                "fuzz:string".to_owned()
            } else {
                key(k)
            });
        } else if i == 1 && name == "LOCK.LOAD" && rng.chance(70) {
            let mut p = payload(rng, pool);
            if rng.chance(50) && !p.is_empty() {
                let at = rng.below(p.len());
                p[at] = rng.next() as u8;
            }
            if rng.chance(20) {
                p.truncate(rng.below(p.len() + 1));
            }
            cmd.arg(p);
        } else {
            cmd.arg(word(rng, pool));
        }
    }
    cmd
}

/// Every lock key holds a valid lock (or nothing); returns how many held.
fn check_state(server: &Server, c: &mut Connection, what: &str) -> usize {
    let pong: String = redis::cmd("PING").query(c).unwrap();
    assert_eq!(pong, "PONG", "{what}");
    let mut held = 0;
    for i in 0..KEYS {
        let k = key(i);
        let t: String = redis::cmd("TYPE").arg(&k).query(c).unwrap();
        assert!(t == "redislock" || t == "none", "{what}: {k} is a {t}");
        let info: Value = redis::cmd("LOCK.INFO").arg(&k).query(c).unwrap();
        if info == Value::Nil {
            continue;
        }
        let f = lock_info_fields(&info).unwrap_or_else(|| panic!("{what}: {k}: {info:?}"));
        assert!(f["fence"] >= 1, "{what}: {k}: {f:?}");
        assert!(f["ttl"] >= 0, "{what}: {k}: {f:?}");
        assert!(
            f["acquired"] >= 0 && f["extensions"] >= 0,
            "{what}: {k}: {f:?}"
        );
        held += 1;
        // It survives a DUMP/RESTORE round trip unchanged.
        let dump: Vec<u8> = redis::cmd("DUMP").arg(&k).query(c).unwrap();
        let _: () = redis::cmd("RESTORE")
            .arg("fuzz:copy")
            .arg(0)
            .arg(&dump)
            .arg("REPLACE")
            .query(c)
            .unwrap_or_else(|e| panic!("{what}: RESTORE of {k}: {e}"));
        let copy: Value = redis::cmd("LOCK.INFO").arg("fuzz:copy").query(c).unwrap();
        let g = lock_info_fields(&copy).unwrap();
        assert_eq!(g["fence"], f["fence"], "{what}: {k}");
        let _: i64 = redis::cmd("DEL").arg("fuzz:copy").query(c).unwrap();
    }
    let info = server.info("lock");
    assert!(info.contains("lock_locks:"), "{what}: {info}");
    held
}

#[test]
fn random_commands_leave_the_server_up_and_every_lock_valid() {
    for flavor in testkit::flavors() {
        let server = Server::builder(flavor).arg("rdbcompression", "no").start();
        let mut c = server.conn();
        let pool = payloads(&mut c);
        let _: () = redis::cmd("SET")
            .arg("fuzz:string")
            .arg("x")
            .query(&mut c)
            .unwrap();
        let mut rng = Rng::new(seed() ^ flavor.to_string().len() as u64);
        let (max, until) = budget(4000);
        let (mut tried, mut errors, mut blocked) = (0usize, 0usize, 0usize);
        // A WAIT on a held lock blocks the connection: give up on it after a
        // short time and reconnect (which also fuzzes the disconnect path).
        c.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        while tried < max && until.is_none_or(|u| Instant::now() < u) {
            let cmd = command(&mut rng, &pool);
            tried += 1;
            match cmd.query::<Value>(&mut c) {
                Ok(_) => {}
                Err(e) if e.is_timeout() => {
                    blocked += 1;
                    c = server.conn();
                    c.set_read_timeout(Some(Duration::from_millis(100)))
                        .unwrap();
                }
                Err(e) => {
                    let text = error_text(&e);
                    assert!(
                        text.starts_with("ERR")
                            || text.starts_with("WRONGTYPE")
                            || text.starts_with("TRYAGAIN"),
                        "{flavor}: unexpected error {text}"
                    );
                    assert!(
                        !text.contains("internal error"),
                        "{flavor}: a panic in the module: {text}"
                    );
                    errors += 1;
                }
            }
            if tried % 1000 == 0 {
                check_state(&server, &mut c, &format!("{flavor} after {tried}"));
            }
        }
        c.set_read_timeout(None).unwrap();
        let held = check_state(&server, &mut c, &format!("{flavor} at the end"));
        // The whole state survives a save and load.
        let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
        let held_after = check_state(&server, &mut c, &format!("{flavor} after DEBUG RELOAD"));
        assert!(held_after <= held, "{flavor}: reload created locks");
        assert!(
            !server.log().contains("internal error"),
            "{flavor}: panic logged"
        );
        println!(
            "fuzz commands {flavor}: seed {} inputs {tried} errors {errors} blocked {blocked} crashes 0, locks held at the end {held}",
            seed()
        );
    }
}

#[test]
fn restore_of_randomly_corrupted_dumps_never_crashes() {
    for flavor in testkit::flavors() {
        let server = Server::builder(flavor).arg("rdbcompression", "no").start();
        let mut c = server.conn();
        let mut rng = Rng::new(seed().wrapping_add(17));
        let mut dumps = Vec::new();
        for (i, extra) in [&[][..], &["MAXHOLD", "600000"][..]].iter().enumerate() {
            let k = format!("src:{i}");
            testkit::lockcmd::acquire_with(&mut c, &k, format!("owner-{i}"), 60_000, extra)
                .unwrap();
            let _: i64 = testkit::lockcmd::extend(&mut c, &k, format!("owner-{i}"), 60_000);
            let d: Vec<u8> = redis::cmd("DUMP").arg(&k).query(&mut c).unwrap();
            dumps.push(d);
        }
        let (max, until) = budget(3000);
        let (mut tried, mut accepted, mut refused) = (0usize, 0usize, 0usize);
        while tried < max && until.is_none_or(|u| Instant::now() < u) {
            let dump = &dumps[rng.below(dumps.len())];
            // The body: everything but the 8-byte checksum (the 2-byte RDB
            // version before it is left alone unless the cut reaches it).
            let mut body = dump[..dump.len() - 8].to_vec();
            let version_at = body.len() - 2;
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(version_at);
                body[at] = match rng.below(3) {
                    0 => rng.next() as u8,
                    1 => body[at] ^ (1 << rng.below(8)),
                    _ => 0xff,
                };
            }
            if rng.chance(25) {
                // Truncate the lock inside, keeping the RDB version.
                let keep = rng.below(version_at);
                let version = body[version_at..].to_vec();
                body.truncate(keep);
                body.extend_from_slice(&version);
            }
            let crc = crc64_redis(&body);
            body.extend_from_slice(&crc.to_le_bytes());
            tried += 1;
            match redis::cmd("RESTORE")
                .arg("fuzz:restored")
                .arg(0)
                .arg(&body)
                .arg("REPLACE")
                .query::<()>(&mut c)
            {
                Ok(()) => {
                    accepted += 1;
                    // Whatever was accepted is a valid lock.
                    let info: Value = redis::cmd("LOCK.INFO")
                        .arg("fuzz:restored")
                        .query(&mut c)
                        .unwrap_or_else(|e| panic!("{flavor}: LOCK.INFO after RESTORE: {e}"));
                    if info != Value::Nil {
                        let f = lock_info_fields(&info).unwrap();
                        assert!(f["fence"] >= 1 && f["ttl"] >= 0, "{flavor}: {f:?}");
                    }
                    let _: i64 = redis::cmd("DEL")
                        .arg("fuzz:restored")
                        .query(&mut c)
                        .unwrap();
                }
                Err(e) => {
                    let text = error_text(&e);
                    assert!(
                        text.contains("Bad data format") || text.starts_with("ERR"),
                        "{flavor}: {text}"
                    );
                    refused += 1;
                }
            }
        }
        let pong: String = redis::cmd("PING").query(&mut c).unwrap();
        assert_eq!(pong, "PONG");
        let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
        assert!(
            !server.log().contains("internal error"),
            "{flavor}: panic logged"
        );
        assert!(refused > 0, "{flavor}: the corruption was never noticed");
        println!(
            "fuzz RESTORE {flavor}: seed {} inputs {tried} accepted {accepted} refused {refused} crashes 0",
            seed()
        );
    }
}

/// Found by the command fuzzer: key names with a NUL byte made the module
/// panic (caught, logged) wherever it turned a stored key name back into a
/// Redis string (the sweeper, RDB-load indexing, waiters), so such a lock
/// loaded from an RDB was never indexed and never removed.
#[test]
fn locks_on_keys_with_nul_bytes_are_indexed_swept_and_handed_over() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let key: &[u8] = b"nul\0key";
        let acquire = |c: &mut Connection, token: &str, ttl: u64, wait: Option<u64>| {
            let mut cmd = redis::cmd("LOCK.ACQUIRE");
            cmd.arg(key).arg(token).arg(ttl);
            if let Some(w) = wait {
                cmd.arg("WAIT").arg(w);
            }
            cmd.query::<Option<i64>>(c).unwrap()
        };
        assert!(acquire(&mut c, "a", 300, None).is_some());
        let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
        let exists = |c: &mut Connection| redis::cmd("EXISTS").arg(key).query::<i64>(c).unwrap();
        assert_eq!(exists(&mut c), 1, "{flavor}: reloaded");
        testkit::eventually(Duration::from_secs(5), "the reloaded lock swept", || {
            (exists(&mut c) == 0).then_some(())
        });
        // A waiter gets it when it is deleted by hand.
        assert!(acquire(&mut c, "a", 60_000, None).is_some());
        let mut waiter = server.conn();
        let handle = std::thread::spawn(move || {
            let mut cmd = redis::cmd("LOCK.ACQUIRE");
            cmd.arg(b"nul\0key")
                .arg("b")
                .arg(5000)
                .arg("WAIT")
                .arg(5000);
            cmd.query::<Option<i64>>(&mut waiter).unwrap()
        });
        testkit::eventually(Duration::from_secs(5), "the waiter queued", || {
            (testkit::info_field(&mut c, "lock", "lock_waiters") == 1).then_some(())
        });
        let _: i64 = redis::cmd("DEL").arg(key).query(&mut c).unwrap();
        assert!(handle.join().unwrap().is_some(), "{flavor}: handed over");
        assert!(
            !server.log().contains("internal error"),
            "{flavor}: panic logged"
        );
    }
}
