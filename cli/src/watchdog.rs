//! `redis-lock __watchdog`: the process that keeps the command from running
//! without the lock when redis-lock itself cannot see to it.
//!
//! `run` starts it (re-executing its own binary, so nothing is forked from
//! the multithreaded-capable supervisor) in a process group of its own, and
//! the watchdog starts the command in a third group, as a child-subreaper so
//! that everything the command leaves behind stays in its subtree. The
//! supervisor feeds it, over a socket, the lease's validity deadline on the
//! machine-wide monotonic clock after each renewal. The watchdog stops the
//! command's group and every process below itself (SIGTERM, then SIGKILL)
//! when:
//!
//! - the deadline comes near without a renewal (redis-lock stopped with
//!   SIGSTOP / Ctrl-Z, starved, or its renewals failing): SIGTERM at
//!   `deadline - grace - margin`, SIGKILL at `deadline - margin`, so the
//!   command is dead before any node can grant the lock to another;
//! - the socket closes (redis-lock died, kill -9): SIGTERM now, SIGKILL after
//!   the grace or at `deadline - margin`, whichever comes first;
//! - the supervisor asks (the loss was noticed): the same;
//! - the command exits leaving processes behind: the same, before the
//!   supervisor releases the lock.
//!
//! It reports the command's pid and, once nothing of it is left, its exit
//! status. The watchdog is not in redis-lock's process group, so a
//! `kill -STOP -pgid` (what the terminal's Ctrl-Z sends) does not stop it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

/// The hidden subcommand that starts the watchdog.
pub const SUBCOMMAND: &str = "__watchdog";

/// Now on `CLOCK_MONOTONIC`, in nanoseconds: one clock for every process of
/// the machine, so the supervisor can hand deadlines over as instants.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// What the supervisor tells the watchdog, one line each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToWatchdog {
    /// The lease is valid until this instant (`mono_ns`).
    Deadline(u64),
    /// The lock is lost: stop the command now.
    Stop,
}

impl ToWatchdog {
    pub fn line(self) -> String {
        match self {
            ToWatchdog::Deadline(ns) => format!("deadline {ns}\n"),
            ToWatchdog::Stop => "stop\n".into(),
        }
    }

    pub fn parse(line: &str) -> Option<ToWatchdog> {
        let mut words = line.split_whitespace();
        let msg = match words.next()? {
            "deadline" => ToWatchdog::Deadline(words.next()?.parse().ok()?),
            "stop" => ToWatchdog::Stop,
            _ => return None,
        };
        words.next().is_none().then_some(msg)
    }
}

/// What the watchdog tells the supervisor, one line each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FromWatchdog {
    /// The command runs with this pid, which is also its process group.
    Started(i32),
    /// The command could not be started (errno).
    SpawnFailed(i32),
    /// The command and everything it started are gone. `raw` is its wait
    /// status; `why` whether and why the watchdog stopped it; `killed`:
    /// SIGKILL was needed.
    Exited { raw: i32, why: Why, killed: bool },
}

/// Why the watchdog stopped the command, if it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// It did not: the command exited and left nothing behind.
    Ran,
    /// The command exited leaving processes behind; they were stopped.
    Leftovers,
    /// The lease was about to end without a renewal.
    Deadline,
    /// The supervisor asked (the lock was lost).
    Asked,
    /// The supervisor's socket closed (redis-lock died).
    Gone,
    /// The watchdog itself got SIGTERM, SIGINT or SIGHUP.
    Signalled,
}

impl Why {
    const ALL: [(Why, &'static str); 6] = [
        (Why::Ran, "ran"),
        (Why::Leftovers, "leftovers"),
        (Why::Deadline, "deadline"),
        (Why::Asked, "asked"),
        (Why::Gone, "gone"),
        (Why::Signalled, "signalled"),
    ];

    fn word(self) -> &'static str {
        Why::ALL
            .iter()
            .find(|(w, _)| *w == self)
            .map_or("ran", |(_, word)| word)
    }

    fn from_word(word: &str) -> Option<Why> {
        Why::ALL
            .iter()
            .find(|(_, w)| *w == word)
            .map(|(why, _)| *why)
    }

