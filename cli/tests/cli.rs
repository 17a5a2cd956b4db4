//! The `redis-lock` binary against real nodes started by testkit: exit
//! statuses, what the command sees, release on every way a command ends,
//! loss of the lock, signals, and two `run`s that must never overlap.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs::{self, File};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use testkit::{eventually, NodeSet, Server};

mod common;
use common::*;

// ---------------------------------------------------------------- exit codes

#[test]
fn usage_errors_exit_64() {
    let cases: [(&str, &[&str], &str); 5] = [
        ("", &["acquire", "--key", "k"], "no nodes"),
        (
            "redis://127.0.0.1:1",
            &["acquire", "--key", "k", "--ttl", "30"],
            "needs a unit",
        ),
        ("redis://127.0.0.1:1", &["run", "--key", "k"], "COMMAND"),
        ("not-a-url", &["acquire", "--key", "k"], "not a Redis URL"),
        (
            "redis://127.0.0.1:1",
            &["frobnicate"],
            "unrecognized subcommand",
        ),
    ];
    for (urls, args, why) in cases {
        let mut cmd = tool(urls);
        cmd.args(args);
        let (code, _, err) = run_tool(cmd);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    let mut help = tool("");
    help.arg("--help");
    let (code, out, _) = run_tool(help);
    assert_eq!(code, 0);
    assert!(out.contains("Exit status:"), "{out}");
}

#[test]
fn unreachable_nodes_exit_69() {
    let urls: Vec<String> = (0..3)
        .map(|_| format!("redis://127.0.0.1:{}", testkit::free_port()))
        .collect();
    let urls = urls.join(",");
    let mut cmd = tool(&urls);
    cmd.args(["acquire", "--key", "k"]);
    let (code, _, err) = run_tool(cmd);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("cannot connect"), "{err}");

    // Waiting does not turn an outage into "taken".
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let script = format!("touch {}", marker.display());
    let (code, _, err) = run_tool(run_sh(&urls, "k", &["--wait", "300ms"], &script));
    assert_eq!(code, 69, "{err}");
    assert!(!marker.exists(), "the command ran without the lock");

    let mut status = tool(&urls);
    status.arg("status");
    let (code, out, _) = run_tool(status);
    assert_eq!(code, 69, "{out}");
    assert!(out.contains("0 of 3 nodes healthy"), "{out}");
}

#[test]
fn nodes_without_the_module_exit_78() {
    let set = NodeSet::start_with(3, |_| Server::builder(testkit::first_flavor()).no_module());
    let urls = urls(&set);
    let mut cmd = tool(&urls);
    cmd.args(["acquire", "--key", "k"]);
    let (code, _, err) = run_tool(cmd);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("module not loaded"), "{err}");

    let mut status = tool(&urls);
    status.args(["status", "--key", "k"]);
    let (code, out, _) = run_tool(status);
    assert_eq!(code, 78, "{out}");
    assert_eq!(out.matches("NOT LOADED").count(), 3, "{out}");
}

