//! One throwaway server process: free port, private temp dir with the log inside, bounded
//! readiness wait, SIGKILL-and-wait on drop, log printed when the test panics.

use std::collections::BTreeSet;
use std::env;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

use crate::{eventually, free_port, module_path, Flavor};

/// How long a server gets to answer PING after spawn.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read/write timeout of connections handed to tests, so no test hangs forever.
const CONN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed or shut-down process gets to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Fresh ports tried when the chosen one turns out to be taken.
const PORT_ATTEMPTS: usize = 5;
/// On restart the port must not change: tries on the same port, this far apart.
const SAME_PORT_ATTEMPTS: usize = 5;
const SAME_PORT_BACKOFF: Duration = Duration::from_millis(200);

const LOG_FILE: &str = "server.log";
/// stdout/stderr of the process: errors before the log file is open (bad arguments) land here.
const STDIO_FILE: &str = "stdio.log";
const FAKETIME_FILE: &str = "faketime";

/// Ports held by live `Server`s of this process (running or killed awaiting a restart), so
/// that a new server never picks a port an old one is going to come back on.
fn reserved() -> MutexGuard<'static, BTreeSet<u16>> {
    static RESERVED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    RESERVED.lock().unwrap_or_else(|e| e.into_inner())
}

fn reserve_port() -> u16 {
    for _ in 0..100 {
        let port = free_port();
        if reserved().insert(port) {
            return port;
        }
    }
    panic!("no free port found that is not already held by a server of this test process");
}

fn release_port(port: u16) {
    reserved().remove(&port);
}

#[derive(Debug, Clone)]
enum ModuleChoice {
    /// `module_path()`, resolved at `start()` so `no_module()` never needs a built module.
    Default,
    Path(PathBuf),
    None,
}

/// Everything needed to spawn the process again with the same arguments.
#[derive(Debug, Clone)]
struct Config {
    module: Option<PathBuf>,
    module_args: Vec<String>,
    extra: Vec<(String, Vec<String>)>,
    appendonly: Option<bool>,
    rdb: bool,
    faketime: bool,
    replica_of: Option<u16>,
}

/// Builds a [`Server`]; created by [`Server::builder`].
#[derive(Debug, Clone)]
#[must_use = "call .start() to start the server"]
pub struct ServerBuilder {
    flavor: Flavor,
    module: ModuleChoice,
    module_args: Vec<String>,
    extra: Vec<(String, Vec<String>)>,
    appendonly: Option<bool>,
    rdb: bool,
    faketime: bool,
    replica_of: Option<u16>,
}

impl ServerBuilder {
    /// Load this module instead of [`module_path()`].
    pub fn module(mut self, path: impl Into<PathBuf>) -> Self {
        self.module = ModuleChoice::Path(path.into());
        self
    }

    /// Start a plain server, without any module.
    pub fn no_module(mut self) -> Self {
        self.module = ModuleChoice::None;
        self
    }

    /// Append `name value` after the `.so` on the `--loadmodule` line (module configs).
    pub fn module_arg(mut self, name: &str, value: &str) -> Self {
        self.module_args.push(name.to_owned());
        self.module_args.push(value.to_owned());
        self
    }

    /// An extra `--name value` server argument, placed after the defaults so it overrides them.
    ///
    /// `value` is split on whitespace into separate arguments, because the server joins its
    /// arguments into config lines and quotes each one: `arg("replicaof", "127.0.0.1 6379")`
    /// and `arg("save", "60 1")` work; an empty `value` is passed as `""`.
    /// Do not override `port`, `dir` or `logfile`: the harness relies on them.
    pub fn arg(mut self, name: &str, value: &str) -> Self {
        let mut values: Vec<String> = value.split_whitespace().map(str::to_owned).collect();
        if values.is_empty() {
            values.push(String::new());
        }
        self.extra
            .push((name.trim_start_matches("--").to_owned(), values));
        self
    }