    /// What the watchdog says on stderr when it starts stopping.
    fn announce(self) -> &'static str {
        match self {
            Why::Ran | Why::Asked => "",
            Why::Leftovers => "the command exited but left processes running",
            Why::Deadline => {
                "no renewal of the lease came in time (redis-lock stopped, starved, or its \
                 renewals failing)"
            }
            Why::Gone => "redis-lock is gone",
            Why::Signalled => "the watchdog was signalled",
        }
    }
}

impl FromWatchdog {
    pub fn line(self) -> String {
        match self {
            FromWatchdog::Started(pid) => format!("started {pid}\n"),
            FromWatchdog::SpawnFailed(errno) => format!("spawn-failed {errno}\n"),
            FromWatchdog::Exited { raw, why, killed } => {
                format!("exited {raw} {} {}\n", why.word(), u8::from(killed))
            }
        }
    }

    pub fn parse(line: &str) -> Option<FromWatchdog> {
        let mut words = line.split_whitespace();
        let flag = |w: Option<&str>| match w? {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        };
        let msg = match words.next()? {
            "started" => FromWatchdog::Started(words.next()?.parse().ok()?),
            "spawn-failed" => FromWatchdog::SpawnFailed(words.next()?.parse().ok()?),
            "exited" => FromWatchdog::Exited {
                raw: words.next()?.parse().ok()?,
                why: Why::from_word(words.next()?)?,
                killed: flag(words.next())?,
            },
            _ => return None,
        };
        words.next().is_none().then_some(msg)
    }
}

/// The watchdog's clock rules, pure: when to send SIGTERM and SIGKILL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// The lease's validity end (ns, `mono_ns`).
    deadline: u64,
    /// SIGTERM to SIGKILL, at most.
    grace: u64,
    /// SIGKILL this long before the deadline, for the kill to take effect.
    margin: u64,
    /// Once stopping: when SIGKILL is due.
    kill_at: Option<u64>,
}

/// What the schedule asks for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing until this instant.
    Until(u64),
    /// Start stopping: SIGTERM now.
    Term,
    /// SIGKILL now (and again while anything is left).
    Kill,
}

impl Schedule {
    pub fn new(deadline: u64, grace: u64, margin: u64) -> Schedule {
        Schedule {
            deadline,
            grace,
            margin,
            kill_at: None,
        }
    }

    /// A renewal moved the deadline. Ignored once stopping: the command
    /// has had its SIGTERM.
    pub fn renewed(&mut self, deadline: u64) {
        if self.kill_at.is_none() {
            self.deadline = deadline;
        }
    }

    pub fn stopping(&self) -> bool {
        self.kill_at.is_some()
    }

    /// Starts stopping at `now`: SIGKILL after the grace, but never later
    /// than the margin before the deadline. False if already stopping.
    pub fn stop(&mut self, now: u64) -> bool {
        if self.kill_at.is_some() {
            return false;
        }
        let latest = self.deadline.saturating_sub(self.margin);
        self.kill_at = Some(now.saturating_add(self.grace).min(latest));
        true
    }

    pub fn due(&self, now: u64) -> Due {
        match self.kill_at {
            Some(kill_at) if now >= kill_at => Due::Kill,
            Some(kill_at) => Due::Until(kill_at),
            None => {
                let term_at = self
                    .deadline
                    .saturating_sub(self.margin)
                    .saturating_sub(self.grace);
                if now >= term_at {
                    Due::Term
                } else {
                    Due::Until(term_at)
                }
            }
        }
    }
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// SIGTERM, SIGINT, SIGHUP to the watchdog itself: stop the command (as on
/// a loss) rather than die and leave it unguarded. A caught signal is reset
/// to its default at exec, so the command does not inherit this.
fn catch_stop_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe);
        // the sigaction struct is fully initialised.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

/// (pid, parent, state) of every process, from /proc.
fn processes() -> Vec<(i32, i32, char)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) S ppid ...": the comm may hold spaces and parentheses.
        let (_, rest) = stat.rsplit_once(')')?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let ppid: i32 = fields.next()?.parse().ok()?;
        Some((pid, ppid, state))
    })
    .collect()
}