#[test]
fn held_lock_exits_75_once_the_wait_runs_out() {
    let set = nodes(3);
    let urls = urls(&set);
    let (token, _) = acquire(&urls, "busy", "20s");

    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let started = Instant::now();
    let (code, _, err) = run_tool(run_sh(
        &urls,
        "busy",
        &["--wait", "400ms"],
        &format!("touch {}", marker.display()),
    ));
    assert_eq!(code, 75, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(err.contains("not acquired"), "{err}");
    // Said once, in rounds, with a readable duration.
    assert_eq!(err.matches("\"busy\"").count(), 1, "{err}");
    assert!(err.contains(" round") && !err.contains("attempts"), "{err}");
    assert!(!marker.exists(), "the command ran without the lock");

    // flock's habits: --nonblock fails at once, -E picks the status.
    for flags in [&["--nonblock"][..], &["-n", "-E", "3"][..]] {
        let want = if flags.contains(&"-E") { 3 } else { 75 };
        let flags: Vec<&str> = flags
            .iter()
            .map(|f| if *f == "-n" { "--nonblock" } else { f })
            .collect();
        let started = Instant::now();
        let (code, _, err) = run_tool(run_sh(&urls, "busy", &flags, "true"));
        assert_eq!(code, want, "{flags:?}: {err}");
        assert!(started.elapsed() < Duration::from_secs(5), "{flags:?}");
    }

    // The holder's token releases it; a second release says it is not held.
    for want in [0, 1] {
        let mut release = tool(&urls);
        release
            .args(["release", "--key", "busy"])
            .env("REDIS_LOCK_TOKEN", &token);
        let (code, _, err) = run_tool(release);
        assert_eq!(code, want, "{err}");
    }
    assert_eq!(held_on(&set, "busy"), 0);
}

// ------------------------------------------------- what the command sees

#[test]
fn command_sees_fence_and_key_but_not_the_token() {
    let set = nodes(3);
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    let go = dir.path().join("go");
    let script = format!(
        "env | grep '^REDIS_LOCK_' | sort > {env}.tmp; mv {env}.tmp {env}; \
         i=0; while [ ! -e {go} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done",
        env = env_file.display(),
        go = go.display()
    );
    let mut cmd = run_sh(&urls(&set), "jobs:env", &["--ttl", "10s"], &script);
    cmd.env("REDIS_LOCK_TOKEN", "inherited-secret");
    let run = Run::start(cmd);

    let env = eventually(LIMIT, "the command's environment", || {
        fs::read_to_string(&env_file).ok()
    });
    let vars: std::collections::HashMap<&str, &str> =
        env.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(vars.get("REDIS_LOCK_KEY"), Some(&"jobs:env"), "{env}");
    assert!(
        !vars.contains_key("REDIS_LOCK_TOKEN"),
        "token leaked: {env}"
    );
    let fence: i64 = vars["REDIS_LOCK_FENCE"].parse().unwrap();
    // The fence is the one a granting node handed out for this lock.
    let fences: Vec<i64> = set
        .nodes
        .iter()
        .filter_map(|s| testkit::lockcmd::info_on(s, "jobs:env"))
        .map(|f| f["fence"])
        .collect();
    assert!(fences.len() >= 2, "held on {fences:?}");
    assert!(fences.contains(&fence), "{fence} not among {fences:?}");

    File::create(&go).unwrap();
    let (code, _, err) = run.finish();
    assert_eq!(code, 0, "{err}");
    assert_released(&set, "jobs:env");
}

// ------------------------------------------------------------- release

#[test]
fn exit_status_is_passed_through_and_the_lock_released() {
    let set = nodes(3);
    let urls = urls(&set);
    let (code, _, err) = run_tool(run_sh(&urls, "jobs:exit", &["--ttl", "10s"], "exit 7"));
    assert_eq!(code, 7, "{err}");
    assert_released(&set, "jobs:exit");

    let (code, _, err) = run_tool(run_sh(&urls, "jobs:exit", &["--ttl", "10s"], "true"));
    assert_eq!(code, 0, "{err}");
    assert_released(&set, "jobs:exit");

    let mut missing = tool(&urls);
    missing.args(["run", "--key", "jobs:exit", "--", "/nonexistent/command"]);
    let (code, _, err) = run_tool(missing);
    assert_eq!(code, 127, "{err}");
    assert_released(&set, "jobs:exit");
}

#[test]
fn crashed_command_releases_the_lock() {
    let set = nodes(3);
    let (code, _, err) = run_tool(run_sh(
        &urls(&set),
        "jobs:crash",
        &["--ttl", "10s"],
        "kill -SEGV $$",
    ));
    assert_eq!(code, 128 + libc::SIGSEGV, "{err}");
    assert_released(&set, "jobs:crash");
}

#[test]
fn signals_to_the_tool_are_forwarded_and_the_lock_released() {
    let set = nodes(3);
    for (sig, name) in [(libc::SIGTERM, "TERM"), (libc::SIGINT, "INT")] {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let got = dir.path().join("got");
        let script = format!(
            "trap 'echo {name} > {got}; exit 42' {name}; echo up > {ready}; \
             i=0; while [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done",
            got = got.display(),
            ready = ready.display()
        );
        let mut run = Run::start(run_sh(
            &urls(&set),
            "jobs:signal",
            &["--ttl", "10s"],
            &script,
        ));
        wait_file(&ready, "the command to start");
        signal(run.pid(), sig);
        let code = run.code();
        assert_eq!(code, 42, "{name}: {}", run.stderr());
        assert_eq!(fs::read_to_string(&got).unwrap().trim(), name);
        assert_released(&set, "jobs:signal");
    }
}

// ------------------------------------------------------------ lock loss

#[test]
fn deleting_the_key_on_a_majority_stops_the_command_with_76() {
    let set = nodes(3);
    let dir = tempfile::tempdir().unwrap();
    let (ready, got) = (dir.path().join("ready"), dir.path().join("got"));
    let mut run = Run::start(run_sh(
        &urls(&set),
        "jobs:lost",
        &["--ttl", "1s"],
        &term_recording_script(&ready, &got),
    ));
    wait_file(&ready, "the command to start");
    del_on_first(&set, 2, "jobs:lost");
    let started = Instant::now();
    let code = run.code();
    let err = run.stderr();
    assert_eq!(code, 76, "{err}");
    // Noticed at the next renewal, a third of the TTL later.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(err.contains("LOST the lock \"jobs:lost\""), "{err}");
    assert_eq!(fs::read_to_string(&got).unwrap().trim(), "TERM");
    assert_eq!(held_on(&set, "jobs:lost"), 0);
}

#[test]
fn a_command_ignoring_sigterm_is_killed_after_the_grace() {
    let set = nodes(3);
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let script = format!(
        "trap '' TERM; echo $$ > {ready}; while :; do sleep 0.05; done",
        ready = ready.display()
    );
    let mut run = Run::start(run_sh(
        &urls(&set),
        "jobs:stubborn",
        &["--ttl", "1s", "--kill-grace", "300ms"],
        &script,
    ));
    let pid: i32 = wait_file(&ready, "the command to start")
        .trim()
        .parse()
        .unwrap();
    del_on_first(&set, 2, "jobs:stubborn");
    let code = run.code();
    let err = run.stderr();
    assert_eq!(code, 76, "{err}");
    assert!(err.contains("sending SIGKILL"), "{err}");
    assert!(err.contains("status 137"), "{err}");
    assert!(!running(pid), "the command survived");
}

#[test]
fn losing_three_of_five_nodes_stops_the_command() {
    let mut set = nodes(5);
    let dir = tempfile::tempdir().unwrap();
    let (ready, got) = (dir.path().join("ready"), dir.path().join("got"));
    let mut run = Run::start(run_sh(
        &urls(&set),
        "jobs:outage",
        &[
            "--ttl",
            "1s",
            "--timeout",
            "100ms",
            "--connect-timeout",
            "100ms",
        ],
        &term_recording_script(&ready, &got),
    ));
    wait_file(&ready, "the command to start");
    let killed = Instant::now();
    for s in &mut set.nodes[..3] {
        s.kill();
    }
    let code = run.code();
    let err = run.stderr();
    assert_eq!(code, 76, "{err}");
    // The lease runs out at most a TTL after the last renewal.
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "{:?}",
        killed.elapsed()
    );
    assert!(err.contains("validity ran out"), "{err}");
    assert_eq!(fs::read_to_string(&got).unwrap().trim(), "TERM");
}

