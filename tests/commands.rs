//! The command contract against real servers: Redis 7.0 and 7.4, Valkey 8/9.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use redis::{Connection, Value};
use std::time::Duration;
use testkit::lockcmd::{acquire, error_of as error, extend, info, release, user_conn, wait_gone};
use testkit::{eventually, Server};

fn dbsize(conn: &mut Connection) -> i64 {
    redis::cmd("DBSIZE").query(conn).unwrap()
}

#[test]
fn acquire_extend_release_follow_the_owner() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let fence = acquire(&mut c, "res", b"alice", 10_000).expect("free lock is granted");
        assert_eq!(
            acquire(&mut c, "res", b"bob", 10_000),
            None,
            "{flavor}: held by alice"
        );
        assert_eq!(
            extend(&mut c, "res", b"bob", 10_000),
            0,
            "{flavor}: bob cannot extend"
        );
        assert_eq!(
            release(&mut c, "res", b"bob"),
            0,
            "{flavor}: bob cannot release"
        );
        assert_eq!(
            info(&mut c, "res").unwrap()["fence"],
            fence,
            "{flavor}: release by another token keeps the lock"
        );
        assert_eq!(extend(&mut c, "res", b"alice", 20_000), 1);
        let shown = info(&mut c, "res").unwrap();
        assert!(
            shown["ttl"] > 10_000 && shown["ttl"] <= 20_000,
            "{flavor}: {shown:?}"
        );
        assert_eq!(shown["extensions"], 1);
        assert_eq!(release(&mut c, "res", b"alice"), 1);
        assert_eq!(
            release(&mut c, "res", b"alice"),
            0,
            "{flavor}: releasing twice is harmless"
        );
        assert_eq!(info(&mut c, "res"), None);
        assert_eq!(dbsize(&mut c), 0, "{flavor}: a released lock leaves no key");
        let next = acquire(&mut c, "res", b"bob", 1_000).unwrap();
        assert!(next > fence, "{flavor}: fences increase: {next} > {fence}");
    }
}

#[test]
fn re_acquire_by_the_holder_returns_the_same_fence_and_refreshes_the_deadline() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let fence = acquire(&mut c, "res", b"tok", 1_000).unwrap();
        // A client that lost the reply retries with the same token.
        assert_eq!(
            acquire(&mut c, "res", b"tok", 60_000),
            Some(fence),
            "{flavor}"
        );
        let shown = info(&mut c, "res").unwrap();
        assert!(
            shown["ttl"] > 50_000,
            "{flavor}: deadline refreshed: {shown:?}"
        );
        assert_eq!(shown["extensions"], 0);
    }
}

#[test]
fn an_expired_lock_is_free_not_revived_and_its_key_goes_away() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "res", b"alice", 50).unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(
            extend(&mut c, "res", b"alice", 10_000),
            0,
            "{flavor}: expired lock not revived"
        );
        assert_eq!(info(&mut c, "res"), None);
        assert!(
            acquire(&mut c, "res", b"bob", 10_000).is_some(),
            "{flavor}: expired lock is free"
        );
        // The sweeper removes ended locks nobody touches again.
        acquire(&mut c, "idle", b"alice", 30).unwrap();
        wait_gone(&mut c, "idle", Duration::from_secs(5));
    }
}

#[test]
fn fences_increase_across_many_acquisitions_and_keys() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let mut last = 0;
        for i in 0..300 {
            let key = format!("k{}", i % 17);
            let token = format!("t{i}");
            let fence = acquire(&mut c, &key, token.as_bytes(), 60_000);
            let fence = match fence {
                Some(f) => f,
                None => {
                    // Held by an earlier token: free it, then take it.
                    let _: i64 = redis::cmd("DEL").arg(&key).query(&mut c).unwrap();
                    acquire(&mut c, &key, token.as_bytes(), 60_000).unwrap()
                }
            };
            assert!(fence > last, "{flavor}: grant {i}: {fence} after {last}");
            last = fence;
        }
    }
}