    /// `--appendonly yes --appendfsync always` (or `everysec`).
    pub fn appendonly(mut self, fsync_always: bool) -> Self {
        self.appendonly = Some(fsync_always);
        self
    }

    /// RDB persistence (`--save 3600 1`) instead of `--save ""`.
    pub fn rdb(mut self) -> Self {
        self.rdb = true;
        self
    }

    /// `--replicaof 127.0.0.1 <primary port>`. Every server already has
    /// `--repl-diskless-sync-delay 0`, so the primary syncs at once.
    pub fn replica_of(mut self, primary: &Server) -> Self {
        self.replica_of = Some(primary.port());
        self
    }

    /// Run under libfaketime, its offset read from `<dir>/faketime` on every clock call
    /// (initially `+0`); move the clock with [`Server::set_fake_offset`]. Only the wall clock
    /// moves (`FAKETIME_DONT_FAKE_MONOTONIC=1`).
    ///
    /// Panics if the flavor cannot run under libfaketime (see [`Flavor::supports_faketime`])
    /// or libfaketime is not installed.
    pub fn faketime(mut self) -> Self {
        assert!(
            self.flavor.supports_faketime(),
            "{} cannot run under libfaketime (jemalloc hangs in clock_gettime); use a Valkey flavor",
            self.flavor
        );
        assert!(
            libfaketime().is_some(),
            "libfaketime not found under /usr/lib/<arch>/faketime: apt-get install -y faketime"
        );
        self.faketime = true;
        self
    }

    /// Spawn the server and wait until it answers PING. Panics with the server log on failure.
    pub fn start(self) -> Server {
        let binary = self.flavor.binary().unwrap_or_else(|| {
            panic!(
                "{} is not installed (set {} to its server binary)",
                self.flavor,
                self.flavor.env_var()
            )
        });
        let module = match self.module {
            ModuleChoice::Default => Some(module_path()),
            ModuleChoice::Path(p) => {
                assert!(p.is_file(), "module not found: {}", p.display());
                Some(p)
            }
            ModuleChoice::None => None,
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("redis-lock-{}-", self.flavor))
            .tempdir()
            .expect("create a temp dir for the server");
        let dir_path = dir.path().to_path_buf();
        let config = Config {
            module,
            module_args: self.module_args,
            extra: self.extra,
            appendonly: self.appendonly,
            rdb: self.rdb,
            faketime: self.faketime,
            replica_of: self.replica_of,
        };
        if config.faketime {
            fs::write(dir_path.join(FAKETIME_FILE), "+0\n").expect("write the faketime file");
        }
        let mut server = Server {
            flavor: self.flavor,
            binary,
            port: 0,
            pid: 0,
            dir: Some(dir),
            dir_path,
            child: None,
            config,
            paused: AtomicBool::new(false),
            log_shown: false,
        };
        for attempt in 1..=PORT_ATTEMPTS {
            server.port = reserve_port();
            match server.launch() {
                Launch::Ready => return server,
                Launch::PortBusy if attempt < PORT_ATTEMPTS => release_port(server.port),
                outcome => server.fail_launch(outcome, attempt),
            }
        }
        unreachable!("the last attempt either returns or panics")
    }
}

/// The outcome of one spawn.
enum Launch {
    Ready,
    /// The process exited and its log says the port was taken.
    PortBusy,
    Exited(ExitStatus),
    /// No PONG within [`READY_TIMEOUT`]; the process has been killed.
    TimedOut,
}

/// A running (or killed, awaiting restart) server process with its own port and temp dir.
///
/// Dropping it sends SIGCONT then SIGKILL, waits for the process, and removes the dir (kept
/// with `REDIS_LOCK_KEEP_DIRS=1`). When the thread is panicking, the server log goes to stderr.
#[derive(Debug)]
pub struct Server {
    flavor: Flavor,
    binary: PathBuf,
    port: u16,
    pid: u32,
    dir: Option<TempDir>,
    dir_path: PathBuf,
    child: Option<Child>,
    config: Config,
    /// Set by `pause()`, cleared by `resume()` and whenever the process goes away.
    paused: AtomicBool,
    /// The log is already in a panic message: Drop need not print it again.
    log_shown: bool,
}