#[test]
fn max_hold_stops_a_command_that_runs_too_long() {
    let set = nodes(3);
    let dir = tempfile::tempdir().unwrap();
    let (ready, got) = (dir.path().join("ready"), dir.path().join("got"));
    let started = Instant::now();
    let mut run = Run::start(run_sh(
        &urls(&set),
        "jobs:bounded",
        &["--ttl", "600ms", "--max-hold", "1500ms"],
        &term_recording_script(&ready, &got),
    ));
    let code = run.code();
    let err = run.stderr();
    assert_eq!(code, 76, "{err}");
    assert!(err.contains("maximum hold"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fs::read_to_string(&got).unwrap().trim(), "TERM");
}

#[test]
fn killing_the_tool_kills_the_command_and_the_lock_runs_out() {
    let set = nodes(3);
    let urls = urls(&set);
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let script = format!(
        "echo $$ > {ready}; while :; do sleep 0.05; done",
        ready = ready.display()
    );
    let run = Run::start(run_sh(&urls, "jobs:orphan", &["--ttl", "1s"], &script));
    let pid: i32 = wait_file(&ready, "the command to start")
        .trim()
        .parse()
        .unwrap();
    signal(run.pid(), libc::SIGKILL);
    eventually(
        Duration::from_secs(2),
        "the command to die with the tool",
        || (!running(pid)).then_some(()),
    );
    // Nobody released it: it is still held, until the TTL frees it.
    assert!(held_on(&set, "jobs:orphan") >= 2);
    let (code, _, err) = run_tool(run_sh(&urls, "jobs:orphan", &["--wait", "5s"], "true"));
    assert_eq!(code, 0, "{err}");
    drop(run);
}

// ------------------------------------------------------- mutual exclusion

#[test]
fn two_runs_never_overlap() {
    const JOBS: usize = 4;
    let set = nodes(3);
    let urls = urls(&set);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "echo \"start $REDIS_LOCK_FENCE $(date +%s%N)\" >> {log}; sleep 0.1; \
         echo \"end $REDIS_LOCK_FENCE $(date +%s%N)\" >> {log}",
        log = log.display()
    );
    thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..JOBS {
                    let (code, _, err) = run_tool(run_sh(
                        &urls,
                        "jobs:exclusive",
                        &["--ttl", "2s", "--wait", "15s", "--retry", "20ms"],
                        &script,
                    ));
                    assert_eq!(code, 0, "{err}");
                }
            });
        }
    });

    // (fence, start, end) per job, from the children's own timestamps.
    let text = fs::read_to_string(&log).unwrap();
    let mut starts = std::collections::HashMap::new();
    let mut jobs: Vec<(u64, u128, u128)> = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (fence, at): (u64, u128) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        match f[0] {
            "start" => {
                assert!(
                    starts.insert(fence, at).is_none(),
                    "fence {fence} twice:\n{text}"
                );
            }
            _ => jobs.push((fence, starts[&fence], at)),
        }
    }
    assert_eq!(jobs.len(), 2 * JOBS, "{text}");
    jobs.sort_by_key(|j| j.1);
    for pair in jobs.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(a.2 <= b.1, "jobs overlap: {a:?} and {b:?}\n{text}");
        assert!(
            a.0 < b.0,
            "fences do not increase in time order: {a:?} then {b:?}\n{text}"
        );
    }
}

