//! `run`: hold the lock while a command runs.
//!
//! Acquire (waiting up to `--wait`), start the command in its own process
//! group, keep the lease alive with the client's guard, and watch three
//! things at once: the command exiting (release, exit with its status), the
//! lock being lost (SIGTERM to the group, SIGKILL after the grace period,
//! exit 76), and signals to redis-lock (forwarded to the group).

use std::ffi::OsString;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use redis_lock_client::{Client, LockGuard, LossReason};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::{sleep, timeout, timeout_at, Instant};

use crate::args::{Global, RunArgs};
use crate::commands::{self, fail};
use crate::duration;
use crate::exit::{self, Failure};

/// SIGINT, SIGTERM and SIGHUP, caught so that they can be forwarded.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> i32 {
        tokio::select! {
            Some(()) = self.int.recv() => libc::SIGINT,
            Some(()) = self.term.recv() => libc::SIGTERM,
            Some(()) = self.hup.recv() => libc::SIGHUP,
            else => std::future::pending().await,
        }
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGHUP => "SIGHUP".into(),
        libc::SIGKILL => "SIGKILL".into(),
        other => format!("signal {other}"),
    }
}

/// Sends `sig` to the process group `pgid`; false if the group is gone.
fn signal_group(pgid: libc::pid_t, sig: i32) -> bool {
    // Group 0 would be our own group, 1 would be init's: never those.
    if pgid <= 1 {
        return false;
    }
    // SAFETY: killpg takes plain integers and touches no memory of ours; a
    // group that no longer exists only gives ESRCH.
    unsafe { libc::killpg(pgid, sig) == 0 }
}

/// Whether any process of the group is left (EPERM: it exists, not ours).
fn group_alive(pgid: libc::pid_t) -> bool {
    signal_group(pgid, 0) || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Makes the kernel SIGKILL the command if redis-lock dies first (kill -9,
/// OOM): nothing would renew the lock any more, so the command must not go
/// on believing it holds it.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    let hook = move || -> io::Result<()> {
        // SAFETY: prctl(PR_SET_PDEATHSIG, signal) only sets a flag on the
        // calling process; it is async-signal-safe.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // If the parent died before the prctl, the signal will never come.
        // SAFETY: getppid has no preconditions.
        if unsafe { libc::getppid() } != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the hook runs in the child between fork and exec; it makes
    // only async-signal-safe calls and allocates nothing. The death signal
    // is tied to the forking thread: the runtime is single-threaded, so that
    // is the main thread, which lives as long as redis-lock.
    unsafe {
        cmd.pre_exec(hook);
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

fn spawn(argv: &[OsString], key: &str, fence: u64) -> Result<(Child, libc::pid_t), u8> {
    let Some((program, rest)) = argv.split_first() else {
        return Err(fail(Failure::Usage, "no command to run"));
    };
    let mut cmd = Command::new(program);
    cmd.args(rest)
        .env("REDIS_LOCK_FENCE", fence.to_string())
        .env("REDIS_LOCK_KEY", key)
        // The token is the capability to extend and release: it stays here.
        .env_remove("REDIS_LOCK_TOKEN")
        .process_group(0);
    die_with_parent(&mut cmd);
    let shown = program.to_string_lossy();
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("redis-lock: cannot run {shown:?}: {e}");
            return Err(match e.kind() {
                io::ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::CANNOT_EXECUTE,
            });
        }
    };
    // With process_group(0) the child leads a group of its own pid.
    match child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) {
        Some(pgid) => Ok((child, pgid)),
        None => Err(fail(Failure::Internal, "the command's pid is unknown")),
    }
}

/// SIGTERM to the group; SIGKILL to whatever is left of it after `grace`.
/// The command's exit status, if it could be collected.
async fn stop_group(child: &mut Child, pgid: libc::pid_t, grace: Duration) -> Option<ExitStatus> {
    signal_group(pgid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    let mut status = timeout_at(deadline, child.wait())
        .await
        .ok()
        .and_then(Result::ok);
    // The command is gone; give the rest of its group the rest of the grace.
    while status.is_some() && group_alive(pgid) && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    if status.is_none() || group_alive(pgid) {
        eprintln!(
            "redis-lock: the command did not stop within {}; sending SIGKILL to its process group",
            duration::format(grace)
        );
        signal_group(pgid, libc::SIGKILL);
    }
    if status.is_none() {
        status = timeout(Duration::from_secs(5), child.wait())
            .await
            .ok()
            .and_then(Result::ok);
    }
    status
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => format!("status {}", exit::for_child(s)),
        None => "status unknown".into(),
    }
}

