//! `run`: hold the lock while a command runs.
//!
//! Acquire (waiting up to `--wait`), then start the command under a
//! watchdog (`watchdog.rs`: redis-lock re-executed, in a process group of
//! its own), keep the lease alive with the client's guard and hand every
//! new validity deadline to the watchdog. The watchdog stops the command by
//! the end of the lease if redis-lock cannot (killed, stopped, starved);
//! redis-lock watches three things at once: the command's end as the
//! watchdog reports it (release, exit with its status), the lock being lost
//! (the watchdog stops the command; exit 76), and signals to redis-lock
//! (forwarded to the command's group).

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use redis_lock_client::{Client, LockGuard, LossReason};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::timeout;

use crate::args::{Global, RunArgs};
use crate::duration;
use crate::exit::{self, Failure};
use crate::setup::{self, fail};
use crate::watchdog::{self, FromWatchdog, ToWatchdog, Why};

/// SIGINT, SIGTERM and SIGHUP, caught so that they can be forwarded; SIGTSTP
/// and SIGCONT for job control (Ctrl-Z, `fg`), forwarded as shells do.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
    tstp: Signal,
    cont: Signal,
}

impl Signals {
    fn new() -> io::Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            tstp: signal(SignalKind::from_raw(libc::SIGTSTP))?,
            cont: signal(SignalKind::from_raw(libc::SIGCONT))?,
        })
    }

    async fn recv(&mut self) -> i32 {
        tokio::select! {
            Some(()) = self.int.recv() => libc::SIGINT,
            Some(()) = self.term.recv() => libc::SIGTERM,
            Some(()) = self.hup.recv() => libc::SIGHUP,
            Some(()) = self.tstp.recv() => libc::SIGTSTP,
            Some(()) = self.cont.recv() => libc::SIGCONT,
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
        libc::SIGTSTP => "SIGTSTP".into(),
        libc::SIGCONT => "SIGCONT".into(),
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

/// The kill grace the watchdog uses: `--kill-grace`, but at most a third
/// of the TTL. SIGTERM goes out when this much (plus the margin) is left of
/// the lease without a renewal; a longer grace would send it while
/// renewals are still on time.
pub fn effective_grace(kill_grace: Duration, ttl: Duration) -> Duration {
    kill_grace.min(ttl / 3)
}

/// How long before the end of the lease the watchdog sends SIGKILL, so the
/// command is dead, not dying, when the lease ends: a twentieth of the TTL,
/// at most 100 ms.
pub fn kill_margin(ttl: Duration) -> Duration {
    (ttl / 20).min(Duration::from_millis(100))
}

/// `until` on the watchdog's clock (`CLOCK_MONOTONIC` ns). The raw clock is
/// read before `Instant::now()`, so the result errs early, never late.
fn mono_deadline(until: Instant) -> u64 {
    let raw = watchdog::mono_ns();
    let left = until.saturating_duration_since(Instant::now());
    raw.saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The watchdog and the two ends of its socket.
struct Watchdog {
    child: Child,
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    tx: OwnedWriteHalf,
}

impl Watchdog {
    async fn send(&mut self, msg: ToWatchdog) {
        // It may be gone; its exit is noticed on the read side.
        let _ = self.tx.write_all(msg.line().as_bytes()).await;
    }

    /// The next report; `None` once the watchdog is gone.
    async fn recv(&mut self) -> Option<FromWatchdog> {
        loop {
            match self.lines.next_line().await {
                Ok(Some(line)) => {
                    if let Some(msg) = FromWatchdog::parse(&line) {
                        return Some(msg);
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// Starts the watchdog, which starts the command.
fn start_watchdog(a: &RunArgs, fence: u64, deadline: u64) -> io::Result<Watchdog> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let fd = theirs.as_raw_fd();
    let grace = effective_grace(a.kill_grace, a.lock.ttl);
    let margin = kill_margin(a.lock.ttl);
    // /proc/self/exe: this very binary, even if the file was replaced since.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("redis-lock")
        .args(watchdog::args(fd, deadline, nanos(grace), nanos(margin)))
        .args(&a.command)
        .env("REDIS_LOCK_FENCE", fence.to_string())
        .env("REDIS_LOCK_KEY", &a.lock.key)
        // The token is the capability to extend and release: it stays here.
        .env_remove("REDIS_LOCK_TOKEN")
        // Out of redis-lock's group: a `kill -STOP -<group>` (Ctrl-Z) of
        // redis-lock must not stop its guard too.
        .process_group(0)
        .kill_on_drop(false);
    let hook = move || -> io::Result<()> {
        // The socket is inherited across exec (only in this child).
        // SAFETY: fcntl is async-signal-safe and touches no memory.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and only calls fcntl.
    unsafe {
        cmd.pre_exec(hook);
    }
    let child = cmd.spawn()?;
    drop(theirs);
    ours.set_nonblocking(true)?;
    let (rx, tx) = tokio::net::UnixStream::from_std(ours)?.into_split();
    Ok(Watchdog {
        child,
        lines: BufReader::new(rx).lines(),
        tx,
    })
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
                let still = if r.pending > 0 {
                    format!(", {} more finishing", r.pending)
                } else {
                    String::new()
                };
                say!(
                    "redis-lock: released {key:?}: freed on {} of {} nodes{still}",
                    r.held,
                    client.config().nodes()
                );
            }
        }
        Err(e) => say!(
            "redis-lock: releasing {key:?} failed, it runs out within {}: {e}",
            duration::format(ttl)
        ),
    }
    // The release returns once a quorum answered; let the requests to the
    // other nodes finish before the runtime stops, or those nodes keep the
    // lock until its TTL.
    setup::settle(g, client).await;
}

/// How the command ended, as the watchdog saw it.
struct Ended {
    status: u8,
    why: Why,
    killed: bool,
}

pub async fn run(g: &Global, a: RunArgs) -> u8 {
    let client = match setup::config(g, a.max_hold).and_then(setup::client) {
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
        r = client.lock(key, ttl, a.waiting.budget()) => match r {
            Ok(guard) => guard,
            Err(e) => return setup::not_acquired(&e, a.waiting.conflict_exit_code),
        },
        sig = signals.recv() => {
            say!("redis-lock: {} while waiting for {key:?}; not running the command", signal_name(sig));
            // The cancelled round releases what it was granted in a
            // background task: let it finish before the runtime stops.
            setup::settle(g, &client).await;
            return 128u8.saturating_add(u8::try_from(sig).unwrap_or(0));
        }
    };
    if let Err(e) = client.check_distinct().await {
        let _ = guard.release().await;
        setup::settle(g, &client).await;
        return fail(Failure::Usage, e);
    }
    let fence = guard.fence();
    if a.verbose {
        say!("redis-lock: acquired {key:?}, fence {fence}");
        let grace = effective_grace(a.kill_grace, ttl);
        if grace < a.kill_grace {
            say!(
                "redis-lock: --kill-grace {} is more than a third of --ttl; the command gets {} \
                 between SIGTERM and SIGKILL",
                duration::format(a.kill_grace),
                duration::format(grace)
            );
        }
    }

    // Two views: one watches for the loss, one for renewals.
    let watch_loss = guard.held().clone();
    let mut held = guard.held().clone();
    let mut dog = match start_watchdog(&a, fence, mono_deadline(held.valid_until())) {
        Ok(d) => d,
        Err(e) => {
            release(g, &client, guard, key, ttl, a.verbose).await;
            return fail(
                Failure::Internal,
                format!("cannot start the command's watchdog: {e}"),
            );
        }
    };
    let pgid = match dog.recv().await {
        Some(FromWatchdog::Started(pid)) => pid,
        Some(FromWatchdog::SpawnFailed(errno)) => {
            let e = io::Error::from_raw_os_error(errno);
            let shown = a
                .command
                .first()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            say!("redis-lock: cannot run {shown:?}: {e}");
            let _ = timeout(Duration::from_secs(5), dog.child.wait()).await;
            release(g, &client, guard, key, ttl, a.verbose).await;
            return match e.kind() {
                io::ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::CANNOT_EXECUTE,
            };
        }
        _ => {
            let _ = timeout(Duration::from_secs(5), dog.child.wait()).await;
            release(g, &client, guard, key, ttl, a.verbose).await;
            return fail(Failure::Internal, "the command's watchdog failed to start");
        }
    };

    let mut lost: Option<LossReason> = None;
    let mut renewing = true;
    let ended = loop {
        tokio::select! {
            biased;
            reason = watch_loss.lost(), if lost.is_none() => {
                lost = Some(reason);
                say!(
                    "redis-lock: LOST the lock {key:?}: {reason}; stopping the command \
                     (SIGTERM to process group {pgid}, SIGKILL after {} or before the lease ends)",
                    duration::format(effective_grace(a.kill_grace, ttl))
                );
                dog.send(ToWatchdog::Stop).await;
            }
            more = held.changed(), if renewing && lost.is_none() => {
                renewing = more;
                if more {
                    dog.send(ToWatchdog::Deadline(mono_deadline(held.valid_until()))).await;
                }
            }
            msg = dog.recv() => match msg {
                Some(FromWatchdog::Exited { raw, why, killed }) => {
                    break Some(Ended {
                        status: exit::for_child(watchdog::status(raw)),
                        why,
                        killed,
                    });
                }
                Some(_) => {}
                None => break None,
            },
            sig = signals.recv() => {
                if a.verbose {
                    say!("redis-lock: forwarding {} to the command", signal_name(sig));
                }
                signal_group(pgid, sig);
                if sig == libc::SIGTSTP {
                    // Stop as a shell's job would; the watchdog goes on
                    // counting down the lease meanwhile.
                    // SAFETY: raise takes a plain integer.
                    unsafe { libc::raise(libc::SIGSTOP) };
                }
            }
        }
    };
    let _ = timeout(Duration::from_secs(5), dog.child.wait()).await;

    let Some(ended) = ended else {
        // The watchdog died (killed): its command died with it (parent-death
        // signal); make sure of the rest of the group.
        signal_group(pgid, libc::SIGKILL);
        say!("redis-lock: the command's watchdog died; killed the command's process group {pgid}");
        release(g, &client, guard, key, ttl, false).await;
        return if lost.is_some() {
            exit::LOST
        } else {
            exit::INTERNAL
        };
    };
    let code = ended.status;
    if ended.why == Why::Leftovers {
        say!(
            "redis-lock: the command exited with status {code} but left processes running; \
             they were stopped ({}) before the lock was released",
            if ended.killed {
                "SIGKILL was needed"
            } else {
                "SIGTERM"
            }
        );
    }
    if ended.why == Why::Deadline && lost.is_none() {
        // The watchdog stopped the command because the lease was about to
        // end without a renewal: the loss, a grace period early. Its reason
        // is known once the validity is over (or a late renewal came).
        let limit = effective_grace(a.kill_grace, ttl) + kill_margin(ttl) + Duration::from_secs(1);
        let reason = timeout(limit, watch_loss.lost()).await.ok();
        let why = reason.map_or_else(
            || "no renewal reached a quorum in time".to_owned(),
            |r| r.to_string(),
        );
        say!(
            "redis-lock: LOST the lock {key:?}: {why}; the command was stopped before the lease ran out"
        );
        lost = Some(reason.unwrap_or(LossReason::Expired));
    }
    // Lost while the command ran, or at the very moment it exited: part of
    // its work may have run unprotected, so say so rather than pass its
    // status on.
    let lost = lost.or_else(|| guard.held().loss());
    if let Some(reason) = lost {
        say!(
            "redis-lock: the command stopped (status {code}); exiting with status {} ({reason})",
            exit::LOST
        );
        release(g, &client, guard, key, ttl, false).await;
        return exit::LOST;
    }
    if a.verbose {
        say!("redis-lock: the command exited with status {code}");
    }
    release(g, &client, guard, key, ttl, a.verbose).await;
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_fits_in_the_lease() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let cases = [
            // (--kill-grace, --ttl, grace used, margin)
            (s(5), s(30), s(5), ms(100)),
            (s(5), s(1), ms(333), ms(50)),
            (ms(300), s(1), ms(300), ms(50)),
            (s(0), s(2), s(0), ms(100)),
        ];
        for (kill_grace, ttl, grace, margin) in cases {
            let used = effective_grace(kill_grace, ttl);
            assert_eq!(
                used.as_millis(),
                grace.as_millis(),
                "{kill_grace:?} {ttl:?}"
            );
            assert_eq!(kill_margin(ttl), margin);
            // SIGTERM comes after the renewal that is due at a third of
            // the TTL, so on-time renewals never trigger it.
            assert!(
                ttl - used - kill_margin(ttl) > ttl / 3,
                "{kill_grace:?} {ttl:?}"
            );
        }
    }
}