/// The live processes below `root` (zombies excluded: they are dead).
fn descendants(root: i32) -> Vec<i32> {
    let procs = processes();
    let mut children: HashMap<i32, Vec<(i32, char)>> = HashMap::new();
    for (pid, ppid, state) in procs {
        children.entry(ppid).or_default().push((pid, state));
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for &(child, state) in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if child != root {
                if state != 'Z' && state != 'X' {
                    out.push(child);
                }
                todo.push(child);
            }
        }
    }
    out
}

fn signal_group(pgid: i32, sig: i32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: killpg takes plain integers.
    unsafe { libc::killpg(pgid, sig) == 0 }
}

/// The command's process group, and every live process below the watchdog
/// (which, as a subreaper, inherits whatever the command orphaned, even in
/// other groups or sessions).
struct Tree {
    me: i32,
    pgid: i32,
}

impl Tree {
    fn signal(&self, sig: i32) {
        signal_group(self.pgid, sig);
        for pid in descendants(self.me) {
            // SAFETY: kill takes plain integers; the pid was below us a
            // moment ago.
            unsafe { libc::kill(pid, sig) };
        }
    }

    fn alive(&self) -> bool {
        let group = signal_group(self.pgid, 0)
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        group || !descendants(self.me).is_empty()
    }
}

/// Collects every exited child (orphans come to us too); the command's
/// status if it was among them.
fn reap(command: i32, status: &mut Option<i32>) {
    loop {
        let mut raw = 0;
        // SAFETY: waitpid writes only the status integer it is given.
        let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        if pid == command {
            *status = Some(raw);
        }
    }
}

fn pidfd_open(pid: i32) -> Option<RawFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)
}

struct Args {
    fd: RawFd,
    deadline: u64,
    grace: u64,
    margin: u64,
    command: Vec<OsString>,
}

fn parse_args(args: &[OsString]) -> Option<Args> {
    let num = |i: usize| -> Option<u64> { args.get(i)?.to_str()?.parse().ok() };
    let sep = args.get(4)?;
    if sep != "--" {
        return None;
    }
    Some(Args {
        fd: RawFd::try_from(num(0)?).ok()?,
        deadline: num(1)?,
        grace: num(2)?,
        margin: num(3)?,
        command: args.get(5..)?.to_vec(),
    })
}

/// The arguments `run` passes: `<fd> <deadline-ns> <grace-ns> <margin-ns> -- command...`.
pub fn args(fd: RawFd, deadline: u64, grace: u64, margin: u64) -> Vec<String> {
    vec![
        SUBCOMMAND.into(),
        fd.to_string(),
        deadline.to_string(),
        grace.to_string(),
        margin.to_string(),
        "--".into(),
    ]
}

fn send(sock: &mut UnixStream, msg: FromWatchdog) {
    // The supervisor may be gone: that is what we are here for.
    let _ = sock.write_all(msg.line().as_bytes());
}

