//! Server operations that turn the module against its operators (issue 11):
//! one tenant's `FENCE` or `LOCK.LOAD` spending the node's fencing counter,
//! module load arguments that skip the checks `CONFIG SET` makes, and tokens
//! shown by `SLOWLOG`, `MONITOR` and `DUMP`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use redis::{Connection, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::lockcmd::{acquire, acquire_with, info, stats, user_conn};
use testkit::{error_text, Server};

/// The largest fencing token (`i64::MAX`), which used to end every grant on the node.
const LAST_FENCE: &str = "9223372036854775807";

/// How far above the node's wall clock (in µs) a `FENCE` floor may go: 2^40 µs.
const FENCE_HEADROOM: u64 = 1 << 40;

/// A token that must never be shown by the server.
const SECRET: &str = "s3cret-token-do-not-log";

/// A `LOCK.LOAD` payload (encoding version 2, see `src/codec.rs`): held by
/// `owner` with `fence`, a minute left, no hold limit.
fn payload(fence: u64, owner: &[u8]) -> Vec<u8> {
    let mut out = vec![2u8];
    out.extend_from_slice(&fence.to_le_bytes());
    out.extend_from_slice(&60_000_000u64.to_le_bytes()); // remaining µs
    out.extend_from_slice(&0u64.to_le_bytes()); // held
    out.extend_from_slice(&0u64.to_le_bytes()); // extensions
    out.extend_from_slice(&u64::MAX.to_le_bytes()); // no hold limit
    out.extend_from_slice(&u16::try_from(owner.len()).unwrap().to_le_bytes());
    out.extend_from_slice(owner);
    out
}

fn server_wall_micros(c: &mut Connection) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(c).unwrap();
    secs * 1_000_000 + micros
}

fn query_err(c: &mut Connection, cmd: &redis::Cmd) -> String {
    error_text(&cmd.query::<Value>(c).expect_err("expected an error reply"))
}

// ---- (4) the fencing counter's headroom -------------------------------------

#[test]
fn one_tenant_cannot_exhaust_the_fencing_counter_for_every_other() {
    for flavor in testkit::flavors() {
        let mut server = Server::builder(flavor).rdb().start();
        let mut admin = server.conn();
        let mut tenant = user_conn(&server, "app1", "pw", &["~app1:*", "+@all"]);

        let err = query_err(
            &mut tenant,
            redis::cmd("LOCK.ACQUIRE")
                .arg("app1:x")
                .arg("t")
                .arg(1)
                .arg("FENCE")
                .arg(LAST_FENCE),
        );
        assert!(
            err.starts_with("ERR invalid FENCE '9223372036854775807'"),
            "{flavor}: {err}"
        );
        let err = query_err(
            &mut tenant,
            redis::cmd("LOCK.LOAD")
                .arg("app1:y")
                .arg(payload(i64::MAX as u64, b"t")),
        );
        assert!(
            err.starts_with("ERR invalid LOCK.LOAD payload: fencing token 9223372036854775807"),
            "{flavor}: {err}"
        );
        assert_eq!(info(&mut tenant, "app1:x"), None, "{flavor}");
        assert_eq!(info(&mut tenant, "app1:y"), None, "{flavor}");

        // A floor within the bound is a raise like any other.
        let floor = server_wall_micros(&mut admin) + FENCE_HEADROOM / 2;
        assert_eq!(
            acquire_with(
                &mut tenant,
                "app1:x",
                "t",
                60_000,
                &["FENCE", &floor.to_string()]
            ),
            Some(floor as i64),
            "{flavor}"
        );
        let counter = stats(&mut admin)["fence_counter"] as u64;
        assert_eq!(counter, floor, "{flavor}");
        // Even at the top of the bound, every tenant keeps getting grants,
        // also after a save and a restart (the counter persists).
        assert!(acquire(&mut admin, "app2:z", "u", 60_000).unwrap() as u64 > floor);
        let _: () = redis::cmd("SAVE").query(&mut admin).unwrap();
        server.restart();
        let mut admin = server.conn();
        let after = acquire(&mut admin, "app3:w", "v", 60_000).unwrap() as u64;
        assert!(after > floor, "{flavor}: {after} after a restart");
        assert!(
            after < i64::MAX as u64 / 2,
            "{flavor}: the counter kept its headroom"
        );
    }
}

