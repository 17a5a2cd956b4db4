//! What an operator needs: INFO lock, CONFIG RESETSTAT, keyspace events,
//! hold limits, fence floors, ACL categories, SCAN TYPE, Redis Cluster.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use redis::{Connection, Value};
use std::time::Duration;
use testkit::lockcmd::{acquire_with, info, stats as lock_stats, user_conn};
use testkit::{eventually, Cluster, Server};

fn call_i64(c: &mut Connection, args: &[&str]) -> i64 {
    redis::cmd(args[0]).arg(&args[1..]).query(c).unwrap()
}

#[test]
fn info_lock_counts_what_happened_and_config_resetstat_clears_it() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire_with(&mut c, "a", "t1", 60_000, &[]).unwrap(); // acquisition
        acquire_with(&mut c, "a", "t1", 60_000, &[]).unwrap(); // reacquisition
        assert_eq!(acquire_with(&mut c, "a", "t2", 60_000, &[]), None); // contended
        call_i64(&mut c, &["LOCK.EXTEND", "a", "t1", "60000"]); // extension
        call_i64(&mut c, &["LOCK.EXTEND", "a", "t2", "60000"]); // refused
        call_i64(&mut c, &["LOCK.RELEASE", "a", "t2"]); // wrong token
        call_i64(&mut c, &["LOCK.RELEASE", "a", "t1"]); // release
        acquire_with(&mut c, "b", "t1", 30, &[]).unwrap(); // acquisition, then expiry
        eventually(Duration::from_secs(5), "b expired", || {
            (lock_stats(&mut c)["expired"] == 1).then_some(())
        });
        acquire_with(&mut c, "held", "t1", 60_000, &[]).unwrap();
        let stats = lock_stats(&mut c);
        let expected = [
            ("locks", 1),
            ("acquisitions", 3),
            ("reacquisitions", 1),
            ("contended", 1),
            ("extensions", 1),
            ("extensions_refused", 1),
            ("releases", 1),
            ("releases_wrong_token", 1),
            ("expired", 1),
            ("hold_limit_refusals", 0),
        ];
        for (name, value) in expected {
            assert_eq!(
                stats.get(name),
                Some(&value),
                "{flavor}: {name} in {stats:?}"
            );
        }
        let fence = info(&mut c, "held").unwrap()["fence"];
        assert_eq!(stats["fence_counter"], fence);
        assert!(stats["expiry_index_entries"] >= 1);

        // A user who may not run CONFIG cannot reset anything.
        let mut app = user_conn(&server, "app", "pw", &["~*", "+@all", "-config"]);
        assert!(redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query::<()>(&mut app)
            .is_err());
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            lock_stats(&mut c)["acquisitions"],
            3,
            "{flavor}: refused RESETSTAT resets nothing"
        );

        let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut c).unwrap();
        let stats = eventually(Duration::from_secs(2), "counters reset", || {
            let s = lock_stats(&mut c);
            (s["acquisitions"] == 0).then_some(s)
        });
        for name in [
            "reacquisitions",
            "contended",
            "extensions",
            "releases",
            "releases_wrong_token",
            "expired",
        ] {
            assert_eq!(stats[name], 0, "{flavor}: {name}");
        }
        assert_eq!(stats["locks"], 1, "{flavor}: gauges are not reset");
        assert_eq!(
            stats["fence_counter"], fence,
            "{flavor}: the fencing counter is never reset"
        );
        let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
        assert_eq!(
            lock_stats(&mut c)["expiry_index_entries"],
            0,
            "{flavor}: FLUSHALL leaves nothing indexed"
        );
        // Valkey 8+ frees a flushed database in the background by default.
        eventually(Duration::from_secs(5), "lock values freed", || {
            (lock_stats(&mut c)["locks"] == 0).then_some(())
        });
    }
}

#[test]
fn keyspace_events_report_acquire_extend_release_and_expiry() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("Ed")
            .query(&mut c)
            .unwrap();
        let mut sub = server.conn();
        sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut pubsub = sub.as_pubsub();
        pubsub.psubscribe("__keyevent@0__:lock.*").unwrap();
        acquire_with(&mut c, "k", "t", 60_000, &[]).unwrap();
        assert_eq!(acquire_with(&mut c, "k", "other", 60_000, &[]), None); // no event
        call_i64(&mut c, &["LOCK.EXTEND", "k", "t", "60000"]);
        call_i64(&mut c, &["LOCK.RELEASE", "k", "t"]);
        acquire_with(&mut c, "short", "t", 30, &[]).unwrap();
        let mut seen = Vec::new();
        for _ in 0..5 {
            let msg = pubsub.get_message().unwrap();
            let key: String = msg.get_payload().unwrap();
            seen.push(format!("{} {key}", msg.get_channel_name()));
        }
        assert_eq!(
            seen,
            [
                "__keyevent@0__:lock.acquired k",
                "__keyevent@0__:lock.extended k",
                "__keyevent@0__:lock.released k",
                "__keyevent@0__:lock.acquired short",
                "__keyevent@0__:lock.expired short",
            ],
            "{flavor}"
        );
    }
}