/// `redis-lock __watchdog ...` (the arguments after the subcommand).
pub fn main(args: &[OsString]) -> u8 {
    let Some(a) = parse_args(args) else {
        say!("redis-lock: {SUBCOMMAND} is internal to `redis-lock run`");
        return crate::exit::USAGE;
    };
    // SAFETY: fcntl on an fd number we were given; no memory is touched.
    if unsafe { libc::fcntl(a.fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        say!(
            "redis-lock: watchdog: bad control socket: {}",
            io::Error::last_os_error()
        );
        return crate::exit::INTERNAL;
    }
    // SAFETY: the supervisor passed us this socket and nothing else owns it.
    let mut sock = unsafe { UnixStream::from_raw_fd(a.fd) };
    // SAFETY: prctl with integer arguments only sets flags on this process.
    unsafe {
        // Orphans of the command come to us, so they can be found and
        // stopped even if they left its process group.
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
        // Not "redis-lock", so a `killall redis-lock` leaves the guard.
        libc::prctl(libc::PR_SET_NAME, c"lock-watchdog".as_ptr());
    }
    catch_stop_signals();

    let Some((program, rest)) = a.command.split_first() else {
        send(&mut sock, FromWatchdog::SpawnFailed(libc::ENOENT));
        return crate::exit::USAGE;
    };
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let mut cmd = Command::new(program);
    cmd.args(rest).process_group(0);
    let hook = move || -> io::Result<()> {
        // If the watchdog itself is killed, the command goes with it.
        // SAFETY: prctl and getppid are async-signal-safe and touch no memory.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above.
        if unsafe { libc::getppid() } != me {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and makes only
    // async-signal-safe calls; the watchdog is single-threaded.
    unsafe {
        cmd.pre_exec(hook);
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            send(
                &mut sock,
                FromWatchdog::SpawnFailed(e.raw_os_error().unwrap_or(libc::ENOEXEC)),
            );
            return crate::exit::OK;
        }
    };
    let pid = i32::try_from(child.id()).unwrap_or(0);
    // The status is collected with waitpid below, for every child alike.
    drop(child);
    send(&mut sock, FromWatchdog::Started(pid));
    let tree = Tree { me, pgid: pid };
    let exited = guard(
        &mut sock,
        &tree,
        pid,
        Schedule::new(a.deadline, a.grace, a.margin),
    );
    send(&mut sock, exited);
    crate::exit::OK
}

/// Watches until the command and everything below us are gone.
fn guard(sock: &mut UnixStream, tree: &Tree, pid: i32, mut schedule: Schedule) -> FromWatchdog {
    let pidfd = pidfd_open(pid);
    let _ = sock.set_nonblocking(true);
    let mut open = true;
    let mut pending = Vec::new();
    let mut status = None;
    let mut why = Why::Ran;
    let mut killed = false;
    let grace_shown = crate::duration::format(std::time::Duration::from_nanos(schedule.grace));
    let mut stop = |schedule: &mut Schedule, now: u64, reason: Why| {
        if schedule.stop(now) {
            why = reason;
            let said = reason.announce();
            if !said.is_empty() {
                say!(
                    "redis-lock: {said}; stopping the command (SIGTERM to process group {pid}, \
                     SIGKILL after {grace_shown} or before the lease ends)"
                );
            }
            tree.signal(libc::SIGTERM);
            // A stopped process acts on SIGTERM only once continued.
            tree.signal(libc::SIGCONT);
        }
    };
    loop {
        reap(pid, &mut status);
        let now = mono_ns();
        if SIGNALLED.swap(false, Ordering::SeqCst) {
            stop(&mut schedule, now, Why::Signalled);
        }
        if status.is_some() && !schedule.stopping() {
            if !tree.alive() {
                break;
            }
            stop(&mut schedule, now, Why::Leftovers);
        }
        let mut wake = None;
        match schedule.due(now) {
            Due::Term => stop(&mut schedule, now, Why::Deadline),
            Due::Kill => {
                if tree.alive() {
                    if !killed {
                        say!(
                            "redis-lock: the command did not stop within {grace_shown}; \
                             sending SIGKILL to its process group"
                        );
                    }
                    killed = true;
                    tree.signal(libc::SIGKILL);
                }
            }
            Due::Until(at) => wake = Some(at),
        }
        if schedule.stopping() && status.is_some() && !tree.alive() {
            break;
        }
        // While stopping, look again often: processes die without telling.
        let mut timeout_ms: i32 = match wake {
            Some(at) => i32::try_from(at.saturating_sub(now).div_ceil(1_000_000))
                .unwrap_or(i32::MAX)
                .max(1),
            None => 10,
        };
        if schedule.stopping() || status.is_some() {
            timeout_ms = timeout_ms.min(10);
        }
        let mut fds = Vec::with_capacity(2);
        if open {
            fds.push(libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        match pidfd {
            Some(fd) if status.is_none() => fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            }),
            // Without a pidfd, notice the exit by looking often.
            None => timeout_ms = timeout_ms.min(20),
            Some(_) => {}
        }
        let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
        // SAFETY: fds is a valid array of nfds pollfd structs.
        unsafe { libc::poll(fds.as_mut_ptr(), nfds, timeout_ms) };
        if open {
            let mut buf = [0u8; 512];
            loop {
                match sock.read(&mut buf) {
                    Ok(0) => {
                        open = false;
                        stop(&mut schedule, mono_ns(), Why::Gone);
                        break;
                    }
                    Ok(n) => pending.extend_from_slice(buf.get(..n).unwrap_or(&[])),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        open = false;
                        stop(&mut schedule, mono_ns(), Why::Gone);
                        break;
                    }
                }
            }
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                match ToWatchdog::parse(&String::from_utf8_lossy(&line)) {
                    Some(ToWatchdog::Deadline(ns)) => schedule.renewed(ns),
                    Some(ToWatchdog::Stop) => stop(&mut schedule, mono_ns(), Why::Asked),
                    None => {}
                }
            }
        }
    }
    if let Some(fd) = pidfd {
        // SAFETY: our own fd, closed once.
        unsafe { libc::close(fd) };
    }
    FromWatchdog::Exited {
        raw: status.unwrap_or(libc::SIGKILL),
        why,
        killed,
    }
}