// ------------------------------------------------------ scripts and status

#[test]
fn acquire_extend_release_from_a_script() {
    let set = nodes(3);
    let urls = urls(&set);
    let (token, fence) = acquire(&urls, "jobs:script", "2s");
    let info = testkit::lockcmd::info_on(&set.nodes[0], "jobs:script").unwrap();
    assert!(info["ttl"] <= 2_000);
    assert!(fence > 0);

    let mut extend = tool(&urls);
    extend.args([
        "extend",
        "--key",
        "jobs:script",
        "--ttl",
        "60s",
        "--token",
        &token,
    ]);
    let (code, out, err) = run_tool(extend);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("extended"), "{out}");
    assert!(testkit::lockcmd::info_on(&set.nodes[0], "jobs:script").unwrap()["ttl"] > 50_000);

    let mut wrong = tool(&urls);
    wrong.args(["extend", "--key", "jobs:script", "--token", "not-the-token"]);
    let (code, _, err) = run_tool(wrong);
    assert_eq!(code, 1, "{err}");

    let mut release = tool(&urls);
    release.args(["release", "--key", "jobs:script", "--token", &token]);
    let (code, _, err) = run_tool(release);
    assert_eq!(code, 0, "{err}");
    assert_eq!(held_on(&set, "jobs:script"), 0);

    let mut late = tool(&urls);
    late.args(["extend", "--key", "jobs:script", "--token", &token]);
    let (code, _, err) = run_tool(late);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("does not hold the lock"), "{err}");
}

#[test]
fn settings_come_from_the_environment() {
    let set = nodes(3);
    let mut cmd = tool(&urls(&set));
    cmd.args(["acquire", "--key", "jobs:env-ttl"])
        .env("REDIS_LOCK_TTL", "1500ms");
    let (code, out, err) = run_tool(cmd);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("REDIS_LOCK_TOKEN="), "{out}");
    let ttl = testkit::lockcmd::info_on(&set.nodes[0], "jobs:env-ttl").unwrap()["ttl"];
    assert!((1..=1_500).contains(&ttl), "ttl {ttl}");

    let mut bad = tool(&urls(&set));
    bad.args(["acquire", "--key", "jobs:env-ttl"])
        .env("REDIS_LOCK_WAIT", "forever");
    let (code, _, err) = run_tool(bad);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("REDIS_LOCK_WAIT") || err.contains("--wait"),
        "{err}"
    );
}

#[test]
fn acquire_output_can_be_evaluated_by_a_shell() {
    let set = nodes(3);
    let bin = env!("CARGO_BIN_EXE_redis-lock");
    let script = format!(
        "eval \"$({bin} acquire --key 'jobs:it'\\''s' --ttl 5s)\" || exit 9; \
         echo \"$REDIS_LOCK_KEY|$REDIS_LOCK_FENCE\"; \
         {bin} release --key \"$REDIS_LOCK_KEY\" --token \"$REDIS_LOCK_TOKEN\" >/dev/null"
    );
    let mut sh = Command::new("sh");
    sh.args(["-c", &script]);
    for var in TOOL_ENV {
        sh.env_remove(var);
    }
    sh.env("REDIS_LOCK_NODES", urls(&set));
    let (code, out, err) = Run::start(sh).finish();
    assert_eq!(code, 0, "{err}");
    let (key, fence) = out.trim().split_once('|').unwrap();
    assert_eq!(key, "jobs:it's");
    assert!(fence.parse::<u64>().unwrap() > 0, "{out}");
    assert_eq!(held_on(&set, "jobs:it's"), 0);
}

