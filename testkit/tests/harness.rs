//! The harness itself, against plain servers (no module, so these run before it is built).

use std::time::{Duration, Instant};

use redis::Commands;
use testkit::{eventually, flavors, Flavor, NodeSet, Server};

fn plain(flavor: Flavor) -> Server {
    Server::builder(flavor).no_module().start()
}

fn ping(server: &Server) -> String {
    redis::cmd("PING").query(&mut server.conn()).expect("PING")
}

fn server_time(server: &Server) -> u64 {
    let (secs, _micros): (u64, u64) = redis::cmd("TIME").query(&mut server.conn()).expect("TIME");
    secs
}

#[test]
fn every_available_flavor_starts_answers_and_stops() {
    for flavor in flavors() {
        let mut server = plain(flavor);
        assert_eq!(ping(&server), "PONG", "{flavor}");
        assert!(server.is_running());
        assert!(
            server.log().contains(&server.port().to_string()),
            "{flavor} log mentions its port"
        );
        let pid = server.pid();
        server.kill();
        assert!(!server.is_running());
        // SAFETY: signal 0 only checks whether the pid exists.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "{flavor}: pid {pid} still exists after kill()");
        server.kill(); // idempotent
    }
}

#[test]
fn dropping_a_server_kills_it_and_removes_its_dir() {
    let Some(&flavor) = flavors().first() else {
        return;
    };
    let server = plain(flavor);
    let (pid, dir) = (server.pid(), server.dir().to_path_buf());
    drop(server);
    // SAFETY: signal 0 only checks whether the pid exists.
    assert_ne!(
        unsafe { libc::kill(pid as libc::pid_t, 0) },
        0,
        "pid {pid} survived drop"
    );
    if std::env::var("REDIS_LOCK_KEEP_DIRS").as_deref() != Ok("1") {
        assert!(!dir.exists(), "{} survived drop", dir.display());
    }
}

#[test]
fn restart_keeps_the_port_and_with_appendonly_the_data() {
    for flavor in flavors() {
        let mut server = Server::builder(flavor).no_module().appendonly(true).start();
        let port = server.port();
        let _: () = server.conn().set("k", "v").expect("SET");
        let old_pid = server.pid();
        server.restart();
        assert_eq!(server.port(), port, "{flavor}");
        assert_ne!(server.pid(), old_pid, "{flavor}: a new process");
        let v: Option<String> = server.conn().get("k").expect("GET");
        assert_eq!(
            v.as_deref(),
            Some("v"),
            "{flavor}: AOF (fsync always) survives kill -9"
        );
    }
}

#[test]
fn restart_without_persistence_loses_the_data() {
    let Some(&flavor) = flavors().first() else {
        return;
    };
    let mut server = plain(flavor);
    let _: () = server.conn().set("k", "v").expect("SET");
    server.restart();
    let v: Option<String> = server.conn().get("k").expect("GET");
    assert_eq!(v, None);
}

#[test]
fn shutdown_save_then_start_again_keeps_rdb_data() {
    for flavor in flavors() {
        let mut server = Server::builder(flavor).no_module().rdb().start();
        let _: () = server.conn().set("k", "v").expect("SET");
        server.shutdown_save();
        assert!(!server.is_running());
        assert!(
            server.dir().join("dump.rdb").is_file(),
            "{flavor}: dump.rdb written"
        );
        server.start_again();
        let v: Option<String> = server.conn().get("k").expect("GET");
        assert_eq!(v.as_deref(), Some("v"), "{flavor}");
    }
}

#[test]
fn shutdown_without_persistence_exits() {
    let Some(&flavor) = flavors().first() else {
        return;
    };
    let mut server = plain(flavor);
    server.shutdown_save();
    assert!(!server.is_running());
    assert!(!server.dir().join("dump.rdb").exists());
}

#[test]
fn parallel_servers_get_different_ports() {
    let Some(&flavor) = flavors().first() else {
        return;
    };
    let set = NodeSet::start_with(3, |_| Server::builder(flavor).no_module());
    let mut ports: Vec<u16> = set.nodes.iter().map(Server::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "{:?}", set.urls());
    for node in &set.nodes {
        assert_eq!(ping(node), "PONG");
    }
    assert_eq!(
        set.urls()[0],
        format!("redis://127.0.0.1:{}", set.nodes[0].port())
    );
}

#[test]
fn a_paused_server_does_not_answer_until_resumed() {
    let Some(&flavor) = flavors().first() else {
        return;
    };
    let server = plain(flavor);
    // Connect before pausing: the connection handshake would wait on a stopped server too.
    let mut conn = server.conn();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    server.pause();
    let t = Instant::now();
    let err = redis::cmd("PING")
        .query::<String>(&mut conn)
        .expect_err("a stopped server answered");
    assert!(err.is_timeout(), "expected a timeout, got {err}");
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert!(server.is_running(), "paused is still running");
    server.resume();
    // The timed-out connection may hold the late PONG; use a fresh one.
    assert_eq!(ping(&server), "PONG");
}

#[test]
fn a_paused_server_is_killed_on_drop() {
    let Some(&flavor) = flavors().first() else {
        return;
    };
    let server = plain(flavor);
    let pid = server.pid();
    server.pause();
    drop(server);
    // SAFETY: signal 0 only checks whether the pid exists.
    assert_ne!(unsafe { libc::kill(pid as libc::pid_t, 0) }, 0);
}

