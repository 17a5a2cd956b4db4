//! The lock commands as tests call them, so each test file does not define
//! its own copies. Every function panics on a transport error or an error
//! reply (use [`error_of`] to get an expected error).

use redis::{Connection, ToRedisArgs, Value};
use std::collections::HashMap;

/// `LOCK.ACQUIRE key token ttl`: the fencing token, or `None` if taken.
pub fn acquire(c: &mut Connection, key: &str, token: impl ToRedisArgs, ttl: u64) -> Option<i64> {
    acquire_with(c, key, token, ttl, &[])
}

/// `LOCK.ACQUIRE key token ttl [options...]`, e.g. `&["WAIT", "500"]`.
pub fn acquire_with(
    c: &mut Connection,
    key: &str,
    token: impl ToRedisArgs,
    ttl: u64,
    options: &[&str],
) -> Option<i64> {
    redis::cmd("LOCK.ACQUIRE")
        .arg(key)
        .arg(token)
        .arg(ttl)
        .arg(options)
        .query(c)
        .unwrap_or_else(|e| panic!("LOCK.ACQUIRE {key}: {e}"))
}

/// `LOCK.EXTEND key token ttl`: 1 or 0.
pub fn extend(c: &mut Connection, key: &str, token: impl ToRedisArgs, ttl: u64) -> i64 {
    redis::cmd("LOCK.EXTEND")
        .arg(key)
        .arg(token)
        .arg(ttl)
        .query(c)
        .unwrap_or_else(|e| panic!("LOCK.EXTEND {key}: {e}"))
}

/// `LOCK.RELEASE key token`: 1 or 0.
pub fn release(c: &mut Connection, key: &str, token: impl ToRedisArgs) -> i64 {
    redis::cmd("LOCK.RELEASE")
        .arg(key)
        .arg(token)
        .query(c)
        .unwrap_or_else(|e| panic!("LOCK.RELEASE {key}: {e}"))
}

/// The integer fields of `LOCK.INFO key`, or `None` when the lock is free.
pub fn info(c: &mut Connection, key: &str) -> Option<HashMap<String, i64>> {
    crate::lock_info_fields(&info_reply(c, key))
}

/// The owner fingerprint `LOCK.INFO` shows for `token`: the first 8 bytes
/// of its SHA-256 in hex (as `src/lock.rs` computes it; the module's rlib
/// cannot be linked into a test, it installs Redis's allocator).
pub fn fingerprint(token: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The owner fingerprint `LOCK.INFO key` shows.
pub fn owner(c: &mut Connection, key: &str) -> Option<String> {
    crate::lock_info_owner(&info_reply(c, key))
}

fn info_reply(c: &mut Connection, key: &str) -> Value {
    redis::cmd("LOCK.INFO")
        .arg(key)
        .query(c)
        .unwrap_or_else(|e| panic!("LOCK.INFO {key}: {e}"))
}

/// The `INFO lock` fields, without their `lock_` prefix.
pub fn stats(c: &mut Connection) -> HashMap<String, i64> {
    let text: String = redis::cmd("INFO").arg("lock").query(c).expect("INFO lock");
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.strip_prefix("lock_")?.split_once(':')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The error reply of a command that must fail, as "CODE detail".
pub fn error_of(c: &mut Connection, args: &[&[u8]]) -> String {
    let (name, rest) = args.split_first().expect("a command");
    let mut cmd = redis::cmd(&String::from_utf8_lossy(name));
    for a in rest {
        cmd.arg(*a);
    }
    let err = cmd.query::<Value>(c).expect_err("expected an error reply");
    crate::error_text(&err)
}

/// Wait (bounded) until `key` no longer exists.
pub fn wait_gone(c: &mut Connection, key: &str, timeout: std::time::Duration) {
    crate::eventually(timeout, &format!("{key} removed"), || {
        let n: i64 = redis::cmd("EXISTS").arg(key).query(c).expect("EXISTS");
        (n == 0).then_some(())
    });
}

/// `ACL SETUSER name on >password rules...`, then a connection logged in as it.
pub fn user_conn(server: &crate::Server, name: &str, password: &str, rules: &[&str]) -> Connection {
    let mut admin = server.conn();
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(name)
        .arg("on")
        .arg(format!(">{password}"))
        .arg(rules)
        .query(&mut admin)
        .unwrap_or_else(|e| panic!("ACL SETUSER {name}: {e}"));
    let mut c = server.conn();
    let () = redis::cmd("AUTH")
        .arg(name)
        .arg(password)
        .query(&mut c)
        .unwrap_or_else(|e| panic!("AUTH {name}: {e}"));
    c
}

/// The least-privilege user docs/COMMANDS.md recommends for Redis 7.0,
/// `app` with password `secret`: the `LOCK.*` commands on `locks:*` keys.
pub fn add_app_user(servers: &[crate::Server]) {
    for s in servers {
        user_conn(
            s,
            "app",
            "secret",
            &[
                "~locks:*",
                "+lock.acquire",
                "+lock.extend",
                "+lock.release",
                "+lock.info",
            ],
        );
    }
}

/// `LOCK.INFO key` on one server, over a fresh connection.
pub fn info_on(server: &crate::Server, key: &str) -> Option<HashMap<String, i64>> {
    info(&mut server.conn(), key)
}

/// On how many of the running servers `key` is held.
pub fn held_on(servers: &[crate::Server], key: &str) -> usize {
    servers
        .iter()
        .filter(|s| s.is_running() && info_on(s, key).is_some())
        .count()
}

/// Waits (bounded) until every server holds `key`. A quorum client returns
/// once a majority granted and lets the slower requests finish in the
/// background: a test that then removes the lock from some nodes must wait
/// for those, or a grant still in flight may land after its delete.
pub fn wait_held_everywhere(servers: &[crate::Server], key: &str) {
    crate::eventually(
        std::time::Duration::from_secs(10),
        "the lock to be held on every node",
        || (held_on(servers, key) == servers.len()).then_some(()),
    );
}