#[test]
fn status_and_info_show_each_node() {
    let mut set = nodes(3);
    let urls = urls(&set);
    acquire(&urls, "jobs:seen", "30s");
    set.nodes[2].kill();

    let mut status = tool(&urls);
    status.args(["status", "--key", "jobs:seen"]);
    let (code, out, _) = run_tool(status);
    assert_eq!(code, 1, "degraded: {out}");
    assert_eq!(out.matches(" yes ").count(), 2, "{out}");
    assert_eq!(out.matches("  lock v").count(), 2, "{out}");
    assert!(out.contains(" no "), "{out}");
    assert!(
        out.contains("2 of 3 nodes healthy, quorum 2: degraded"),
        "{out}"
    );
    assert!(out.contains("lock: held by owner"), "{out}");

    let mut info = tool(&urls);
    info.args(["info", "--key", "jobs:seen"]);
    let (code, out, _) = run_tool(info);
    // One rule for `info` and `status`: a node down is "degraded", 1.
    assert_eq!(code, 1, "{out}");
    let held_rows = out.lines().filter(|l| l.contains("  held  ")).count();
    assert_eq!(held_rows, 2, "{out}");
    assert!(out.contains("held by owner"), "{out}");
    assert!(out.contains("1 not answering"), "{out}");
}

#[test]
fn completions_help_shows_one_line_per_shell_and_no_node_flags() {
    let mut help = tool("");
    help.args(["completions", "--help"]);
    let (code, out, _) = run_tool(help);
    assert_eq!(code, 0);
    for shell in ["bash:", "zsh:", "fish:"] {
        assert_eq!(
            out.lines()
                .filter(|l| l.trim_start().starts_with(shell))
                .count(),
            1,
            "{shell} not on a line of its own:\n{out}"
        );
    }
    for flag in ["--retry", "--timeout", "--connect-timeout", "--nodes"] {
        assert!(
            !out.contains(flag),
            "{flag} under completions --help:\n{out}"
        );
    }
    let mut top = tool("");
    top.arg("--help");
    let (_, out, _) = run_tool(top);
    assert!(!out.contains("--retry"), "{out}");
}

#[test]
fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let mut cmd = tool("");
        cmd.args(["completions", shell]);
        let (code, out, err) = run_tool(cmd);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(
            out.contains("redis-lock") && out.contains("acquire"),
            "{shell}"
        );
    }
}

/// A resource kept in files, written by `sh store.sh MODE FENCE WHO`: in
/// `fenced` mode it refuses a fence lower than the highest it has accepted,
/// in `naive` mode it accepts everything (the negative control).
const STORE_SH: &str = r#"dir=$(dirname "$0")
exec 9>"$dir/store.lock"
flock 9
max=$(cat "$dir/max" 2>/dev/null || echo 0)
if [ "$1" = naive ] || [ "$2" -ge "$max" ]; then
  [ "$2" -gt "$max" ] && echo "$2" > "$dir/max"
  echo "accepted $2 $3" >> "$dir/writes"
else
  echo "rejected $2 $3" >> "$dir/writes"
fi
"#;

/// The whole holder is paused (SIGSTOP of `redis-lock` and of its command)
/// past its TTL; another `run` takes the lock and writes; then the paused
/// worker wakes first (before its lease keeper can notice the loss) and
/// writes with its old fence. Returns the accepted writes in order.
fn paused_holder_writes(mode: &str) -> Vec<(String, u64)> {
    let set = nodes(3);
    let urls = urls(&set);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("store.sh"), STORE_SH).unwrap();
    let store = d.join("store.sh");
    let worker_a = format!(
        "echo $$ > {pid}; echo ready > {ready}; \
         while [ ! -e {go} ]; do sleep 0.01; done; \
         sh {store} {mode} $REDIS_LOCK_FENCE A",
        pid = d.join("pid_a").display(),
        ready = d.join("ready_a").display(),
        go = d.join("go_a").display(),
        store = store.display(),
    );
    let mut a = Run::start(run_sh(&urls, "res", &["--ttl", "1s"], &worker_a));
    wait_file(&d.join("ready_a"), "worker A running");
    let child: i32 = fs::read_to_string(d.join("pid_a"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Pause the whole client: the lease keeper, the command's watchdog
    // (the command's parent) and the worker, as a paused VM would be.
    let watchdog = parent_of(child);
    signal(a.pid(), libc::SIGSTOP);
    signal(watchdog, libc::SIGSTOP);
    signal(child, libc::SIGSTOP);
    eventually(Duration::from_secs(10), "A's lease to run out", || {
        (held_on(&set, "res") == 0).then_some(())
    });
    let worker_b = format!("sh {} {mode} $REDIS_LOCK_FENCE B", store.display());
    let (code, _, err) = run_tool(run_sh(
        &urls,
        "res",
        &["--ttl", "2s", "--wait", "10s"],
        &worker_b,
    ));
    assert_eq!(code, 0, "B runs once A's lease ran out: {err}");
    // The worker wakes before its lease keeper and writes at once.
    fs::write(d.join("go_a"), "").unwrap();
    signal(child, libc::SIGCONT);
    eventually(LIMIT, "A's write attempt", || {
        let writes = fs::read_to_string(d.join("writes")).unwrap_or_default();
        (writes.lines().count() == 2).then_some(())
    });
    signal(watchdog, libc::SIGCONT);
    signal(a.pid(), libc::SIGCONT);
    let code = a.code();
    assert!(
        code == 0 || code == 76,
        "A ended with {code}: {}",
        a.stderr()
    );
    fs::read_to_string(d.join("writes"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0] == "accepted").then(|| (f[2].to_string(), f[1].parse().unwrap()))
        })
        .collect()
}