#[test]
fn info_is_a_map_in_resp3_and_a_flat_array_in_resp2_and_never_shows_the_token() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c2 = server.conn();
        let fence = acquire(&mut c2, "res", b"secret-token", 5_000).unwrap();
        let flat: Value = redis::cmd("LOCK.INFO").arg("res").query(&mut c2).unwrap();
        let Value::Array(items) = &flat else {
            panic!("{flavor}: RESP2 reply is an array, got {flat:?}")
        };
        assert_eq!(items.len(), 12);
        let mut c3 = server.conn_resp3();
        let map: Value = redis::cmd("LOCK.INFO").arg("res").query(&mut c3).unwrap();
        let Value::Map(pairs) = &map else {
            panic!("{flavor}: RESP3 reply is a map, got {map:?}")
        };
        let names: Vec<String> = pairs
            .iter()
            .map(|(k, _)| redis::from_redis_value_ref::<String>(k).unwrap())
            .collect();
        assert_eq!(
            names,
            ["acquired", "extensions", "fence", "owner", "ttl", "waiters"]
        );
        let fields = testkit::lock_info_fields(&map).unwrap();
        assert_eq!(fields["fence"], fence);
        let text = format!("{flat:?}{map:?}");
        assert!(
            !text.contains("secret"),
            "{flavor}: the token is never shown"
        );
        let owner = testkit::lock_info_owner(&map).unwrap();
        assert_eq!(owner.len(), 16);
        // The same token shows the same fingerprint, on any key and node.
        acquire(&mut c2, "other", b"secret-token", 5_000).unwrap();
        let other: Value = redis::cmd("LOCK.INFO").arg("other").query(&mut c2).unwrap();
        assert_eq!(testkit::lock_info_owner(&other).unwrap(), owner);
    }
}

#[test]
fn tokens_are_binary_safe_and_bounded() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let binary = b"\x00\xffnul\r\n".to_vec();
        assert!(acquire(&mut c, "bin", &binary, 5_000).is_some());
        assert_eq!(
            acquire(&mut c, "bin", b"\x00\xffnul\r", 5_000),
            None,
            "{flavor}: prefix is another token"
        );
        assert_eq!(release(&mut c, "bin", &binary), 1);
        let max = vec![b'x'; 256];
        assert!(acquire(&mut c, "max", &max, 5_000).is_some());
        let too_long = vec![b'x'; 257];
        assert!(error(&mut c, &[b"LOCK.ACQUIRE", b"k", &too_long, b"100"])
            .starts_with("ERR invalid token"));
    }
}