#[test]
fn faketime_moves_the_wall_clock_of_valkey() {
    let faked: Vec<Flavor> = flavors()
        .into_iter()
        .filter(Flavor::supports_faketime)
        .collect();
    for flavor in faked {
        let server = Server::builder(flavor).no_module().faketime().start();
        let before = server_time(&server);
        // set_fake_offset returns once the server sees the new time: no polling needed here.
        server.set_fake_offset("+3600s");
        let jumped = server_time(&server);
        assert!(
            (before + 3599..=before + 3610).contains(&jumped),
            "{flavor}: jumped by {}",
            jumped as i64 - before as i64
        );
        server.set_fake_offset("+0");
        let back = server_time(&server);
        assert!(
            back < before + 10,
            "{flavor}: back to real time, got +{}",
            back - before
        );
        server.set_fake_offset("-1d");
        let behind = server_time(&server);
        assert!(
            behind + 86_390 <= before,
            "{flavor}: a day behind, got {}",
            behind as i64 - before as i64
        );
    }
}

#[test]
fn faketime_offset_can_be_set_while_paused() {
    let Some(flavor) = flavors().into_iter().find(Flavor::supports_faketime) else {
        return;
    };
    let server = Server::builder(flavor).no_module().faketime().start();
    let before = server_time(&server);
    server.pause();
    server.set_fake_offset("+2h");
    server.resume();
    let t = eventually(Duration::from_secs(5), "TIME two hours ahead", || {
        let t = server_time(&server);
        (t >= before + 7190).then_some(t)
    });
    assert!(t <= before + 7210);
}

#[test]
fn faketime_survives_restart_and_leaves_no_shared_memory() {
    let Some(flavor) = flavors().into_iter().find(Flavor::supports_faketime) else {
        return;
    };
    let mut server = Server::builder(flavor).no_module().faketime().start();
    server.set_fake_offset("+1d");
    let pid = server.pid();
    server.restart();
    assert!(!std::path::Path::new(&format!("/dev/shm/faketime_shm_{pid}")).exists());
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let t = server_time(&server);
    assert!(
        t >= real + 86_000,
        "offset file still applies after restart"
    );
}

#[test]
#[should_panic(expected = "cannot run under libfaketime")]
fn faketime_on_redis_is_refused() {
    let _ = Server::builder(Flavor::Redis7).faketime();
}

#[test]
fn replica_syncs_from_primary() {
    let Some(&flavor) = flavors().first() else {
        return;
    };
    let primary = plain(flavor);
    let _: () = primary.conn().set("k", "v").expect("SET");
    let replica = Server::builder(flavor)
        .no_module()
        .replica_of(&primary)
        .start();
    replica.wait_replica_synced(Duration::from_secs(10));
    let v: Option<String> = replica.conn().get("k").expect("GET");
    assert_eq!(v.as_deref(), Some("v"));
}

#[test]
fn extra_args_override_defaults() {
    let Some(&flavor) = flavors().first() else {
        return;
    };
    let server = Server::builder(flavor)
        .no_module()
        .arg("loglevel", "warning")
        .arg("save", "60 1")
        .start();
    let loglevel: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("loglevel")
        .query(&mut server.conn())
        .expect("CONFIG GET");
    assert_eq!(loglevel[1], "warning");
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query(&mut server.conn())
        .expect("CONFIG GET");
    assert_eq!(save[1], "60 1");
}

#[test]
fn resp3_connection_speaks_resp3() {
    let Some(&flavor) = flavors().first() else {
        return;
    };
    let server = plain(flavor);
    let hello: redis::Value = redis::cmd("HELLO")
        .query(&mut server.conn_resp3())
        .expect("HELLO");
    assert!(matches!(hello, redis::Value::Map(_)), "{hello:?}");
}

#[test]
fn a_bad_argument_fails_with_the_server_output() {
    let Some(&flavor) = flavors().first() else {
        return;
    };
    let err = std::panic::catch_unwind(|| {
        Server::builder(flavor)
            .no_module()
            .arg("no-such-option", "1")
            .start()
    })
    .expect_err("a bad option must not start");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("exited"), "{msg}");
    assert!(
        msg.contains("no-such-option"),
        "the server's complaint is shown: {msg}"
    );
}

#[test]
fn eventually_returns_the_first_some() {
    let mut n = 0;
    let v = eventually(Duration::from_secs(1), "n to reach 3", || {
        n += 1;
        (n == 3).then_some(n)
    });
    assert_eq!(v, 3);
}

#[test]
#[should_panic(expected = "waiting for never")]
fn eventually_panics_with_what_after_the_timeout() {
    eventually(Duration::from_millis(30), "never", || None::<()>);
}

#[test]
fn flavor_names() {
    assert_eq!(Flavor::Redis7.to_string(), "redis-7.0");
    assert_eq!(Flavor::Valkey8.to_string(), "valkey-8.1");
    assert_eq!(Flavor::Valkey9.to_string(), "valkey-9.1");
    assert_eq!(Flavor::Redis74.to_string(), "redis-7.4");
    assert!(!Flavor::Redis7.supports_faketime());
    assert!(!Flavor::Redis74.supports_faketime());
}

#[test]
fn start_again_waits_for_a_briefly_busy_port() {
    let Some(&flavor) = flavors().first() else {
        return;
    };
    let mut server = plain(flavor);
    let port = server.port();
    server.kill();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("take the port");
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(squatter);
    });
    server.start_again();
    release.join().expect("release thread");
    assert_eq!(server.port(), port);
    assert_eq!(ping(&server), "PONG");
}

#[test]
fn start_again_on_a_port_that_stays_busy_fails_clearly() {
    let Some(&flavor) = flavors().first() else {
        return;
    };
    let mut server = plain(flavor);
    let port = server.port();
    server.kill();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("take the port");
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| server.start_again()))
        .expect_err("the port is taken");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains(&format!("port {port} still busy")), "{msg}");
    assert!(
        msg.contains("Address already in use"),
        "the log is in the message: {msg}"
    );
}