#[test]
fn a_client_paused_past_its_ttl_is_fenced_off() {
    let accepted = paused_holder_writes("fenced");
    assert_eq!(
        accepted.len(),
        1,
        "only B's write is accepted: {accepted:?}"
    );
    assert_eq!(accepted[0].0, "B");
}

/// Negative control: without the fence check the paused client's stale
/// write lands after the newer holder's.
#[test]
fn negative_control_a_paused_client_without_fencing_overwrites() {
    let accepted = paused_holder_writes("naive");
    let who: Vec<&str> = accepted.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(who, ["B", "A"], "the stale write is accepted after B's");
    assert!(
        accepted[1].1 < accepted[0].1,
        "A's fence is older: {accepted:?}"
    );
}

/// The tool returns once a quorum answered, but does not exit before the
/// slower nodes have answered too: `acquire` leaves the lock on every node,
/// and `run` frees it on every node, by the time the tool exits (cutting
/// those requests off would leave a bare quorum, or a lock held until its
/// TTL).
#[test]
fn a_slow_node_gets_the_grant_and_the_release_before_the_tool_exits() {
    let set = nodes(3);
    let slow = testkit::Proxy::start(("127.0.0.1", set.nodes[2].port()));
    slow.set_mode(testkit::ProxyMode::Delay(Duration::from_millis(300)));
    let urls = format!(
        "{},{},{}",
        set.nodes[0].url(),
        set.nodes[1].url(),
        slow.url()
    );
    let flags = ["--ttl", "30s", "--timeout", "2s", "--connect-timeout", "2s"];

    let mut cmd = tool(&urls);
    cmd.args(["acquire", "--key", "slow:acquired"]).args(flags);
    let (code, _, err) = run_tool(cmd);
    assert_eq!(code, 0, "{err}");
    assert_eq!(held_on(&set, "slow:acquired"), 3, "held on every node");

    let (code, _, err) = run_tool(run_sh(&urls, "slow:run", &flags, "true"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(held_on(&set, "slow:run"), 0, "freed on every node");
    assert!(!err.contains("did not answer"), "{err}");
}

// ------------------------------------------------------ the eval idiom

/// The lines that take the lock with `eval` in the README and in
/// `redis-lock --help` and `redis-lock acquire --help`, verbatim.
fn documented_eval_lines() -> Vec<String> {
    let readme = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut lines: Vec<String> = readme
        .lines()
        .filter(|l| l.starts_with("eval \"$(redis-lock acquire"))
        .map(str::to_owned)
        .collect();
    for args in [&["--help"][..], &["acquire", "--help"]] {
        let mut help = tool("");
        help.args(args);
        let (code, out, _) = run_tool(help);
        assert_eq!(code, 0);
        lines.extend(
            out.lines()
                .map(|l| l.trim().trim_start_matches("$ "))
                .filter(|l| l.starts_with("eval \"$(redis-lock acquire"))
                .map(str::to_owned),
        );
    }
    assert!(
        lines.len() >= 3,
        "the idiom is missing from the docs: {lines:?}"
    );
    lines
}

/// `sh -c` running `line` then `echo RAN`, with `redis-lock` on the PATH.
fn shell_line(urls: &str, prelude: &str, line: &str) -> Command {
    let bin = std::path::PathBuf::from(bin());
    let dir = bin.parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut sh = Command::new("sh");
    sh.args([
        "-c",
        &format!("{prelude}{line}\necho \"RAN $REDIS_LOCK_FENCE\""),
    ]);
    for var in TOOL_ENV {
        sh.env_remove(var);
    }
    sh.env("PATH", path).env("REDIS_LOCK_NODES", urls);
    sh
}

#[test]
fn the_documented_eval_idiom_stops_the_script_without_the_lock() {
    let set = nodes(3);
    let urls = urls(&set);
    let dead = format!("redis://127.0.0.1:{}", testkit::free_port());
    for line in documented_eval_lines() {
        for prelude in ["set -e\n", ""] {
            // With neither `set -e` nor `|| exit` nothing can stop a script.
            if prelude.is_empty() && !line.contains("|| exit") {
                continue;
            }
            // Free: it runs, with the lease in its environment.
            let (code, out, err) = run_tool(shell_line(&urls, prelude, &line));
            assert_eq!(code, 0, "{line}: {err}");
            assert!(out.starts_with("RAN 1"), "{line}: {out}");
            // Held by that run's lease (never released): 75, not run.
            let (code, out, err) = run_tool(shell_line(&urls, prelude, &line));
            assert_eq!(code, 75, "{prelude}{line}: {out} {err}");
            assert!(
                !out.contains("RAN"),
                "ran without the lock: {prelude}{line}"
            );
            // Nodes down: 69; a bad setting: 64.
            let (code, out, _) = run_tool(shell_line(&dead, prelude, &line));
            assert_eq!(code, 69, "{prelude}{line}: {out}");
            assert!(!out.contains("RAN"), "ran without the lock: {line}");
            let mut bad = shell_line(&urls, prelude, &line);
            bad.env("REDIS_LOCK_WAIT", "forever");
            let (code, out, _) = run_tool(bad);
            assert_eq!(code, 64, "{prelude}{line}: {out}");
            assert!(!out.contains("RAN"), "ran without the lock: {line}");
            for s in &set.nodes {
                let _: i64 = testkit::redis::cmd("DEL")
                    .arg("reports")
                    .query(&mut s.conn())
                    .unwrap();
            }
        }
    }
}

// ------------------------------------------- what a user met (issue 12)

#[test]
fn a_ttl_above_the_nodes_limit_is_a_usage_error_naming_the_limit() {
    let set = NodeSet::start_with(3, |_| {
        Server::builder(testkit::first_flavor()).module_arg("max-ttl-ms", "60000")
    });
    let mut cmd = tool(&urls(&set));
    cmd.args(["acquire", "--key", "k", "--ttl", "2m"]);
    let (code, _, err) = run_tool(cmd);
    assert_eq!(code, 64, "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("lock.max-ttl-ms = 60000 (1m00s)"), "{err}");
    assert!(
        !err.contains("unavailable") && !err.contains("ResponseError"),
        "{err}"
    );
    assert_eq!(held_on(&set, "k"), 0);
}

#[test]
fn a_permission_error_is_not_an_authentication_failure_and_status_works_for_the_app_user() {
    let set = nodes(3);
    // The least-privilege user docs/COMMANDS.md recommends.
    testkit::lockcmd::add_app_user(&set.nodes);
    let app_urls: Vec<String> = set
        .nodes
        .iter()
        .map(|s| format!("redis://app:secret@127.0.0.1:{}", s.port()))
        .collect();
    let app_urls = app_urls.join(",");

    let mut denied = tool(&app_urls);
    denied.args(["acquire", "--key", "other:x"]);
    let (code, out, err) = run_tool(denied);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert!(
        err.contains("\"app\"") && err.contains("\"other:x\""),
        "{err}"
    );
    assert!(!err.contains("authentication"), "{err}");
    assert_eq!(out, "(exit 78)\n");

    let mut wrong = tool(
        &set.nodes
            .iter()
            .map(|s| format!("redis://app:wrong@127.0.0.1:{}", s.port()))
            .collect::<Vec<_>>()
            .join(","),
    );
    wrong.args(["acquire", "--key", "locks:x"]);
    let (code, _, err) = run_tool(wrong);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("authentication failed"), "{err}");

    acquire(&app_urls, "locks:x", "30s");
    let mut status = tool(&app_urls);
    status.args(["status", "--key", "locks:x"]);
    let (code, out, err) = run_tool(status);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3 of 3 nodes healthy, quorum 2: ok"), "{out}");
    assert!(out.contains("not readable with this user"), "{out}");
    assert!(out.contains("lock: held by owner"), "{out}");
}

#[test]
fn a_node_refusing_grants_is_reported_with_its_time_left_and_a_long_wait_ends_at_once() {
    let set = NodeSet::start_with(1, |_| {
        Server::builder(testkit::first_flavor()).module_arg("rejoin-delay-ms", "3600000")
    });
    let mut cmd = tool(&urls(&set));
    cmd.args(["acquire", "--key", "k", "--wait", "10m"]);
    let started = Instant::now();
    let (code, _, err) = run_tool(cmd);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for nothing"
    );
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("refusing new grants"), "{err}");
    assert!(
        err.contains("possible again in 59m") || err.contains("possible again in 1h00m"),
        "{err}"
    );
    assert!(!err.contains("0 of 1 answered"), "{err}");

    let mut status = tool(&urls(&set));
    status.arg("status");
    let (_, out, _) = run_tool(status);
    assert!(out.contains("refusing grants for"), "{out}");
}