#[test]
fn bad_input_gets_an_error_that_names_the_argument_and_changes_nothing() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let fence = acquire(&mut c, "held", b"owner", 60_000).unwrap();
        let _: () = redis::cmd("SET").arg("str").arg("v").query(&mut c).unwrap();
        let cases: &[(&[&[u8]], &str)] = &[
            (
                &[b"LOCK.ACQUIRE", b"k", b"t"],
                "ERR wrong number of arguments for 'lock.acquire' command",
            ),
            (&[b"LOCK.ACQUIRE"], "ERR wrong number of arguments"),
            (
                &[b"LOCK.EXTEND", b"held", b"owner"],
                "ERR wrong number of arguments for 'lock.extend' command",
            ),
            (
                &[b"LOCK.RELEASE", b"held"],
                "ERR wrong number of arguments for 'lock.release' command",
            ),
            (
                &[b"LOCK.RELEASE", b"held", b"owner", b"x"],
                "ERR wrong number of arguments for 'lock.release' command",
            ),
            (
                &[b"LOCK.INFO"],
                "ERR wrong number of arguments for 'lock.info' command",
            ),
            (
                &[b"LOCK.ACQUIRE", b"k", b"t", b"abc"],
                "ERR invalid ttl-ms 'abc': must be an integer from 1 to 300000 (lock.max-ttl-ms)",
            ),
            (
                &[b"LOCK.ACQUIRE", b"k", b"t", b"0"],
                "ERR invalid ttl-ms '0'",
            ),
            (
                &[b"LOCK.ACQUIRE", b"k", b"t", b"-1"],
                "ERR invalid ttl-ms '-1'",
            ),
            (
                &[b"LOCK.ACQUIRE", b"k", b"t", b"86400001"],
                "ERR invalid ttl-ms '86400001'",
            ),
            (
                &[b"LOCK.ACQUIRE", b"k", b"t", b"1.5"],
                "ERR invalid ttl-ms '1.5'",
            ),
            (
                &[b"LOCK.EXTEND", b"held", b"owner", b"0"],
                "ERR invalid ttl-ms '0'",
            ),
            (
                &[b"LOCK.ACQUIRE", b"k", b"", b"100"],
                "ERR invalid token: must be 1 to 256 bytes, got 0",
            ),
            (
                &[b"LOCK.ACQUIRE", b"k", b"t", b"100", b"BOGUS", b"1"],
                "ERR unknown option 'BOGUS' for 'lock.acquire'",
            ),
            (
                &[b"LOCK.ACQUIRE", b"k", b"t", b"100", b"BOGUS"],
                "ERR option 'BOGUS' needs a value, or is unknown for 'lock.acquire'",
            ),
            (
                &[b"LOCK.ACQUIRE", b"k", b"t", b"100", b"FENCE", b"-3"],
                "ERR invalid FENCE '-3'",
            ),
            (
                &[b"LOCK.ACQUIRE", b"k", b"t", b"100", b"MAXHOLD", b"50"],
                "ERR ttl-ms 100 exceeds the hold limit of 50 ms",
            ),
            (
                &[b"LOCK.ACQUIRE", b"k", b"t", b"100", b"\x00\xff", b"1"],
                "ERR unknown option '\\x00\\xff'",
            ),
            (&[b"LOCK.ACQUIRE", b"str", b"t", b"100"], "WRONGTYPE"),
            (&[b"LOCK.EXTEND", b"str", b"t", b"100"], "WRONGTYPE"),
            (&[b"LOCK.RELEASE", b"str", b"t"], "WRONGTYPE"),
            (&[b"LOCK.INFO", b"str"], "WRONGTYPE"),
            (
                &[b"LOCK.LOAD", b"k", b"garbage"],
                "ERR invalid LOCK.LOAD payload",
            ),
            (&[b"GET", b"held"], "WRONGTYPE"),
        ];
        for (args, expected) in cases {
            let got = error(&mut c, args);
            assert!(
                got.starts_with(expected),
                "{flavor}: {args:?}: expected '{expected}', got '{got}'"
            );
        }
        assert_eq!(dbsize(&mut c), 2, "{flavor}: no key created by bad input");
        assert_eq!(info(&mut c, "held").unwrap()["fence"], fence);
        let s: String = redis::cmd("GET").arg("str").query(&mut c).unwrap();
        assert_eq!(s, "v");
        let pong: String = redis::cmd("PING").query(&mut c).unwrap();
        assert_eq!(pong, "PONG");
    }
}

#[test]
fn max_ttl_is_a_module_setting() {
    for flavor in testkit::flavors() {
        let server = Server::builder(flavor)
            .module_arg("max-ttl-ms", "1000")
            .start();
        let mut c = server.conn();
        let max: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("lock.max-ttl-ms")
            .query(&mut c)
            .unwrap();
        assert_eq!(max, ["lock.max-ttl-ms", "1000"]);
        assert!(error(&mut c, &[b"LOCK.ACQUIRE", b"k", b"t", b"1001"]).contains("from 1 to 1000"));
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("lock.max-ttl-ms")
            .arg(5000)
            .query(&mut c)
            .unwrap();
        assert!(acquire(&mut c, "k", b"t", 5_000).is_some(), "{flavor}");
        let err = redis::cmd("CONFIG")
            .arg("SET")
            .arg("lock.max-ttl-ms")
            .arg(0)
            .query::<()>(&mut c)
            .unwrap_err();
        assert!(testkit::error_text(&err).starts_with("ERR"), "{flavor}");
    }
}