#[test]
fn maxhold_bounds_how_long_one_grant_can_be_held() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        acquire_with(&mut c, "k", "t", 300, &["MAXHOLD", "700"]).unwrap();
        let shown = info(&mut c, "k").unwrap();
        assert!(
            shown["maxhold"] > 500 && shown["maxhold"] <= 700,
            "{flavor}: {shown:?}"
        );
        assert_eq!(call_i64(&mut c, &["LOCK.EXTEND", "k", "t", "300"]), 1);
        assert_eq!(
            call_i64(&mut c, &["LOCK.EXTEND", "k", "t", "2000"]),
            -1,
            "{flavor}: past the limit: -1, told apart from not held"
        );
        assert_eq!(
            acquire_with(&mut c, "k", "t", 2_000, &[]),
            None,
            "{flavor}: a refresh cannot pass it either"
        );
        assert!(
            info(&mut c, "k").is_some(),
            "{flavor}: a refused extension keeps the lock"
        );
        assert_eq!(lock_stats(&mut c)["hold_limit_refusals"], 2);
        // Extending in small steps ends at the limit.
        eventually(
            Duration::from_secs(5),
            "the hold limit ends the lock",
            || {
                let extended = call_i64(&mut c, &["LOCK.EXTEND", "k", "t", "100"]);
                (extended != 1 && info(&mut c, "k").is_none()).then_some(())
            },
        );
        assert!(acquire_with(&mut c, "k", "other", 1_000, &[]).is_some());
    }
}

#[test]
fn the_max_hold_setting_applies_to_grants_without_maxhold() {
    for flavor in testkit::flavors() {
        let server = Server::builder(flavor)
            .module_arg("max-hold-ms", "5000")
            .start();
        let mut c = server.conn();
        acquire_with(&mut c, "k", "t", 1_000, &[]).unwrap();
        assert!(info(&mut c, "k").unwrap()["maxhold"] <= 5_000);
        let err = redis::cmd("LOCK.ACQUIRE")
            .arg("j")
            .arg("t")
            .arg(6_000)
            .query::<Value>(&mut c)
            .unwrap_err();
        assert!(
            testkit::error_text(&err).contains("exceeds the hold limit of 5000 ms"),
            "{flavor}: {err}"
        );
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("lock.max-hold-ms")
            .arg(0)
            .query(&mut c)
            .unwrap();
        acquire_with(&mut c, "j", "t", 6_000, &[]).unwrap();
        assert!(
            !info(&mut c, "j").unwrap().contains_key("maxhold"),
            "{flavor}: 0 means no bound"
        );
    }
}

#[test]
fn a_fence_floor_raises_the_lock_and_the_counter_and_replicates() {
    for flavor in testkit::flavors() {
        let primary = Server::start(flavor);
        let replica = Server::builder(flavor).replica_of(&primary).start();
        replica.wait_replica_synced(Duration::from_secs(10));
        let mut p = primary.conn();
        let first = acquire_with(&mut p, "k", "t", 60_000, &[]).unwrap();
        let floor = first + 1_000_000;
        // The holder raises its own lock's fence (owner-checked).
        assert_eq!(
            acquire_with(&mut p, "k", "t", 60_000, &["FENCE", &floor.to_string()]),
            Some(floor)
        );
        assert_eq!(
            acquire_with(
                &mut p,
                "k",
                "other",
                60_000,
                &["FENCE", &(floor + 1_000_000).to_string()]
            ),
            None
        );
        assert_eq!(
            info(&mut p, "k").unwrap()["fence"],
            floor,
            "{flavor}: others cannot raise it"
        );
        // The node's counter follows: the next grant anywhere is above the floor.
        let next = acquire_with(&mut p, "other-key", "x", 60_000, &[]).unwrap();
        assert_eq!(next, floor + 1, "{flavor}");
        // A new grant with a floor takes the floor.
        let high = acquire_with(
            &mut p,
            "third",
            "x",
            60_000,
            &["FENCE", &(floor + 500).to_string()],
        )
        .unwrap();
        assert_eq!(high, floor + 500);
        let acked: i64 = redis::cmd("WAIT").arg(1).arg(5_000).query(&mut p).unwrap();
        assert_eq!(acked, 1);
        let mut r = replica.conn();
        assert_eq!(
            info(&mut r, "k").unwrap()["fence"],
            floor,
            "{flavor}: the raise replicated"
        );
        let _: () = redis::cmd("DEBUG").arg("RELOAD").query(&mut p).unwrap();
        assert!(
            acquire_with(&mut p, "fourth", "x", 1_000, &[]).unwrap() > floor + 500,
            "{flavor}: persisted"
        );
    }
}

