//! Helpers shared by the `redis-lock` binary's tests: the tool with a clean
//! environment, a running invocation with its output in files, and the
//! small process and lock checks the tests make.
//!
//! `REDIS_LOCK_TEST_BIN` runs another `redis-lock` binary instead of the one
//! just built (to measure an older build against the same tests).

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use testkit::{eventually, NodeSet};

/// Bound on any one invocation of the tool in these tests.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Settings the tool reads from the environment; cleared so that the
/// developer's shell does not change the tests.
pub const TOOL_ENV: [&str; 15] = [
    "REDIS_LOCK_NODES",
    "REDIS_LOCK_USERNAME",
    "REDIS_LOCK_PASSWORD",
    "REDIS_LOCK_TIMEOUT",
    "REDIS_LOCK_CONNECT_TIMEOUT",
    "REDIS_LOCK_RETRY",
    "REDIS_LOCK_TTL",
    "REDIS_LOCK_WAIT",
    "REDIS_LOCK_MAX_HOLD",
    "REDIS_LOCK_KILL_GRACE",
    "REDIS_LOCK_TOKEN",
    "REDIS_LOCK_KEY",
    "REDIS_LOCK_TLS_CA",
    "REDIS_LOCK_TLS_CERT",
    "REDIS_LOCK_TLS_KEY",
];

pub fn nodes(n: usize) -> NodeSet {
    NodeSet::start(n, testkit::first_flavor())
}

/// The binary under test.
pub fn bin() -> std::ffi::OsString {
    std::env::var_os("REDIS_LOCK_TEST_BIN")
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_redis-lock").into())
}

/// The tool with a clean environment, pointed at `urls`.
pub fn tool(urls: &str) -> Command {
    let mut cmd = Command::new(bin());
    for var in TOOL_ENV {
        cmd.env_remove(var);
    }
    if !urls.is_empty() {
        cmd.env("REDIS_LOCK_NODES", urls);
    }
    cmd.stdin(Stdio::null());
    cmd
}

pub fn urls(set: &NodeSet) -> String {
    set.urls().join(",")
}

/// A running invocation of the tool, its output going to files (no pipe to
/// fill up). Killed if the test ends before it does.
pub struct Run {
    pub child: Child,
    out: PathBuf,
    err: PathBuf,
    _dir: TempDir,
}

impl Run {
    pub fn start(mut cmd: Command) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdout");
        let err = dir.path().join("stderr");
        cmd.stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap());
        let child = cmd.spawn().expect("start redis-lock");
        Run {
            child,
            out,
            err,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// The exit code, within `LIMIT`; fails if the tool died of a signal.
    pub fn code(&mut self) -> i32 {
        let status = eventually(LIMIT, "redis-lock to exit", || {
            self.child.try_wait().unwrap()
        });
        status
            .code()
            .unwrap_or_else(|| panic!("redis-lock died of {status:?}; stderr:\n{}", self.stderr()))
    }

    /// Runs to the end: (exit code, stdout, stderr).
    pub fn finish(mut self) -> (i32, String, String) {
        let code = self.code();
        (code, self.stdout(), self.stderr())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // SIGKILL: the watchdog then stops the command and its children.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run_tool(cmd: Command) -> (i32, String, String) {
    Run::start(cmd).finish()
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill takes plain integers; the pid is our own child.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Whether process `pid` is still running (a zombie counts as gone).
pub fn running(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The parent of process `pid`.
pub fn parent_of(pid: i32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    rest.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn held_on(set: &NodeSet, key: &str) -> usize {
    testkit::lockcmd::held_on(&set.nodes, key)
}

/// Freed by a release: free on a quorum at once (the release waits for
/// that much), and on every node moments later, well before the TTL.
pub fn assert_released(set: &NodeSet, key: &str) {
    let n = set.nodes.len();
    let held = held_on(set, key);
    assert!(
        held <= n - (n / 2 + 1),
        "{key} still held on {held} of {n} nodes"
    );
    eventually(
        Duration::from_secs(2),
        "the lock to be free everywhere",
        || (held_on(set, key) == 0).then_some(()),
    );
}

/// Deletes `key` on the first `count` nodes of `set`, once every node holds
/// it: a grant still in flight to a slower node must not land after the
/// delete and hand the lease its quorum back.
pub fn del_on_first(set: &NodeSet, count: usize, key: &str) {
    testkit::lockcmd::wait_held_everywhere(&set.nodes, key);
    for s in &set.nodes[..count] {
        let _: i64 = testkit::redis::cmd("DEL")
            .arg(key)
            .query(&mut s.conn())
            .unwrap();
    }
}

/// Waits (bounded) until `path` exists and returns its contents.
pub fn wait_file(path: &Path, what: &str) -> String {
    eventually(LIMIT, what, || {
        fs::read_to_string(path).ok().filter(|s| s.ends_with('\n'))
    })
}

/// `run` of a `sh -c` script with the given extra flags.
pub fn run_sh(urls: &str, key: &str, flags: &[&str], script: &str) -> Command {
    let mut cmd = tool(urls);
    cmd.args(["run", "--key", key])
        .args(flags)
        .args(["--", "sh", "-c", script]);
    cmd
}

pub fn acquire(urls: &str, key: &str, ttl: &str) -> (String, u64) {
    let mut cmd = tool(urls);
    cmd.args(["acquire", "--key", key, "--ttl", ttl]);
    let (code, out, err) = run_tool(cmd);
    assert_eq!(code, 0, "acquire failed: {err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing from {out}"))
            .to_owned()
    };
    (
        field("REDIS_LOCK_TOKEN"),
        field("REDIS_LOCK_FENCE").parse().unwrap(),
    )
}

/// A script that says when it is up, records SIGTERM and exits 0 on it.
pub fn term_recording_script(ready: &Path, got: &Path) -> String {
    format!(
        "trap 'echo TERM > {got}; exit 0' TERM; echo $$ > {ready}; \
         i=0; while [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done",
        got = got.display(),
        ready = ready.display()
    )
}