#[test]
fn commands_work_inside_multi_and_lua() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let replies: Vec<Value> = redis::pipe()
            .atomic()
            .cmd("LOCK.ACQUIRE")
            .arg("m")
            .arg("t1")
            .arg(5_000)
            .cmd("LOCK.ACQUIRE")
            .arg("m")
            .arg("t2")
            .arg(5_000)
            .cmd("LOCK.RELEASE")
            .arg("m")
            .arg("t1")
            .cmd("LOCK.ACQUIRE")
            .arg("m")
            .arg("t2")
            .arg(5_000)
            .query(&mut c)
            .unwrap();
        assert!(matches!(replies[0], Value::Int(_)), "{flavor}: {replies:?}");
        assert_eq!(replies[1], Value::Nil);
        assert_eq!(replies[2], Value::Int(1));
        assert!(matches!(replies[3], Value::Int(_)));
        // A bad command inside MULTI fails alone at EXEC; the others apply.
        let _: () = redis::cmd("MULTI").query(&mut c).unwrap();
        for ttl in [0, 5_000] {
            let queued: String = redis::cmd("LOCK.ACQUIRE")
                .arg("m2")
                .arg("t")
                .arg(ttl)
                .query(&mut c)
                .unwrap();
            assert_eq!(queued, "QUEUED");
        }
        // redis-rs turns an EXEC array holding an error into that error.
        let exec = redis::cmd("EXEC").query::<Value>(&mut c).unwrap_err();
        assert!(
            testkit::error_text(&exec).contains("invalid ttl-ms '0'"),
            "{flavor}: {exec}"
        );
        assert!(
            info(&mut c, "m2").is_some(),
            "{flavor}: the valid command in the transaction applied"
        );

        let script =
            redis::Script::new("return redis.call('LOCK.ACQUIRE', KEYS[1], ARGV[1], ARGV[2])");
        let fence: Option<i64> = script
            .key("lua")
            .arg("t")
            .arg(5_000)
            .invoke(&mut c)
            .unwrap();
        assert!(fence.is_some());
        let again: Option<i64> = script
            .key("lua")
            .arg("other")
            .arg(5_000)
            .invoke(&mut c)
            .unwrap();
        assert_eq!(
            again, None,
            "{flavor}: nil inside Lua is false, returned as nil"
        );
        let err = script
            .key("lua")
            .arg("t")
            .arg(0)
            .invoke::<Value>(&mut c)
            .unwrap_err();
        assert!(
            testkit::error_text(&err).contains("invalid ttl-ms"),
            "{flavor}: {err}"
        );
        assert_eq!(info(&mut c, "lua").unwrap()["fence"], fence.unwrap());
    }
}

#[test]
fn key_specs_are_declared() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        for (cmd, args) in [
            ("LOCK.ACQUIRE", vec!["res", "tok", "100"]),
            ("LOCK.EXTEND", vec!["res", "tok", "100"]),
            ("LOCK.RELEASE", vec!["res", "tok"]),
            ("LOCK.INFO", vec!["res"]),
        ] {
            let keys: Vec<String> = redis::cmd("COMMAND")
                .arg("GETKEYS")
                .arg(cmd)
                .arg(&args)
                .query(&mut c)
                .unwrap();
            assert_eq!(keys, ["res"], "{flavor}: {cmd}");
        }
        let docs: Value = redis::cmd("COMMAND")
            .arg("INFO")
            .arg("lock.info")
            .arg("lock.acquire")
            .query(&mut c)
            .unwrap();
        let text = format!("{docs:?}");
        assert!(
            text.contains("readonly") && text.contains("RO"),
            "{flavor}: {text}"
        );
        assert!(
            text.contains("denyoom") && text.contains("RW"),
            "{flavor}: {text}"
        );
    }
}

