//! Helpers for talking to the lock module and reading server state in tests.

use redis::{Connection, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The integer fields of a `LOCK.INFO` reply (RESP2 flat array or RESP3
/// map), or `None` for a nil reply (lock free).
pub fn lock_info_fields(v: &Value) -> Option<HashMap<String, i64>> {
    let pairs = info_pairs(v)?;
    Some(
        pairs
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::Int(i) => Some((k, *i)),
                _ => None,
            })
            .collect(),
    )
}

/// The `owner` fingerprint of a `LOCK.INFO` reply.
pub fn lock_info_owner(v: &Value) -> Option<String> {
    info_pairs(v)?
        .into_iter()
        .find_map(|(k, v)| match (k.as_str(), v) {
            ("owner", Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            ("owner", Value::SimpleString(s)) => Some(s.clone()),
            _ => None,
        })
}

fn info_pairs(v: &Value) -> Option<Vec<(String, &Value)>> {
    let name = |k: &Value| match k {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    };
    match v {
        Value::Nil => None,
        Value::Map(pairs) => Some(pairs.iter().map(|(k, v)| (name(k), v)).collect()),
        Value::Array(items) => Some(
            items
                .chunks(2)
                .filter_map(|kv| match kv {
                    [k, v] => Some((name(k), v)),
                    _ => None,
                })
                .collect(),
        ),
        other => panic!("unexpected LOCK.INFO reply {other:?}"),
    }
}

/// An error reply as Redis printed it: "CODE detail".
pub fn error_text(err: &redis::RedisError) -> String {
    match (err.code(), err.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => err.to_string(),
    }
}

/// One integer field of `INFO <section>`.
pub fn info_field(conn: &mut Connection, section: &str, field: &str) -> i64 {
    let text: String = redis::cmd("INFO").arg(section).query(conn).expect("INFO");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no integer field {field} in INFO {section}"))
}

/// Wait until no AOF rewrite is running or scheduled, then start one and wait
/// for it to finish successfully.
pub fn wait_aof_rewrite(conn: &mut Connection, timeout: Duration) {
    let idle = |conn: &mut Connection| {
        info_field(conn, "persistence", "aof_rewrite_in_progress") == 0
            && info_field(conn, "persistence", "aof_rewrite_scheduled") == 0
    };
    let deadline = Instant::now() + timeout;
    crate::eventually(timeout, "no AOF rewrite in progress", || {
        idle(conn).then_some(())
    });
    let _: () = redis::cmd("BGREWRITEAOF")
        .query(conn)
        .expect("BGREWRITEAOF");
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    crate::eventually(left, "AOF rewrite finished", || idle(conn).then_some(()));
    let text: String = redis::cmd("INFO")
        .arg("persistence")
        .query(conn)
        .expect("INFO");
    assert!(
        text.contains("aof_last_bgrewrite_status:ok"),
        "AOF rewrite failed:\n{text}"
    );
}

/// The text of the newest AOF base file in a server's data dir (lossy UTF-8).
pub fn read_aof(dir: &Path) -> String {
    let aof_dir = dir.join("appendonlydir");
    let mut bases: Vec<_> = std::fs::read_dir(&aof_dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", aof_dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".base.aof"))
        .collect();
    bases.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let newest = bases
        .last()
        .unwrap_or_else(|| panic!("no base AOF in {}", aof_dir.display()));
    String::from_utf8_lossy(&std::fs::read(newest).expect("read base AOF")).into_owned()
}

/// CRC-64 as Redis computes it for DUMP payloads (Jones polynomial,
/// reflected, no final xor).
pub fn crc64_redis(data: &[u8]) -> u64 {
    let mut crc = 0u64;
    for &b in data {
        crc ^= u64::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x95ac_9329_ac4b_c9b5
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Variants of a `DUMP` of one lock whose encoded lock is corrupt but whose
/// checksum is right, so that only the module's decoder can refuse them:
/// unknown version, zero owner length, oversized owner length, zero fence.
/// The server must run with `rdbcompression no` (else the lock is LZF-packed).
pub fn corrupt_lock_dumps(dump: &[u8], fence: i64) -> Vec<Vec<u8>> {
    assert!(dump.len() > 10, "not a DUMP payload");
    let body_len = dump.len() - 8; // body + 2-byte RDB version, then the CRC
                                   // The encoded lock starts with its version byte then the fence; the
                                   // owner length follows 4 (v1) or 5 (v2) u64 fields.
    let (start, fields) = [(2u8, 5usize), (1, 4)]
        .iter()
        .find_map(|(version, fields)| {
            let mut needle = vec![*version];
            needle.extend_from_slice(&fence.to_le_bytes());
            let at = dump
                .windows(needle.len())
                .position(|w| w == needle.as_slice())?;
            Some((at, *fields))
        })
        .expect("the encoded lock inside the DUMP payload");
    let owner_len_at = start + 1 + 8 * fields;
    let patches: [(usize, &[u8]); 4] = [
        (start, &[9]),
        (owner_len_at, &[0, 0]),
        (owner_len_at, &[0xff, 0xff]),
        (start + 1, &[0; 8]),
    ];
    patches
        .iter()
        .map(|(at, bytes)| {
            let mut body = dump[..body_len].to_vec();
            body[*at..*at + bytes.len()].copy_from_slice(bytes);
            let crc = crc64_redis(&body);
            body.extend_from_slice(&crc.to_le_bytes());
            body
        })
        .collect()
}

/// A `DUMP` of one lock with its fencing token `fence` replaced by
/// `new_fence` and the checksum made right again, so that only the module
/// can refuse it. The server must run with `rdbcompression no`.
pub fn dump_with_fence(dump: &[u8], fence: i64, new_fence: i64) -> Vec<u8> {
    assert!(dump.len() > 10, "not a DUMP payload");
    let body_len = dump.len() - 8;
    let at = [2u8, 1]
        .iter()
        .find_map(|version| {
            let mut needle = vec![*version];
            needle.extend_from_slice(&fence.to_le_bytes());
            dump.windows(needle.len())
                .position(|w| w == needle.as_slice())
        })
        .expect("the encoded lock inside the DUMP payload");
    let mut body = dump[..body_len].to_vec();
    body[at + 1..at + 9].copy_from_slice(&new_fence.to_le_bytes());
    let crc = crc64_redis(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc64_matches_redis_check_value() {
        assert_eq!(super::crc64_redis(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }
}