#[test]
fn acl_categories_where_the_server_has_them() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut admin = server.conn();
        let rules: &[&str] = if flavor.has_module_acl_categories() {
            &["+@read"]
        } else {
            // Redis 7.0 cannot give module commands categories: name them.
            &["+lock.info"]
        };
        acquire_with(&mut admin, "k", "t", 60_000, &[]).unwrap();
        let viewer_rules: Vec<&str> = std::iter::once("~*").chain(rules.iter().copied()).collect();
        let mut viewer = user_conn(&server, "viewer", "pw", &viewer_rules);
        assert!(info(&mut viewer, "k").is_some(), "{flavor}");
        let err = redis::cmd("LOCK.ACQUIRE")
            .arg("k")
            .arg("t")
            .arg(100)
            .query::<Value>(&mut viewer)
            .unwrap_err();
        assert!(
            testkit::error_text(&err).starts_with("NOPERM"),
            "{flavor}: {err}"
        );
        if flavor.has_module_acl_categories() {
            let members: Vec<String> = redis::cmd("ACL")
                .arg("CAT")
                .arg("lock")
                .query(&mut admin)
                .unwrap();
            let mut members = members;
            members.sort();
            if flavor.is_valkey() {
                assert_eq!(
                    members,
                    ["lock.acquire", "lock.extend", "lock.info", "lock.release"],
                    "{flavor}"
                );
            } else {
                // Redis 7.4's ACL CAT leaves module commands out of every category (it lists
                // none under @write either); the category itself works, as below.
                assert!(members.is_empty(), "{flavor}: {members:?}");
            }
            let mut app = user_conn(&server, "app", "pw", &["~locks:*", "+@lock"]);
            assert!(
                acquire_with(&mut app, "locks:x", "t", 1_000, &[]).is_some(),
                "{flavor}"
            );
            let err = redis::cmd("LOCK.LOAD")
                .arg("locks:x")
                .arg("x")
                .query::<Value>(&mut app)
                .unwrap_err();
            assert!(
                testkit::error_text(&err).starts_with("NOPERM"),
                "{flavor}: LOCK.LOAD is not in @lock"
            );
        }
    }
}

#[test]
fn scan_type_lists_held_locks_without_keys() {
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        for i in 0..25 {
            acquire_with(&mut c, &format!("locks:{i}"), "t", 60_000, &[]).unwrap();
            let _: () = redis::cmd("SET")
                .arg(format!("plain:{i}"))
                .arg("v")
                .query(&mut c)
                .unwrap();
        }
        let mut cursor = 0u64;
        let mut found = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("TYPE")
                .arg("redislock")
                .query(&mut c)
                .unwrap();
            found.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        found.sort();
        assert_eq!(found.len(), 25, "{flavor}");
        assert!(found.iter().all(|k| k.starts_with("locks:")));
    }
}

#[test]
fn in_a_cluster_lock_commands_go_to_the_node_of_the_key_slot() {
    for flavor in testkit::flavors() {
        let cluster = Cluster::start(3, flavor);
        for key in ["alpha", "bravo", "charlie", "delta", "{user:1}:lock"] {
            let owner = cluster.node_for(key);
            let mut c = owner.conn();
            let fence = acquire_with(&mut c, key, "t", 60_000, &[])
                .unwrap_or_else(|| panic!("{flavor}: {key}"));
            assert!(fence > 0);
            for other in cluster.nodes.iter().filter(|n| n.port() != owner.port()) {
                let mut o = other.conn();
                for args in [
                    vec!["LOCK.ACQUIRE", key, "t", "100"],
                    vec!["LOCK.INFO", key],
                    vec!["LOCK.RELEASE", key, "t"],
                ] {
                    let err = redis::cmd(args[0])
                        .arg(&args[1..])
                        .query::<Value>(&mut o)
                        .unwrap_err();
                    let text = testkit::error_text(&err);
                    assert!(
                        text.starts_with("MOVED") || format!("{err:?}").contains("Moved"),
                        "{flavor}: {args:?} on another node: {text}"
                    );
                }
            }
            assert_eq!(call_i64(&mut c, &["LOCK.RELEASE", key, "t"]), 1);
        }
    }
}