#[test]
fn acl_key_patterns_apply() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut admin = server.conn();
        let lock_cmds = [
            "+lock.acquire",
            "+lock.extend",
            "+lock.release",
            "+lock.info",
            "+ping",
        ];
        let locker_rules: Vec<&str> = std::iter::once("~locks:*").chain(lock_cmds).collect();
        let mut locker = user_conn(&server, "locker", "pw", &locker_rules);
        assert!(acquire(&mut locker, "locks:x", b"t", 5_000).is_some());
        let denied = error(&mut locker, &[b"LOCK.ACQUIRE", b"other:x", b"t", b"100"]);
        assert!(denied.starts_with("NOPERM"), "{flavor}: {denied}");
        let reader_rules: Vec<&str> = std::iter::once("%R~*").chain(lock_cmds).collect();
        let mut reader = user_conn(&server, "reader", "pw", &reader_rules);
        assert!(
            info(&mut reader, "locks:x").is_some(),
            "{flavor}: read-only user can LOCK.INFO"
        );
        for args in [
            &[&b"LOCK.ACQUIRE"[..], b"locks:y", b"t", b"100"][..],
            &[b"LOCK.EXTEND", b"locks:x", b"t", b"100"],
            &[b"LOCK.RELEASE", b"locks:x", b"t"],
        ] {
            let denied = error(&mut reader, args);
            assert!(denied.starts_with("NOPERM"), "{flavor}: {args:?}: {denied}");
        }
        assert!(
            info(&mut admin, "locks:x").is_some(),
            "{flavor}: still held"
        );
    }
}

#[test]
fn over_maxmemory_acquire_is_refused_with_oom_and_release_still_works() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire(&mut c, "held", b"t", 60_000).unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg("noeviction")
            .query(&mut c)
            .unwrap();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(1)
            .query(&mut c)
            .unwrap();
        let oom = error(&mut c, &[b"LOCK.ACQUIRE", b"new", b"t", b"100"]);
        assert!(oom.starts_with("OOM"), "{flavor}: {oom}");
        assert_eq!(
            release(&mut c, "held", b"t"),
            1,
            "{flavor}: release frees memory, so it is allowed"
        );
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(0)
            .query(&mut c)
            .unwrap();
        assert_eq!(dbsize(&mut c), 0);
    }
}

#[test]
fn type_del_copy_rename_dump_restore_behave() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let fence = acquire(&mut c, "a", b"tok", 60_000).unwrap();
        let t: String = redis::cmd("TYPE").arg("a").query(&mut c).unwrap();
        assert_eq!(t, "redislock");

        let dump: Vec<u8> = redis::cmd("DUMP").arg("a").query(&mut c).unwrap();
        let _: i64 = redis::cmd("DEL").arg("a").query(&mut c).unwrap();
        assert!(
            acquire(&mut c, "a", b"other", 100).is_some(),
            "{flavor}: DEL frees the lock"
        );
        let _: () = redis::cmd("RESTORE")
            .arg("b")
            .arg(0)
            .arg(&dump)
            .query(&mut c)
            .unwrap();
        let restored = info(&mut c, "b").unwrap();
        assert_eq!(restored["fence"], fence, "{flavor}");
        assert!(restored["ttl"] > 0 && restored["ttl"] <= 60_000);
        assert_eq!(
            acquire(&mut c, "b", b"other", 100),
            None,
            "{flavor}: restored lock is held"
        );
        assert_eq!(
            release(&mut c, "b", b"tok"),
            1,
            "{flavor}: the owner of the dump can release it"
        );

        acquire(&mut c, "src", b"tok", 300).unwrap();
        let copied: i64 = redis::cmd("COPY")
            .arg("src")
            .arg("dst")
            .query(&mut c)
            .unwrap();
        assert_eq!(copied, 1);
        assert_eq!(
            acquire(&mut c, "dst", b"other", 100),
            None,
            "{flavor}: the copy is held too"
        );
        let _: () = redis::cmd("RENAME")
            .arg("src")
            .arg("renamed")
            .query(&mut c)
            .unwrap();
        assert_eq!(acquire(&mut c, "renamed", b"other", 100), None);
        assert!(
            acquire(&mut c, "src", b"other", 100).is_some(),
            "{flavor}: old name is free"
        );
        // Copies and renamed locks still expire and leave no key.
        eventually(
            Duration::from_secs(5),
            "copied and renamed locks removed",
            || {
                let n: i64 = redis::cmd("EXISTS")
                    .arg("dst")
                    .arg("renamed")
                    .query(&mut c)
                    .unwrap();
                (n == 0).then_some(())
            },
        );
    }
}