#[test]
fn no_output_contains_a_token() {
    let set = NodeSet::start_with(3, |_| Server::builder(testkit::first_flavor()).no_module());
    let secret = "s3cret-token-4f1e9a";
    for args in [
        &["extend", "--key", "k", "--token", secret][..],
        &["release", "--key", "k", "--token", secret],
    ] {
        let mut cmd = tool(&urls(&set));
        cmd.args(args);
        let (code, out, err) = run_tool(cmd);
        assert_eq!(code, 78, "{err}");
        assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
        assert!(!err.contains("with args beginning"), "{err}");
    }
    let mut cmd = tool(&urls(&set));
    cmd.args(["acquire", "--key", "k"]);
    let (_, _, err) = run_tool(cmd);
    assert!(!err.contains("with args beginning"), "{err}");
}

#[test]
fn tls_nodes_work_with_a_ca_file_and_a_client_certificate() {
    let certs = testkit::tls::Certs::generate();
    let mut ports = Vec::new();
    let servers: Vec<Server> = (0..3)
        .map(|_| {
            let (builder, port) = certs.server(testkit::Flavor::Redis7);
            ports.push(port);
            builder.start()
        })
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("rediss://localhost:{p}"))
        .collect();
    let urls = urls.join(",");
    let with_certs = |cmd: &mut Command| {
        cmd.env("REDIS_LOCK_TLS_CA", certs.path("ca.crt"))
            .args(["--tls-cert".as_ref(), certs.path("client.crt").as_os_str()])
            .args(["--tls-key".as_ref(), certs.path("client.key").as_os_str()]);
    };
    let mut acquire = tool(&urls);
    with_certs(&mut acquire);
    acquire.args(["acquire", "--key", "tls:k", "--ttl", "30s"]);
    let (code, out, err) = run_tool(acquire);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("REDIS_LOCK_FENCE="), "{out}");
    assert_eq!(testkit::lockcmd::held_on(&servers, "tls:k"), 3);

    let mut status = tool(&urls);
    with_certs(&mut status);
    status.arg("status");
    let (code, out, err) = run_tool(status);
    assert_eq!(code, 0, "{out}{err}");

    // Without the CA the server's certificate is not trusted: no panic.
    let mut untrusted = tool(&urls);
    untrusted.args(["acquire", "--key", "tls:other"]);
    let (code, _, err) = run_tool(untrusted);
    assert_eq!(code, 69, "{err}");
}