/// `RESTORE` (what `MIGRATE` runs on the target) of a dump whose lock
/// carries a far-future token could spend the counter too; its bound is the
/// same, while loading the node's own data is not bounded.
#[test]
fn restore_cannot_spend_the_fencing_counter() {
    for flavor in testkit::flavors() {
        let server = Server::builder(flavor).arg("rdbcompression", "no").start();
        let mut c = server.conn();
        let fence = acquire(&mut c, "k", "t", 60_000).unwrap();
        let dump: Vec<u8> = redis::cmd("DUMP").arg("k").query(&mut c).unwrap();
        let far = testkit::dump_with_fence(&dump, fence, i64::MAX);
        let err = query_err(
            &mut c,
            redis::cmd("RESTORE").arg("far").arg(0).arg(far.as_slice()),
        );
        assert!(err.contains("Bad data format"), "{flavor}: {err}");
        assert!(server.log().contains("above the node's bound"), "{flavor}");
        assert_eq!(stats(&mut c)["fence_counter"], fence, "{flavor}: unspent");
        // Within the bound a restored lock raises the counter as before.
        let near = fence + 1_000;
        let ok = testkit::dump_with_fence(&dump, fence, near);
        let () = redis::cmd("RESTORE")
            .arg("near")
            .arg(0)
            .arg(ok.as_slice())
            .query(&mut c)
            .unwrap();
        assert_eq!(info(&mut c, "near").unwrap()["fence"], near, "{flavor}");
        assert!(
            acquire(&mut c, "next", "u", 1_000).unwrap() > near,
            "{flavor}"
        );
        // Reloading the node's own data is not bounded by the clock.
        let () = redis::cmd("DEBUG").arg("RELOAD").query(&mut c).unwrap();
        assert_eq!(info(&mut c, "near").unwrap()["fence"], near, "{flavor}");
    }
}

#[test]
fn the_fence_bound_moves_with_the_clock_and_applies_to_lock_load() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let wall = server_wall_micros(&mut c);
        // Far above the clock: refused, and the error says what is allowed.
        let too_high = wall + 2 * FENCE_HEADROOM;
        let err = query_err(
            &mut c,
            redis::cmd("LOCK.ACQUIRE")
                .arg("k")
                .arg("t")
                .arg(1000)
                .arg("FENCE")
                .arg(too_high),
        );
        assert!(
            err.starts_with(&format!("ERR invalid FENCE '{too_high}'")) && err.contains("2^40"),
            "{flavor}: {err}"
        );
        // LOCK.LOAD of a payload within the bound works; above it, it is refused.
        let ok = wall + FENCE_HEADROOM / 4;
        let _: () = redis::cmd("LOCK.LOAD")
            .arg("loaded")
            .arg(payload(ok, b"owner"))
            .query(&mut c)
            .unwrap();
        assert_eq!(info(&mut c, "loaded").unwrap()["fence"] as u64, ok);
        let err = query_err(
            &mut c,
            redis::cmd("LOCK.LOAD")
                .arg("loaded2")
                .arg(payload(too_high, b"owner")),
        );
        assert!(err.contains("fencing token"), "{flavor}: {err}");
        assert_eq!(info(&mut c, "loaded2"), None, "{flavor}");
    }
}

// ---- (6) module load arguments ------------------------------------------------

/// Load arguments that `CONFIG SET` would refuse, and what the log must name.
const BAD_LOAD_ARGS: &[(&[&str], &str)] = &[
    (&["rejoin-delay-ms", "-7"], "rejoin-delay-ms"),
    (&["max-ttl-ms", "0"], "max-ttl-ms"),
    (&["max-ttl-ms", "-5"], "max-ttl-ms"),
    (&["max-ttl-ms", "9223372036854775807"], "max-ttl-ms"),
    (&["max-ttl-ms", "12s"], "max-ttl-ms"),
    (&["max-waiters", "-3"], "max-waiters"),
    (&["max-hold-ms", "-1"], "max-hold-ms"),
    (&["promotion-delay-ms", "-2"], "promotion-delay-ms"),
    (&["bogus", "1"], "bogus"),
    (&["max-ttl-ms", "5000", "max-hold-ms"], "max-hold-ms"),
    (&["max-ttl-ms", "5000", "max-ttl-ms", "6000"], "max-ttl-ms"),
];