impl Server {
    /// A server of `flavor` with the module from [`module_path()`] loaded and default settings.
    pub fn start(flavor: Flavor) -> Server {
        Server::builder(flavor).start()
    }

    pub fn builder(flavor: Flavor) -> ServerBuilder {
        ServerBuilder {
            flavor,
            module: ModuleChoice::Default,
            module_args: Vec::new(),
            extra: Vec::new(),
            appendonly: None,
            rdb: false,
            faketime: false,
            replica_of: None,
        }
    }

    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pid of the current (or, after a kill, the last) process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The server's working dir: log, RDB, AOF and faketime files.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("a valid redis URL")
    }

    /// A RESP2 connection with 10 s connect, read and write timeouts.
    pub fn conn(&self) -> redis::Connection {
        self.connect(&self.url())
    }

    /// A RESP3 connection with 10 s connect, read and write timeouts.
    pub fn conn_resp3(&self) -> redis::Connection {
        self.connect(&format!("{}/?protocol=resp3", self.url()))
    }

    fn connect(&self, url: &str) -> redis::Connection {
        let client = redis::Client::open(url).expect("a valid redis URL");
        let conn = client
            .get_connection_with_timeout(CONN_TIMEOUT)
            .unwrap_or_else(|e| {
                panic!(
                    "connect to {} server on port {}: {e}",
                    self.flavor, self.port
                )
            });
        conn.set_read_timeout(Some(CONN_TIMEOUT))
            .expect("set read timeout");
        conn.set_write_timeout(Some(CONN_TIMEOUT))
            .expect("set write timeout");
        conn
    }

    /// `INFO <section>` as text.
    pub fn info(&self, section: &str) -> String {
        redis::cmd("INFO")
            .arg(section)
            .query(&mut self.conn())
            .unwrap_or_else(|e| panic!("INFO {section} on port {}: {e}", self.port))
    }

    /// SIGKILL and wait for the process. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if !self.stop_child() {
            panic!(
                "{} server pid {} did not exit within {EXIT_TIMEOUT:?} of SIGKILL",
                self.flavor, self.pid
            );
        }
    }

    /// SIGCONT (in case it is paused), SIGKILL, reap. False if it would not die in time.
    fn stop_child(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        self.paused.store(false, Ordering::SeqCst);
        signal(child.id(), libc::SIGCONT);
        // An error here means it has exited already; the wait below reaps it either way.
        let _ = child.kill();
        reap(&mut child, EXIT_TIMEOUT, self.config.faketime).is_some()
    }

    /// SIGKILL, then start again with the same dir, port and arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// SIGKILL, delete its data (the RDB and the AOF directory, as a wiped
    /// disk or a container without a volume would), then start again with
    /// the same dir, port and arguments.
    pub fn restart_wiped(&mut self) {
        self.kill();
        let entries = fs::read_dir(&self.dir_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.dir_path.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "appendonlydir" || name.starts_with("appendonly.aof") {
                let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
            } else if name.ends_with(".rdb") {
                let _ = fs::remove_file(&path);
            }
        }
        self.start_again();
    }

    /// `SHUTDOWN SAVE` (`SHUTDOWN NOSAVE` when neither RDB nor AOF is on) and wait for the exit.
    pub fn shutdown_save(&mut self) {
        assert!(
            self.child.is_some(),
            "shutdown_save: the server on port {} is not running",
            self.port
        );
        let mode = if self.config.rdb || self.config.appendonly.is_some() {
            "SAVE"
        } else {
            "NOSAVE"
        };
        let reply: redis::RedisResult<redis::Value> =
            redis::cmd("SHUTDOWN").arg(mode).query(&mut self.conn());
        // Success closes the connection without a reply; an error reply means it refused.
        if let Err(e) = &reply {
            if e.code().is_some() {
                panic!(
                    "SHUTDOWN {mode} refused on port {}: {e}\n{}",
                    self.port,
                    self.log()
                );
            }
        }
        let mut child = self.child.take().expect("checked above");
        if reap(&mut child, EXIT_TIMEOUT, self.config.faketime).is_none() {
            self.child = Some(child);
            panic!(
                "{} server on port {} still running {EXIT_TIMEOUT:?} after SHUTDOWN {mode} (reply {reply:?})",
                self.flavor, self.port
            );
        }
    }

    /// Start again after [`kill`](Self::kill) or [`shutdown_save`](Self::shutdown_save), with
    /// the same dir, port and arguments. Retries a few times while the port is busy, then panics.
    pub fn start_again(&mut self) {
        assert!(
            !self.is_running(),
            "start_again: the server on port {} is still running; kill() or shutdown_save() first",
            self.port
        );
        // It may have died by itself (a crash under test): reap it first.
        self.stop_child();
        for attempt in 1..=SAME_PORT_ATTEMPTS {
            match self.launch() {
                Launch::Ready => return,
                Launch::PortBusy if attempt < SAME_PORT_ATTEMPTS => {
                    thread::sleep(SAME_PORT_BACKOFF)
                }
                outcome => self.fail_launch(outcome, attempt),
            }
        }
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&self) {
        let child = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("pause: server on port {} is not running", self.port));
        signal(child.id(), libc::SIGSTOP);
        self.paused.store(true, Ordering::SeqCst);
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) {
        let child = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("resume: server on port {} is not running", self.port));
        signal(child.id(), libc::SIGCONT);
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Whether the process exists (a paused process counts as running).
    pub fn is_running(&self) -> bool {
        match &self.child {
            // Look without reaping, so kill() and Drop still own the wait.
            Some(child) => exit_status_nowait(child.id()).is_none(),
            None => false,
        }
    }

    /// The server log file (all runs: the server appends), followed by the process's
    /// stdout/stderr if it wrote any (argument errors are printed before the log file opens).
    pub fn log(&self) -> String {
        let mut out = fs::read_to_string(self.dir_path.join(LOG_FILE)).unwrap_or_default();
        let stdio = fs::read_to_string(self.dir_path.join(STDIO_FILE)).unwrap_or_default();
        if !stdio.trim().is_empty() {
            let _ = write!(out, "---- stdout/stderr ----\n{stdio}");
        }
        out
    }

    /// Move the fake wall clock: write `offset` (libfaketime syntax, relative to the real time:
    /// `"+3600"`, `"+3600s"`, `"-10m"`, `"+2h"`, `"+1d"`; `"+0"` to go back) to the timestamp
    /// file. Panics unless started with `faketime()`.
    ///
    /// For a plain offset like those above, this returns only once `TIME` on the server shows
    /// it (Valkey caches the clock, so the next few commands could otherwise still see the old
    /// time); panics if that takes over 5 s. It does not wait on a paused server, nor for other
    /// libfaketime forms (`"+0 x10"`, `"@2030-01-01 00:00:00"`).
    pub fn set_fake_offset(&self, offset: &str) {
        assert!(
            self.config.faketime,
            "set_fake_offset: the server on port {} was not started with faketime()",
            self.port
        );
        let offset = offset.trim();
        assert!(!offset.is_empty(), "set_fake_offset: empty offset");
        // Write then rename, so the server never reads a half-written file.
        let tmp = self.dir_path.join(format!("{FAKETIME_FILE}.tmp"));
        fs::write(&tmp, format!("{offset}\n")).expect("write the faketime file");
        fs::rename(&tmp, self.dir_path.join(FAKETIME_FILE)).expect("replace the faketime file");

        let Some(secs) = parse_offset(offset) else {
            return;
        };
        if self.paused.load(Ordering::SeqCst) || self.child.is_none() {
            return;
        }
        let what = format!("TIME on port {} to show the offset {offset}", self.port);
        let mut conn = self.conn();
        eventually(Duration::from_secs(5), &what, || {
            let (server, _micros): (i64, i64) = redis::cmd("TIME").query(&mut conn).ok()?;
            let real = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock after 1970")
                .as_secs_f64();
            ((server as f64 - (real + secs)).abs() <= 2.0).then_some(())
        });
    }

    /// On a replica: wait until `INFO replication` says `master_link_status:up` and the
    /// initial sync is over. Panics after `timeout`.
    pub fn wait_replica_synced(&self, timeout: Duration) {
        let what = format!("replica on port {} to finish syncing", self.port);
        eventually(timeout, &what, || {
            let info = self.info("replication");
            let up = info.lines().any(|l| l.trim() == "master_link_status:up");
            let syncing = info
                .lines()
                .any(|l| l.trim() == "master_sync_in_progress:1");
            (up && !syncing).then_some(())
        });
    }

    fn args(&self) -> Vec<OsString> {
        let dir = &self.dir_path;
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |name: &str, values: &[&str]| {
            a.push(format!("--{name}").into());
            a.extend(values.iter().map(OsString::from));
        };
        let port = self.port.to_string();
        push("port", &[&port]);
        push("bind", &["127.0.0.1"]);
        push("dir", &[&dir.to_string_lossy()]);
        push("logfile", &[&dir.join(LOG_FILE).to_string_lossy()]);
        if self.config.rdb {
            push("save", &["3600", "1"]);
        } else {
            push("save", &[""]);
        }
        match self.config.appendonly {
            None => push("appendonly", &["no"]),
            Some(always) => {
                push("appendonly", &["yes"]);
                push("appendfsync", &[if always { "always" } else { "everysec" }]);
            }
        }
        push("daemonize", &["no"]);
        push("enable-debug-command", &["yes"]);
        push("enable-module-command", &["yes"]);
        push("repl-diskless-sync-delay", &["0"]);
        push("protected-mode", &["no"]);
        push("loglevel", &["verbose"]);
        if let Some(primary) = self.config.replica_of {
            push("replicaof", &["127.0.0.1", &primary.to_string()]);
        }
        if let Some(module) = &self.config.module {
            let mut values = vec![module.to_string_lossy().into_owned()];
            values.extend(self.config.module_args.iter().cloned());
            // Test servers start without persistence, where the module's
            // delayed rejoin would refuse grants for lock.max-ttl-ms: off
            // unless the test asks for it.
            if !self
                .config
                .module_args
                .iter()
                .any(|a| a == "rejoin-delay-ms")
            {
                values.extend(["rejoin-delay-ms".to_owned(), "0".to_owned()]);
            }
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            push("loadmodule", &values);
        }
        for (name, values) in &self.config.extra {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            push(name, &values);
        }
        a
    }

    /// Spawn once on `self.port` and wait for PONG from this very process.
    fn launch(&mut self) -> Launch {
        self.log_shown = false;
        let log_path = self.dir_path.join(LOG_FILE);
        let log_start = fs::metadata(&log_path).map_or(0, |m| m.len());
        let stdio = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir_path.join(STDIO_FILE))
            .expect("open the stdio log");
        let mut cmd = match wrapper() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        cmd.args(self.args())
            .current_dir(&self.dir_path)
            .stdin(Stdio::null())
            .stdout(stdio.try_clone().expect("clone the stdio log handle"))
            .stderr(stdio);
        // FAKETIME in the environment would take priority over the timestamp file.
        cmd.env_remove("FAKETIME").env_remove("LD_PRELOAD");
        if self.config.faketime {
            cmd.env("LD_PRELOAD", libfaketime().unwrap_or_default())
                .env("FAKETIME_TIMESTAMP_FILE", self.dir_path.join(FAKETIME_FILE))
                .env("FAKETIME_NO_CACHE", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        self.pid = child.id();
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT * slowdown();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = reap(child, Duration::ZERO, self.config.faketime) {
                    self.child = None;
                    let log = read_from(&log_path, log_start);
                    return if log.contains("Address already in use") {
                        Launch::PortBusy
                    } else {
                        Launch::Exited(status)
                    };
                }
            }
            if self.answers_ping() {
                return Launch::Ready;
            }
            if Instant::now() >= deadline {
                self.kill();
                return Launch::TimedOut;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// PONG, and `INFO server` names our pid: a PONG from another test's server on a port we
    /// lost the race for must not count.
    fn answers_ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        if conn.set_read_timeout(Some(Duration::from_secs(1))).is_err() {
            return false;
        }
        // -LOADING while the dataset is read: not ready yet.
        if !matches!(redis::cmd("PING").query::<String>(&mut conn), Ok(s) if s == "PONG") {
            return false;
        }
        let Ok(info) = redis::cmd("INFO").arg("server").query::<String>(&mut conn) else {
            return false;
        };
        let want = format!("process_id:{}", self.pid);
        info.lines().any(|l| l.trim() == want)
    }

    fn fail_launch(&mut self, outcome: Launch, attempt: usize) -> ! {
        let why = match outcome {
            Launch::Ready => unreachable!("not a failure"),
            Launch::PortBusy => format!("port {} still busy after {attempt} attempts", self.port),
            Launch::Exited(status) => format!("process exited ({status}) before answering PING"),
            Launch::TimedOut => format!("no PONG within {READY_TIMEOUT:?}; killed"),
        };
        self.log_shown = true;
        panic!(
            "{} server failed to start on port {}: {why}\ncommand: {} {}\n---- log ----\n{}",
            self.flavor,
            self.port,
            self.binary.display(),
            self.args()
                .iter()
                .map(|a| if a.is_empty() {
                    "\"\"".into()
                } else {
                    a.to_string_lossy()
                })
                .collect::<Vec<_>>()
                .join(" "),
            self.log()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Under a wrapper (valgrind) a clean exit lets it write its report.
        if wrapper().is_some() {
            if let Some(child) = self.child.as_mut() {
                signal(child.id(), libc::SIGCONT);
                signal(child.id(), libc::SIGTERM);
                if reap(child, EXIT_TIMEOUT * slowdown(), self.config.faketime).is_some() {
                    self.child = None;
                }
            }
        }
        // Never panic in drop: a process that will not die is reported and left behind.
        if !self.stop_child() {
            eprintln!(
                "testkit: {} server pid {} did not exit after SIGKILL",
                self.flavor, self.pid
            );
        }
        release_port(self.port);
        let keep = env::var("REDIS_LOCK_KEEP_DIRS").is_ok_and(|v| v == "1");
        if thread::panicking() && !self.log_shown {
            eprintln!(
                "---- {} server on port {} log ----\n{}",
                self.flavor,
                self.port,
                self.log()
            );
            eprintln!(
                "---- end of log ({}) ----",
                if keep {
                    "dir kept below"
                } else {
                    "set REDIS_LOCK_KEEP_DIRS=1 to keep the dir"
                }
            );
        }
        if let Some(dir) = self.dir.take() {
            if keep {
                let path = dir.keep();
                eprintln!(
                    "testkit: kept {} server dir {}",
                    self.flavor,
                    path.display()
                );
            }
        }
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits in pid_t");
    // SAFETY: kill(2) takes plain integers; the pid is our own child, not yet reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The exit status of a child that has exited but is not reaped yet; `None` while it runs.
fn exit_status_nowait(pid: u32) -> Option<i32> {
    let id = libc::id_t::try_from(pid).expect("pid fits in id_t");
    // SAFETY: siginfo_t is plain data, valid when zeroed; waitid only writes into it.
    // WNOWAIT leaves the child waitable, so std's Child still reaps it.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            id,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        (rc == 0 && info.si_pid() != 0).then(|| info.si_status())
    }
}

/// Wait up to `timeout` for the child to exit, then reap it. With faketime, libfaketime's
/// shared-memory files (named by pid, left behind by SIGKILL) are removed before the pid can
/// be reused, as a stale pair makes a later process with that pid fail.
fn reap(child: &mut Child, timeout: Duration, faketime: bool) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if exit_status_nowait(child.id()).is_some() {
            if faketime {
                let pid = child.id();
                let _ = fs::remove_file(format!("/dev/shm/faketime_shm_{pid}"));
                let _ = fs::remove_file(format!("/dev/shm/sem.faketime_sem_{pid}"));
            }
            return Some(child.wait().expect("reap an exited child"));
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Seconds of a plain libfaketime relative offset (`+N`, `-N`, with an optional `s`, `m`, `h`,
/// `d` or `y` suffix); `None` for any other form.
fn parse_offset(offset: &str) -> Option<f64> {
    let sign = match offset.as_bytes().first()? {
        b'+' => 1.0,
        b'-' => -1.0,
        _ => return None,
    };
    let body = offset.get(1..)?;
    let (num, unit) = match body.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (body.get(..i)?, c),
        _ => (body, 's'),
    };
    let unit = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86_400.0,
        'y' => 31_536_000.0,
        _ => return None,
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    Some(sign * num.parse::<f64>().ok()? * unit)
}

/// The part of a file after `start` bytes, lossily decoded.
fn read_from(path: &Path, start: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    read().unwrap_or_default()
}

/// `REDIS_LOCK_SERVER_WRAPPER`: a command (split on whitespace) to run the
/// server under, e.g. `valgrind --log-file=/tmp/vg.%p.log`; the server
/// binary and its arguments follow it.
fn wrapper() -> Option<(String, Vec<String>)> {
    let w = env::var("REDIS_LOCK_SERVER_WRAPPER").ok()?;
    let mut words = w.split_whitespace().map(str::to_owned);
    let program = words.next()?;
    Some((program, words.collect()))
}

/// How much longer start-up and exit may take: 10 times under a wrapper.
fn slowdown() -> u32 {
    if wrapper().is_some() {
        10
    } else {
        1
    }
}

/// Debian's libfaketime, wherever the architecture puts it
/// (`/usr/lib/<triplet>/faketime/libfaketime.so.1`), or `FAKETIME_LIB`.
pub fn libfaketime() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FAKETIME_LIB").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let direct = Path::new("/usr/lib/faketime/libfaketime.so.1");
    if direct.is_file() {
        return Some(direct.to_path_buf());
    }
    fs::read_dir("/usr/lib")
        .ok()?
        .flatten()
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::parse_offset;

    #[test]
    fn plain_offsets_parse_to_seconds() {
        let cases = [
            ("+0", Some(0.0)),
            ("+3600", Some(3600.0)),
            ("+3600s", Some(3600.0)),
            ("-10m", Some(-600.0)),
            ("+2h", Some(7200.0)),
            ("+1d", Some(86_400.0)),
            ("+1.5h", Some(5400.0)),
            ("+1y", Some(31_536_000.0)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_offset(input), want, "{input}");
        }
    }

    #[test]
    fn other_forms_are_not_waited_for() {
        for input in [
            "",
            "+",
            "+s",
            "0",
            "+0 x10",
            "@2030-01-01 00:00:00",
            "2030-01-01 00:00:00",
            "+1w",
            "+1,5h",
        ] {
            assert_eq!(parse_offset(input), None, "{input}");
        }
    }
}