/// A port that answers like a web server: several lines, then closes.
fn not_redis() -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    thread::spawn(move || {
        let deadline = Instant::now() + LIMIT;
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.write_all(
                        b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\n\r\n<html>\r\n<h1>400</h1>\r\n</html>\r\n",
                    );
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    (port, stop)
}

#[test]
fn a_port_that_is_not_redis_takes_one_line_of_the_status_table() {
    let set = nodes(2);
    let (port, stop) = not_redis();
    let urls = format!("{},redis://127.0.0.1:{port}", urls(&set));
    let mut status = tool(&urls);
    status.arg("status");
    let (code, out, _) = run_tool(status);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(code, 1, "{out}");
    // Header, three nodes, the verdict.
    assert_eq!(out.lines().count(), 5, "{out}");
    assert!(out.contains(&format!("127.0.0.1:{port}  no ")), "{out}");
}

#[test]
fn an_address_without_a_scheme_says_what_a_node_address_looks_like() {
    let mut cmd = tool("localhost:6379");
    cmd.args(["acquire", "--key", "k"]);
    let (code, _, err) = run_tool(cmd);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("redis://[user:password@]host:port"), "{err}");
    assert!(!err.contains("InvalidClientConfig"), "{err}");
}

#[test]
fn two_addresses_of_one_server_are_refused() {
    let set = nodes(2);
    let port = set.nodes[0].port();
    let urls = format!(
        "redis://localhost:{port},redis://127.0.0.1:{port},{}",
        set.nodes[1].url()
    );
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    for args in [
        vec!["acquire".to_owned(), "--key".into(), "k".into()],
        vec![
            "run".into(),
            "--key".into(),
            "k".into(),
            "--".into(),
            "touch".into(),
            marker.display().to_string(),
        ],
    ] {
        let mut cmd = tool(&urls);
        cmd.args(&args);
        let (code, _, err) = run_tool(cmd);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains("are the same server"), "{err}");
    }
    assert!(!marker.exists(), "ran on one server counted twice");
    assert_eq!(held_on(&set, "k"), 0);
}
