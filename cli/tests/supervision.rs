//! `redis-lock run` never lets its command run without the lock, whatever
//! happens to redis-lock: killed (`kill -9`), stopped (SIGSTOP, Ctrl-Z),
//! its renewals failing while the command ignores SIGTERM, the command
//! leaving background jobs behind, a broken stderr.
//!
//! Each test has two workers, A and B, write `<worker> <ns>` lines to one
//! file every 20 ms while they run; [`overlap`] finds the time and the
//! lines where both ran, and must find none. The negative control shows it
//! does find an overlap when a writer runs outside the guard. Each test
//! prints its measured overlap (`--nocapture`); with `REDIS_LOCK_TEST_BIN`
//! pointing at an older build, the same tests measure that build.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{eventually, NodeSet, Proxy, ProxyMode};

mod common;
use common::*;

/// Where two workers' lines overlap in time.
#[derive(Debug, Default)]
struct Overlap {
    /// How long both wrote, in ms (0 if one ended before the other began).
    ms: f64,
    /// Lines each wrote inside the other's span.
    lines: usize,
}

/// The overlap of workers `a` and `b` in a log of `<worker> <ns>` lines.
fn overlap(log: &str, a: &str, b: &str) -> Overlap {
    let times = |who: &str| -> Vec<u128> {
        log.lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(w, _)| *w == who)
            .filter_map(|(_, t)| t.trim().parse().ok())
            .collect()
    };
    let (ta, tb) = (times(a), times(b));
    let span = |t: &[u128]| Some((*t.iter().min()?, *t.iter().max()?));
    let (Some((a0, a1)), Some((b0, b1))) = (span(&ta), span(&tb)) else {
        return Overlap::default();
    };
    let within =
        |t: &[u128], lo: u128, hi: u128| t.iter().filter(|x| (lo..=hi).contains(*x)).count();
    let (lo, hi) = (a0.max(b0), a1.min(b1));
    Overlap {
        ms: if hi > lo { (hi - lo) as f64 / 1e6 } else { 0.0 },
        lines: within(&ta, b0, b1) + within(&tb, a0, a1),
    }
}

/// A shell loop that writes `<who> <ns>` to `log` every 20 ms, `count`
/// times (0: forever).
fn writer(who: &str, log: &Path, count: u32) -> String {
    let cond = if count == 0 {
        ":".to_owned()
    } else {
        format!("[ $i -lt {count} ]")
    };
    format!(
        "i=0; while {cond}; do echo \"{who} $(date +%s%N)\" >> {log}; sleep 0.02; i=$((i+1)); done",
        log = log.display()
    )
}

/// B: waits for the lock, then writes for about half a second.
fn worker_b(urls: &str, key: &str, log: &Path) -> (i32, String) {
    let (code, _, err) = run_tool(run_sh(
        urls,
        key,
        &["--ttl", "1s", "--wait", "15s", "--retry", "20ms"],
        &writer("B", log, 25),
    ));
    (code, err)
}

/// Lets what is left of A run on a little after B is done, so that a
/// survivor shows up in the log, then reads the overlap.
fn measure(name: &str, log: &Path) -> Overlap {
    std::thread::sleep(Duration::from_millis(200));
    let text = fs::read_to_string(log).unwrap_or_default();
    let o = overlap(&text, "A", "B");
    println!("{name}: overlap {:.0} ms, {} lines", o.ms, o.lines);
    o
}