#[test]
fn a_bad_load_argument_fails_module_load_with_a_log_line_naming_it() {
    let module = testkit::module_path();
    for flavor in testkit::flavors() {
        let server = Server::builder(flavor).no_module().start();
        let mut c = server.conn();
        for (args, name) in BAD_LOAD_ARGS {
            let before = server.log().len();
            let reply = redis::cmd("MODULE")
                .arg("LOAD")
                .arg(module.to_str().unwrap())
                .arg(*args)
                .query::<Value>(&mut c);
            assert!(
                reply.is_err(),
                "{flavor}: MODULE LOAD {args:?} was accepted"
            );
            let log = server.log();
            let new = &log[before..];
            assert!(
                new.lines()
                    .any(|l| l.contains("lock: invalid load argument") && l.contains(name)),
                "{flavor}: {args:?}: no log line names '{name}':\n{new}"
            );
        }
        // Good arguments still load, and are what CONFIG GET shows.
        let _: () = redis::cmd("MODULE")
            .arg("LOAD")
            .arg(module.to_str().unwrap())
            .arg(&[
                "max-ttl-ms",
                "5000",
                "rejoin-delay-ms",
                "-1",
                "max-waiters",
                "0",
            ])
            .query(&mut c)
            .unwrap_or_else(|e| panic!("{flavor}: {e}\n{}", server.log()));
        let got: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("lock.max-ttl-ms")
            .query(&mut c)
            .unwrap();
        assert_eq!(got, ["lock.max-ttl-ms", "5000"], "{flavor}");
        let got: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("lock.max-waiters")
            .query(&mut c)
            .unwrap();
        assert_eq!(got, ["lock.max-waiters", "0"], "{flavor}");
        // No persistence and AUTO: the delayed rejoin of max-ttl-ms runs.
        assert!(stats(&mut c)["rejoin_delay_left_ms"] > 0, "{flavor}");
    }
}

#[test]
fn a_bad_load_argument_keeps_the_server_from_starting() {
    let module = testkit::module_path();
    for flavor in testkit::flavors() {
        let binary = flavor.binary().unwrap();
        let dir = tempfile::tempdir().unwrap();
        // Port 0: no TCP listener, only a socket in the temp dir; the log
        // goes to stdout.
        let mut child = Command::new(binary)
            .args(["--port", "0", "--save", "", "--dir"])
            .arg(dir.path())
            .arg("--unixsocket")
            .arg(dir.path().join("server.sock"))
            .arg("--loadmodule")
            .arg(&module)
            .args(["max-ttl-ms", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(
            status.is_some_and(|s| !s.success()),
            "{flavor}: the server started with max-ttl-ms 0 ({status:?}):\n{log}"
        );
        assert!(
            log.contains("lock: invalid load argument max-ttl-ms"),
            "{flavor}:\n{log}"
        );
    }
}

// ---- (7) tokens in SLOWLOG, MONITOR and DUMP -------------------------------------------

/// Every command that carries a token, each once: the token (or the
/// payload holding it) is argument 2.
fn token_commands() -> Vec<redis::Cmd> {
    let mut cmds = Vec::new();
    let mut add = |parts: &[&[u8]]| {
        let mut cmd = redis::cmd(std::str::from_utf8(parts[0]).unwrap());
        for p in &parts[1..] {
            cmd.arg(*p);
        }
        cmds.push(cmd);
    };
    let load = payload(1, SECRET.as_bytes());
    add(&[b"LOCK.ACQUIRE", b"k", SECRET.as_bytes(), b"60000"]);
    add(&[b"LOCK.EXTEND", b"k", SECRET.as_bytes(), b"60000"]);
    add(&[b"LOCK.RELEASE", b"k", SECRET.as_bytes()]);
    // Errors are logged too: a bad ttl, a bad option.
    add(&[b"LOCK.ACQUIRE", b"k", SECRET.as_bytes(), b"bad-ttl"]);
    add(&[
        b"LOCK.ACQUIRE",
        b"k",
        SECRET.as_bytes(),
        b"100",
        b"NOPE",
        b"1",
    ]);
    // A blocked acquire (it times out).
    add(&[b"LOCK.ACQUIRE", b"w", b"other", b"60000"]);
    add(&[
        b"LOCK.ACQUIRE",
        b"w",
        SECRET.as_bytes(),
        b"60000",
        b"WAIT",
        b"1",
    ]);
    add(&[b"LOCK.LOAD", b"loaded", &load]);
    add(&[b"LOCK.LOAD", b"bad", SECRET.as_bytes()]);
    add(&[b"LOCK.RELEASE", b"loaded", SECRET.as_bytes()]);
    cmds
}

/// Redaction hides the token from the logs, not from the module: a lock
/// taken by a token is still extended and released by that token (Valkey
/// 8.1 swaps the redacted argument in place).
fn the_token_still_works(c: &mut Connection, flavor: testkit::Flavor) {
    let fence = acquire(c, "still", SECRET, 60_000);
    assert!(fence.is_some(), "{flavor}");
    assert_eq!(
        acquire(c, "still", SECRET, 60_000),
        fence,
        "{flavor}: the same token refreshes"
    );
    assert_eq!(
        testkit::lockcmd::extend(c, "still", SECRET, 60_000),
        1,
        "{flavor}"
    );
    assert_eq!(
        testkit::lockcmd::release(c, "still", "(redacted)"),
        0,
        "{flavor}"
    );
    assert_eq!(testkit::lockcmd::release(c, "still", SECRET), 1, "{flavor}");
}

/// Every string inside a reply, flattened.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => out.push(s.clone()),
        Value::Array(items) | Value::Set(items) | Value::Push { data: items, .. } => {
            items.iter().for_each(|i| strings(i, out))
        }
        _ => {}
    }
}