/// The wait status as the supervisor turns it into an exit status.
pub fn status(raw: i32) -> std::process::ExitStatus {
    std::process::ExitStatus::from_raw(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [ToWatchdog::Deadline(123_456_789_000), ToWatchdog::Stop] {
            assert_eq!(ToWatchdog::parse(&m.line()), Some(m));
        }
        for m in [
            FromWatchdog::Started(4242),
            FromWatchdog::SpawnFailed(libc::ENOENT),
            FromWatchdog::Exited {
                raw: 7 << 8,
                why: Why::Leftovers,
                killed: false,
            },
            FromWatchdog::Exited {
                raw: 9,
                why: Why::Deadline,
                killed: true,
            },
        ] {
            assert_eq!(FromWatchdog::parse(&m.line()), Some(m));
        }
        for bad in [
            "",
            "deadline",
            "deadline x",
            "stop now",
            "exited 1 2 0",
            "exited 1 ran",
            "hello",
        ] {
            assert_eq!(ToWatchdog::parse(bad), None, "{bad}");
            assert_eq!(FromWatchdog::parse(bad), None, "{bad}");
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn without_renewal_the_kill_lands_before_the_deadline() {
        // Deadline at 1000 ms, grace 300 ms, margin 50 ms.
        let mut s = Schedule::new(1000 * MS, 300 * MS, 50 * MS);
        assert_eq!(s.due(0), Due::Until(650 * MS));
        // A renewal moves everything.
        s.renewed(2000 * MS);
        assert_eq!(s.due(700 * MS), Due::Until(1650 * MS));
        assert_eq!(s.due(1650 * MS), Due::Term);
        assert!(s.stop(1650 * MS));
        assert!(!s.stop(1700 * MS), "stopping once");
        assert_eq!(s.due(1700 * MS), Due::Until(1950 * MS));
        assert_eq!(s.due(1950 * MS), Due::Kill);
        // Once stopping, a late renewal does not call it off.
        s.renewed(9000 * MS);
        assert_eq!(s.due(1950 * MS), Due::Kill);
    }

    #[test]
    fn an_early_stop_kills_after_the_grace_or_before_the_deadline() {
        let cases = [
            // (now, deadline, grace, margin, kill at)
            (0, 1000, 300, 50, 300),   // grace ends first
            (800, 1000, 300, 50, 950), // the deadline comes first
            (990, 1000, 300, 50, 950), // already past: at once
            (0, 30_000, 5_000, 100, 5_000),
        ];
        for (now, deadline, grace, margin, kill_at) in cases {
            let mut s = Schedule::new(deadline * MS, grace * MS, margin * MS);
            assert!(s.stop(now * MS));
            let want = if now >= kill_at {
                Due::Kill
            } else {
                Due::Until(kill_at * MS)
            };
            assert_eq!(s.due(now * MS), want, "{now} {deadline} {grace}");
        }
    }

    #[test]
    fn arguments_round_trip() {
        let mut args: Vec<OsString> = args(5, 10, 20, 30).into_iter().map(Into::into).collect();
        args.extend(["sh".into(), "-c".into(), "true".into()]);
        let a = parse_args(&args[1..]).unwrap();
        assert_eq!((a.fd, a.deadline, a.grace, a.margin), (5, 10, 20, 30));
        assert_eq!(a.command, ["sh", "-c", "true"]);
        assert!(parse_args(&args[1..4]).is_none());
    }
}