/// Kills whatever is left of a process group (an older build's survivors).
fn kill_group(pgid_file: &Path) {
    if let Ok(pgid) = fs::read_to_string(pgid_file) {
        if let Ok(pgid) = pgid.trim().parse::<i32>() {
            // SAFETY: killpg takes plain integers.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
    }
}

fn first_line(log: &Path) {
    eventually(LIMIT, "A to start writing", || {
        fs::read_to_string(log).ok().filter(|t| t.starts_with("A "))
    });
}

// ------------------------------------------------------------- the checker

/// Negative control: a writer outside the guard (started by the test, not
/// by `run`) overlaps B, and the checker sees it.
#[test]
fn negative_control_the_checker_finds_a_writer_outside_the_guard() {
    let set = NodeSet::start(3, testkit::first_flavor());
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut a = Command::new("sh")
        .args(["-c", &writer("A", &log, 0)])
        .spawn()
        .unwrap();
    first_line(&log);
    let (code, err) = worker_b(&urls(&set), "sup:control", &log);
    let o = measure("negative control", &log);
    let _ = a.kill();
    let _ = a.wait();
    assert_eq!(code, 0, "{err}");
    assert!(o.lines > 0 && o.ms > 100.0, "the checker missed it: {o:?}");
}

#[test]
fn the_checker_sees_no_overlap_in_a_hand_over() {
    let log = "A 100000000\nA 200000000\nB 300000000\nB 400000000\n";
    let o = overlap(log, "A", "B");
    assert_eq!((o.lines, o.ms), (0, 0.0));
    let log = "A 100000000\nB 150000000\nA 200000000\nB 400000000\n";
    let o = overlap(log, "A", "B");
    assert_eq!(o.lines, 2);
    assert!((o.ms - 50.0).abs() < 1e-6, "{o:?}");
}

// ------------------------------------------------------- 1: kill -9

/// `kill -9` of redis-lock: not only the command but its children stop
/// before the lease ends (the parent-death signal reached only the
/// command itself).
#[test]
fn kill_9_of_the_tool_stops_the_commands_children_before_the_next_holder() {
    let set = NodeSet::start(3, testkit::first_flavor());
    let urls = urls(&set);
    let dir = tempfile::tempdir().unwrap();
    let (log, pgid) = (dir.path().join("log"), dir.path().join("pgid"));
    let inner = writer("A", &log, 0);
    let script = format!(
        "echo $$ > {pgid}; bash -c '{inner}'; true",
        pgid = pgid.display()
    );
    let mut cmd = tool(&urls);
    cmd.args([
        "run", "--key", "sup:kill", "--ttl", "1s", "--", "bash", "-c", &script,
    ]);
    let a = Run::start(cmd);
    first_line(&log);
    signal(a.pid(), libc::SIGKILL);
    let (code, err) = worker_b(&urls, "sup:kill", &log);
    let o = measure("kill -9", &log);
    kill_group(&pgid);
    drop(a);
    assert_eq!(code, 0, "{err}");
    assert_eq!(o.lines, 0, "A's grandchild ran on without the lock: {o:?}");
}

// ------------------------------------------------------------ 2: stopped

/// redis-lock stopped (its whole process group, as Ctrl-Z or
/// `kill -STOP -pgid` does; or SIGTSTP to it alone): renewals stop, and
/// the command must be gone before the lease ends.
#[test]
fn a_stopped_tool_does_not_leave_its_command_running() {
    for (name, sig, whole_group) in [
        ("SIGSTOP to the group", libc::SIGSTOP, true),
        ("SIGTSTP", libc::SIGTSTP, false),
    ] {
        let set = NodeSet::start(3, testkit::first_flavor());
        let urls = urls(&set);
        let dir = tempfile::tempdir().unwrap();
        let (log, pgid) = (dir.path().join("log"), dir.path().join("pgid"));
        let script = format!("echo $$ > {}; {}", pgid.display(), writer("A", &log, 0));
        let mut cmd = run_sh(&urls, "sup:stop", &["--ttl", "1s"], &script);
        // Its own group, as a shell's job would be.
        cmd.process_group(0);
        let mut a = Run::start(cmd);
        first_line(&log);
        let target = if whole_group { -a.pid() } else { a.pid() };
        // SAFETY: kill takes plain integers; the target is our child (group).
        assert_eq!(unsafe { libc::kill(target, sig) }, 0);
        let (code, err) = worker_b(&urls, "sup:stop", &log);
        let o = measure(name, &log);
        // SAFETY: as above.
        unsafe { libc::kill(target, libc::SIGCONT) };
        let a_code = a.code();
        kill_group(&pgid);
        assert_eq!(code, 0, "{name}: {err}");
        assert_eq!(o.lines, 0, "{name}: A ran on while stopped: {o:?}");
        assert_eq!(a_code, 76, "{name}: {}", a.stderr());
    }
}

// -------------------------------------------- 3: the grace within the lease

/// Renewals fail (every link held) and the command ignores SIGTERM, with
/// the default 5 s --kill-grace: it is killed before the lease it was
/// given ends, not a grace period after.
#[test]
fn a_command_ignoring_sigterm_is_dead_before_its_lease_ends() {
    let set = NodeSet::start(3, testkit::first_flavor());
    let proxies: Vec<Proxy> = set
        .nodes
        .iter()
        .map(|s| Proxy::start(("127.0.0.1", s.port())))
        .collect();
    let via: Vec<String> = proxies.iter().map(Proxy::url).collect();
    let dir = tempfile::tempdir().unwrap();
    let (log, pgid) = (dir.path().join("log"), dir.path().join("pgid"));
    let script = format!(
        "trap '' TERM; echo $$ > {}; {}",
        pgid.display(),
        writer("A", &log, 0)
    );
    let mut a = Run::start(run_sh(
        &via.join(","),
        "sup:grace",
        &[
            "--ttl",
            "1s",
            "--timeout",
            "100ms",
            "--connect-timeout",
            "100ms",
        ],
        &script,
    ));
    first_line(&log);
    for p in &proxies {
        p.set_mode(ProxyMode::Hold);
    }
    let (code, err) = worker_b(&urls(&set), "sup:grace", &log);
    let o = measure("SIGTERM ignored, renewals failing", &log);
    let a_code = a.code();
    kill_group(&pgid);
    assert_eq!(code, 0, "{err}");
    assert_eq!(o.lines, 0, "A outlived its lease: {o:?}");
    assert_eq!(a_code, 76, "{}", a.stderr());
    assert!(a.stderr().contains("SIGKILL"), "{}", a.stderr());
}

// ------------------------------------------------- 4: background jobs

/// A command that exits leaving a background job: the job is stopped
/// before the lock is released, and the command's status passed on.
#[test]
fn background_jobs_are_stopped_before_the_lock_is_released() {
    let set = NodeSet::start(3, testkit::first_flavor());
    let urls = urls(&set);
    let dir = tempfile::tempdir().unwrap();
    let (log, pgid) = (dir.path().join("log"), dir.path().join("pgid"));
    let script = format!(
        "echo $$ > {}; ( {} ) & sleep 0.3; exit 3",
        pgid.display(),
        writer("A", &log, 0)
    );
    let a = Run::start(run_sh(&urls, "sup:bg", &["--ttl", "1s"], &script));
    first_line(&log);
    let (code, err) = worker_b(&urls, "sup:bg", &log);
    let o = measure("background job", &log);
    kill_group(&pgid);
    let (a_code, _, a_err) = a.finish();
    assert_eq!(code, 0, "{err}");
    assert_eq!(o.lines, 0, "A's background job outlived the lock: {o:?}");
    assert_eq!(a_code, 3, "{a_err}");
    assert!(a_err.contains("left processes running"), "{a_err}");
}

// ------------------------------------------------------- 5: broken stderr

/// The tool with its stderr a pipe whose reader is gone.
fn with_closed_stderr(mut cmd: Command) -> Command {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both fds were just created and are owned here only.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    cmd.stderr(Stdio::from(write)).stdout(Stdio::null());
    cmd
}

#[test]
fn a_closed_stderr_neither_crashes_nor_leaks_the_lock() {
    let set = NodeSet::start(3, testkit::first_flavor());
    let urls = urls(&set);
    let dir = tempfile::tempdir().unwrap();

    // -v: chatty from the first moment the lock is held.
    let marker = dir.path().join("ran");
    let mut cmd = tool(&urls);
    cmd.args([
        "run",
        "-v",
        "--key",
        "sup:stderr",
        "--ttl",
        "10s",
        "--",
        "touch",
    ])
    .arg(&marker);
    let status = with_closed_stderr(cmd).status().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(marker.exists(), "the command never ran");
    assert_eq!(held_on(&set, "sup:stderr"), 0, "the lock was left held");

    // A loss, reported on the broken stderr: still SIGTERM, 76, released.
    let (ready, got) = (dir.path().join("ready"), dir.path().join("got"));
    // The command shares the broken stderr: it writes its own errors
    // elsewhere (sh would die of SIGPIPE saying "Terminated").
    let script = format!("exec 2>/dev/null; {}", term_recording_script(&ready, &got));
    let mut cmd = run_sh(&urls, "sup:stderr", &["--ttl", "1s"], &script);
    cmd = with_closed_stderr(cmd);
    let mut child = cmd.spawn().unwrap();
    wait_file(&ready, "the command to start");
    testkit::lockcmd::wait_held_everywhere(&set.nodes, "sup:stderr");
    for s in &set.nodes[..2] {
        let _: i64 = testkit::redis::cmd("DEL")
            .arg("sup:stderr")
            .query(&mut s.conn())
            .unwrap();
    }
    let status = eventually(LIMIT, "the tool to exit", || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(76), "{status:?}");
    assert_eq!(fs::read_to_string(&got).unwrap().trim(), "TERM");
    assert_eq!(held_on(&set, "sup:stderr"), 0, "the lock was left held");
}

// --------------------------------------------------- 6: node diagnostics

/// A node at `maxclients` is reported with the server's own message.
#[test]
fn a_node_at_maxclients_is_reported_with_the_servers_message() {
    let set = NodeSet::start(3, testkit::first_flavor());
    // Each node keeps this connection, its only client slot.
    let mut held: Vec<testkit::redis::Connection> = Vec::new();
    for s in &set.nodes[..2] {
        let mut c = s.conn();
        let _: () = testkit::redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxclients")
            .arg("1")
            .query(&mut c)
            .unwrap();
        held.push(c);
    }
    let mut cmd = tool(&urls(&set));
    cmd.args(["acquire", "--key", "sup:full"]);
    let (code, _, err) = run_tool(cmd);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("max number of clients reached"), "{err}");
}