#[test]
fn slowlog_shows_redacted_instead_of_tokens() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(0)
            .query(&mut c)
            .unwrap();
        let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut c).unwrap();
        for cmd in token_commands() {
            let _ = cmd.query::<Value>(&mut c);
        }
        let log: Value = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(100)
            .query(&mut c)
            .unwrap();
        let mut all = Vec::new();
        strings(&log, &mut all);
        assert!(
            !all.iter()
                .any(|s| s.contains(SECRET) || s.contains("s3cret")),
            "{flavor}: SLOWLOG shows the token: {all:?}"
        );
        for name in ["LOCK.ACQUIRE", "LOCK.EXTEND", "LOCK.RELEASE", "LOCK.LOAD"] {
            assert!(
                all.iter().any(|s| s.eq_ignore_ascii_case(name)),
                "{flavor}: {name} not in SLOWLOG: {all:?}"
            );
        }
        let redacted = all.iter().filter(|s| *s == "(redacted)").count();
        assert_eq!(redacted, token_commands().len(), "{flavor}: {all:?}");
        the_token_still_works(&mut c, flavor);
    }
}

#[test]
fn monitor_shows_redacted_instead_of_tokens() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut monitor = server.conn();
        monitor
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let ok: String = redis::cmd("MONITOR").query(&mut monitor).unwrap();
        assert_eq!(ok, "OK");
        let mut c = server.conn();
        for cmd in token_commands() {
            let _ = cmd.query::<Value>(&mut c);
        }
        let _: String = redis::cmd("ECHO").arg("end-of-test").query(&mut c).unwrap();
        let mut lines = Vec::new();
        loop {
            let line: String = match monitor.recv_response().unwrap() {
                Value::SimpleString(s) => s,
                other => panic!("{flavor}: MONITOR sent {other:?}"),
            };
            if line.contains("end-of-test") {
                break;
            }
            lines.push(line);
        }
        assert!(
            !lines.iter().any(|l| l.contains("s3cret")),
            "{flavor}: MONITOR shows the token: {lines:#?}"
        );
        let lock_lines: Vec<&String> = lines.iter().filter(|l| l.contains("LOCK.")).collect();
        assert_eq!(
            lock_lines.len(),
            token_commands().len(),
            "{flavor}: {lines:#?}"
        );
        assert!(
            lock_lines.iter().all(|l| l.contains("\"(redacted)\"")),
            "{flavor}: {lock_lines:#?}"
        );
        the_token_still_works(&mut c, flavor);
    }
}

/// The ACL line `docs/COMMANDS.md` gives for a user that may read locks but
/// not `DUMP` them (the serialized lock carries the token).
const READER_ACL: &str = "ACL SETUSER reader on >reader-secret ~* +@read +lock.info -dump";

#[test]
fn the_documented_acl_keeps_dump_from_a_read_only_user() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/COMMANDS.md")).unwrap();
    assert!(
        docs.contains(READER_ACL),
        "docs/COMMANDS.md gives the ACL line"
    );
    for flavor in testkit::flavors() {
        // Uncompressed, so the test can find the token in the dump (LZF
        // compression hides nothing from whoever restores it).
        let server = Server::builder(flavor).arg("rdbcompression", "no").start();
        let mut admin = server.conn();
        acquire(&mut admin, "k", SECRET, 60_000).unwrap();
        let dump: Vec<u8> = redis::cmd("DUMP").arg("k").query(&mut admin).unwrap();
        assert!(
            dump.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{flavor}: DUMP carries the token, as documented"
        );
        let parts: Vec<&str> = READER_ACL.split_whitespace().collect();
        let _: () = redis::cmd(parts[0])
            .arg(&parts[1..])
            .query(&mut admin)
            .unwrap();
        let mut reader = server.conn();
        let _: () = redis::cmd("AUTH")
            .arg("reader")
            .arg("reader-secret")
            .query(&mut reader)
            .unwrap();
        assert!(
            info(&mut reader, "k").is_some(),
            "{flavor}: LOCK.INFO works"
        );
        let err = query_err(&mut reader, redis::cmd("DUMP").arg("k"));
        assert!(err.starts_with("NOPERM"), "{flavor}: {err}");
        let err = query_err(&mut reader, redis::cmd("LOCK.RELEASE").arg("k").arg(SECRET));
        assert!(err.starts_with("NOPERM"), "{flavor}: {err}");
    }
}