/// Releases, reports a failure on stderr (the outcome does not change the
/// exit status: an unreleased lock runs out at its TTL), and lets the
/// release reach every node.
async fn release(
    g: &Global,
    client: &Client,
    guard: LockGuard,
    key: &str,
    ttl: Duration,
    verbose: bool,
) {
    match guard.release().await {
        Ok(r) => {
            if verbose {
                eprintln!("redis-lock: released {key:?} (freed on {} nodes)", r.held);
            }
        }
        Err(e) => eprintln!(
            "redis-lock: releasing {key:?} failed, it runs out within {}: {e}",
            duration::format(ttl)
        ),
    }
    // The release returns once a quorum answered; let the requests to the
    // other nodes finish before the runtime stops, or those nodes keep the
    // lock until its TTL.
    commands::settle(g, client).await;
}

enum Ended {
    Exited(io::Result<ExitStatus>),
    Lost(LossReason),
}

pub async fn run(g: &Global, a: RunArgs) -> u8 {
    let client = match commands::config(g, a.max_hold).and_then(commands::client) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => return fail(Failure::Internal, format!("cannot catch signals: {e}")),
    };
    let key = a.lock.key.as_str();
    let ttl = a.lock.ttl;

    let guard = tokio::select! {
        r = client.lock(key, ttl, a.wait) => match r {
            Ok(guard) => guard,
            Err(e) => return commands::not_acquired(key, &e),
        },
        sig = signals.recv() => {
            eprintln!("redis-lock: {} while waiting for {key:?}; not running the command", signal_name(sig));
            // The cancelled round releases what it was granted in a
            // background task: let it finish before the runtime stops.
            commands::settle(g, &client).await;
            return 128u8.saturating_add(u8::try_from(sig).unwrap_or(0));
        }
    };
    let fence = guard.fence();
    if a.verbose {
        eprintln!("redis-lock: acquired {key:?}, fence {fence}");
    }

    let (mut child, pgid) = match spawn(&a.command, key, fence) {
        Ok(c) => c,
        Err(code) => {
            release(g, &client, guard, key, ttl, a.verbose).await;
            return code;
        }
    };

    let ended = loop {
        tokio::select! {
            biased;
            reason = guard.lost() => break Ended::Lost(reason),
            status = child.wait() => break Ended::Exited(status),
            sig = signals.recv() => {
                if a.verbose {
                    eprintln!("redis-lock: forwarding {} to the command", signal_name(sig));
                }
                signal_group(pgid, sig);
            }
        }
    };

    match ended {
        Ended::Lost(reason) => {
            eprintln!(
                "redis-lock: LOST the lock {key:?}: {reason}; stopping the command \
                 (SIGTERM to process group {pgid}, SIGKILL after {})",
                duration::format(a.kill_grace)
            );
            let status = stop_group(&mut child, pgid, a.kill_grace).await;
            eprintln!(
                "redis-lock: the command stopped ({}); exiting with status {}",
                describe(status),
                exit::LOST
            );
            // Frees the nodes that may still hold our token.
            release(g, &client, guard, key, ttl, false).await;
            exit::LOST
        }
        Ended::Exited(Err(e)) => {
            let status = stop_group(&mut child, pgid, a.kill_grace).await;
            release(g, &client, guard, key, ttl, a.verbose).await;
            fail(
                Failure::Internal,
                format!(
                    "lost track of the command ({e}); stopped it ({})",
                    describe(status)
                ),
            )
        }
        Ended::Exited(Ok(status)) => {
            let code = exit::for_child(status);
            // Lost at the very moment it exited: part of its work may have
            // run unprotected, so say so rather than pass its status on.
            if let Some(reason) = guard.held().loss() {
                eprintln!(
                    "redis-lock: LOST the lock {key:?} as the command exited with status {code}: {reason}"
                );
                release(g, &client, guard, key, ttl, false).await;
                return exit::LOST;
            }
            if a.verbose {
                eprintln!("redis-lock: the command exited with status {code}");
            }
            release(g, &client, guard, key, ttl, a.verbose).await;
            code
        }
    }
}