/// The nodes' own hold limit (`lock.max-hold-ms`) ends the lease: reported
/// as such, not as "no longer held".
#[test]
fn the_nodes_hold_limit_is_reported_as_such() {
    let set = NodeSet::start(3, testkit::first_flavor());
    for s in &set.nodes {
        let _: () = testkit::redis::cmd("CONFIG")
            .arg("SET")
            .arg("lock.max-hold-ms")
            .arg("1500")
            .query(&mut s.conn())
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (ready, got) = (dir.path().join("ready"), dir.path().join("got"));
    let (code, _, err) = run_tool(run_sh(
        &urls(&set),
        "sup:hold",
        &["--ttl", "600ms"],
        &term_recording_script(&ready, &got),
    ));
    assert_eq!(code, 76, "{err}");
    assert!(err.contains("hold limit"), "{err}");
    assert!(!err.contains("no longer holds it"), "{err}");
}

/// Nodes that cannot be connected to (every link held from the first
/// byte) cost one connect timeout per round; no release is sent, or
/// waited for, to nodes the round never reached.
#[test]
fn the_wait_budget_is_honoured_with_unreachable_nodes() {
    let set = NodeSet::start(3, testkit::first_flavor());
    let proxies: Vec<Proxy> = set
        .nodes
        .iter()
        .map(|s| {
            let p = Proxy::start(("127.0.0.1", s.port()));
            p.set_mode(ProxyMode::Hold);
            p
        })
        .collect();
    let via: Vec<String> = proxies.iter().map(Proxy::url).collect();
    let via = via.join(",");
    // Before: 1.0 s and 3.2 s (a round, then a release that waited for the
    // same connect timeout).
    for (wait, limit_ms) in [("0s", 800), ("3s", 3_150)] {
        let started = Instant::now();
        let (code, _, err) = run_tool(run_sh(&via, "sup:budget", &["--wait", wait], "true"));
        let took = started.elapsed();
        println!("--wait {wait}: {took:?}");
        assert_eq!(code, 69, "{err}");
        assert!(
            took < Duration::from_millis(limit_ms),
            "--wait {wait} took {took:?}: {err}"
        );
    }
}