#[test]
fn restore_of_a_corrupt_or_truncated_payload_is_an_error_not_a_crash() {
    for flavor in testkit::flavors() {
        // Uncompressed, so the encoded lock can be found and corrupted in the dump.
        let server = Server::builder(flavor).arg("rdbcompression", "no").start();
        let mut c = server.conn();
        let fence = acquire(&mut c, "a", b"tok", 60_000).unwrap();
        let dump: Vec<u8> = redis::cmd("DUMP").arg("a").query(&mut c).unwrap();
        // Cut short: the checksum no longer matches.
        let cut = &dump[..dump.len() - 12];
        let err = redis::cmd("RESTORE")
            .arg("x")
            .arg(0)
            .arg(cut)
            .query::<()>(&mut c)
            .unwrap_err();
        assert!(
            testkit::error_text(&err).starts_with("ERR"),
            "{flavor}: {err}"
        );
        // Corrupt the lock inside and fix the checksum, so the module's own
        // decoder is what must refuse it.
        for corrupt in testkit::corrupt_lock_dumps(&dump, fence) {
            let err = redis::cmd("RESTORE")
                .arg("x")
                .arg(0)
                .arg(&corrupt)
                .query::<()>(&mut c)
                .unwrap_err();
            assert!(
                testkit::error_text(&err).contains("Bad data format"),
                "{flavor}: {err}"
            );
        }
        let pong: String = redis::cmd("PING").query(&mut c).unwrap();
        assert_eq!(pong, "PONG");
        assert_eq!(dbsize(&mut c), 1, "{flavor}: nothing restored");
    }
}

#[test]
fn many_short_locks_leave_no_keys_and_no_memory_behind() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let used = |c: &mut Connection| testkit::info_field(c, "memory", "used_memory");
        let before = used(&mut c);
        const N: usize = 50_000;
        for chunk in 0..(N / 5_000) {
            let mut pipe = redis::pipe();
            for i in 0..5_000 {
                pipe.cmd("LOCK.ACQUIRE")
                    .arg(format!("short:{chunk}:{i}"))
                    .arg("t")
                    .arg(200)
                    .ignore();
            }
            let () = pipe.query(&mut c).unwrap();
        }
        let peak = used(&mut c);
        // Some of the 200 ms locks have ended by now (the machine may be
        // slow): at least 1 MB proves that the locks were counted.
        assert!(
            peak > before + 1_000_000,
            "{flavor}: {N} locks take memory: {before} -> {peak}"
        );
        eventually(Duration::from_secs(20), "all short locks removed", || {
            (dbsize(&mut c) == 0).then_some(())
        });
        let after = used(&mut c);
        assert!(
            after < before + 1_000_000,
            "{flavor}: memory returns: before {before}, peak {peak}, after {after}"
        );
    }
}
