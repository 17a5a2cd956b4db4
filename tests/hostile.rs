//! Hostile operations: a model-based, seeded test of the lock commands
//! interleaved with what the server and its operators do to a node.
//!
//! Several simulated clients (one connection each, read with bounds) send
//! `LOCK.ACQUIRE` (with `WAIT`, `TICKET`, `FENCE`), `LOCK.EXTEND`,
//! `LOCK.RELEASE` and `LOCK.INFO`, while an operator pauses clients, fails
//! over to the replica, unblocks and kills clients, sets native TTLs, evicts,
//! swaps, moves, renames, copies, restores and flushes keys, reloads and
//! rewrites. After every step the test checks, against a model built only
//! from the replies the clients received:
//! - the servers answer `PING` (and are running);
//! - every request got exactly one reply, in order, and every waiter is
//!   answered exactly once (a `WAIT` with a timeout in bounded time);
//! - every lock `LOCK.INFO` shows is held by a token that was granted it in a
//!   reply it received (no phantom holder), with that fencing token;
//! - no two tokens hold a key at once;
//! - fencing tokens a node hands out strictly increase (also across a
//!   failover that waited for the replica), and `lock_fence_counter` is never
//!   below the highest one;
//! - a waiter is served once its lock is gone, however it went;
//! - on a replica (also a writable one) the write commands are refused
//!   with `READONLY`;
//! - and, once every lock is gone and every client has left, `used_memory`
//!   is back within a few KB of where it started.
//!
//! An operator removing a lock key (DEL, a native TTL, eviction, FLUSHDB,
//! RESTORE REPLACE, MOVE or RENAME away) ends that lock: a new holder may
//! then be granted.
//!
//! Seeded: `HOSTILE_SEED` (default 1) is the first sequence's seed, the next
//! ones count up. `HOSTILE_SEQUENCES` sequences of `HOSTILE_STEPS` steps per
//! server flavor, or, with `HOSTILE_DURATION` seconds, as many as fit
//! (`make soak`). `HOSTILE_KEEP_GOING=1` reports every kind of violation once
//! instead of stopping at the first; `HOSTILE_SKIP=kind,kind` leaves step
//! kinds out of the generator and `HOSTILE_ONLY=kind,kind` keeps only those
//! (the names `Step::kind` gives);
//! `HOSTILE_FLAVOR=valkey-9` runs one flavor; `HOSTILE_VERBOSE=1` prints
//! each step. A failure prints the seed, the server logs (a crash report's
//! head) and the shortest failing sequence found: the failing prefix, then
//! chunks of steps dropped, within `HOSTILE_SHRINK` replays (default 12)
//! and `HOSTILE_SHRINK_SECS` seconds (default 10; 600 with a duration).
//!
//! Default (`make test`): 2 sequences of 60 steps per flavor, about 25 s
//! for the three flavors when they pass.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use testkit::lockcmd::fingerprint;
use testkit::resp::{Read1, Reply, RespConn};
use testkit::{Flavor, Rng, Server};

/// Lock keys the clients use (in db 0; SWAPDB and MOVE carry them to db 1).
const KEYS: usize = 3;
/// Simulated lock clients.
const CLIENTS: usize = 4;
/// How long a plain request may take to be answered.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Slack on every timing judgement (scheduling on 2 busy cores).
const SLACK: Duration = Duration::from_millis(750);
/// A lock found gone before its deadline is "lost early" only past this.
const DEADLINE_SLACK: Duration = Duration::from_millis(5);
/// `used_memory` (less buffers) may grow by this much over the baseline.
/// The server pools the clients behind blocked-client handles and trims the
/// pool on its own schedule: one pooled client (about 22 KB on Redis 7.0,
/// 17.5 KB on Valkey) comes and goes. A handle never released costs more
/// (about 35 KB) and adds up with every wait.
const MEMORY_TOLERANCE: i64 = 24 * 1024;
const ABSURD_FENCE: &str = "9223372036854775807";

fn key(k: usize) -> String {
    format!("hostile:{k}")
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

// ---------------------------------------------------------------- steps

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    NoEviction,
    AllKeysLru,
    VolatileTtl,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::NoEviction => "noeviction",
            Policy::AllKeysLru => "allkeys-lru",
            Policy::VolatileTtl => "volatile-ttl",
        }
    }
}

/// One thing a client or the operator does. Chosen without looking at the
/// state, so a sequence replays (and shrinks) as plain data; a step that
/// does not apply (a busy client asked to acquire) does nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Acquire {
        c: usize,
        k: usize,
        ttl: u64,
        /// FENCE at the node's counter plus this.
        fence_delta: Option<u64>,
    },
    /// `WAIT ms` (0: no timeout), optionally with a `TICKET`.
    Wait {
        c: usize,
        k: usize,
        ttl: u64,
        wait: u64,
        ticket: bool,
    },
    /// A holder with `ttl` and a waiter whose `WAIT` ends within a few ms of
    /// that deadline: the hand-over races the waiter's timeout.
    Race {
        c: usize,
        w: usize,
        k: usize,
        ttl: u64,
        skew: i64,
    },
    Extend {
        c: usize,
        k: usize,
        ttl: u64,
    },
    Release {
        c: usize,
        k: usize,
    },
    Info {
        c: usize,
        k: usize,
    },
    TicketWithoutWait {
        c: usize,
        k: usize,
    },
    AbsurdFence {
        c: usize,
        k: usize,
    },
    Sleep {
        ms: u64,
    },
    Pause {
        ms: u64,
        all: bool,
    },
    Unpause,
    Failover,
    Promote,
    WritableReplica {
        k: usize,
    },
    Unblock {
        c: usize,
        error: bool,
    },
    Kill {
        c: usize,
    },
    Disconnect {
        c: usize,
    },
    Pexpire {
        k: usize,
        ms: u64,
    },
    Persist {
        k: usize,
    },
    Evict {
        policy: Policy,
        c: usize,
        k: usize,
    },
    SwapDb,
    Move {
        k: usize,
    },
    Rename {
        k: usize,
        to: usize,
    },
    Copy {
        k: usize,
        to: usize,
    },
    Dump {
        k: usize,
    },
    Restore {
        k: usize,
    },
    Del {
        k: usize,
    },
    FlushAsync,
    DebugReload,
    Rewrite,
    /// A holder `c`, a waiter `w`, and something that ends or moves the lock.
    Scene {
        scene: Scene,
        c: usize,
        w: usize,
        k: usize,
    },
}

/// Situations the random mix reaches too rarely, played out on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scene {
    /// PEXPIRE on a held lock with a waiter: the native expiry must serve it.
    Pexpire,
    /// allkeys-lru eviction of a held lock with a waiter.
    Evict,
    /// SWAPDB 0 1 under a waiter: it stays in db 0 and is served there.
    SwapDb,
    /// CLIENT UNBLOCK (ERROR) of a `WAIT 0` waiter, then the holder releases.
    Unblock { error: bool },
    /// A lock (with a waiter) ends during CLIENT PAUSE WRITE or ALL.
    Pause { all: bool },
}

impl Step {
    fn kind(&self) -> &'static str {
        match self {
            Step::Acquire { .. } => "acquire",
            Step::Wait { .. } => "wait",
            Step::Race { .. } => "race",
            Step::Extend { .. } => "extend",
            Step::Release { .. } => "release",
            Step::Info { .. } => "info",
            Step::TicketWithoutWait { .. } => "ticket-without-wait",
            Step::AbsurdFence { .. } => "absurd-fence",
            Step::Sleep { .. } => "sleep",
            Step::Pause { .. } => "pause",
            Step::Unpause => "unpause",
            Step::Failover => "failover",
            Step::Promote => "promote",
            Step::WritableReplica { .. } => "writable-replica",
            Step::Unblock { .. } => "unblock",
            Step::Kill { .. } => "kill",
            Step::Disconnect { .. } => "disconnect",
            Step::Pexpire { .. } => "pexpire",
            Step::Persist { .. } => "persist",
            Step::Evict { .. } => "evict",
            Step::SwapDb => "swapdb",
            Step::Move { .. } => "move",
            Step::Rename { .. } => "rename",
            Step::Copy { .. } => "copy",
            Step::Dump { .. } => "dump",
            Step::Restore { .. } => "restore",
            Step::Del { .. } => "del",
            Step::FlushAsync => "flushdb-async",
            Step::DebugReload => "debug-reload",
            Step::Rewrite => "bgrewriteaof",
            Step::Scene { scene, .. } => match scene {
                Scene::Pexpire => "scene-pexpire",
                Scene::Evict => "scene-evict",
                Scene::SwapDb => "scene-swapdb",
                Scene::Unblock { .. } => "scene-unblock",
                Scene::Pause { .. } => "scene-pause",
            },
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Acquire {
                c,
                k,
                ttl,
                fence_delta,
            } => {
                write!(f, "c{c}: LOCK.ACQUIRE {} <tok> {ttl}", key(*k))?;
                match fence_delta {
                    Some(d) => write!(f, " FENCE <counter+{d}>"),
                    None => Ok(()),
                }
            }
            Step::Wait {
                c,
                k,
                ttl,
                wait,
                ticket,
            } => write!(
                f,
                "c{c}: LOCK.ACQUIRE {} <tok> {ttl} WAIT {wait}{}",
                key(*k),
                if *ticket { " TICKET <now>" } else { "" }
            ),
            Step::Race { c, w, k, ttl, skew } => write!(
                f,
                "race on {}: c{c} holds for {ttl} ms, c{w} waits {ttl}{skew:+} ms",
                key(*k)
            ),
            Step::Extend { c, k, ttl } => write!(f, "c{c}: LOCK.EXTEND {} <tok> {ttl}", key(*k)),
            Step::Release { c, k } => write!(f, "c{c}: LOCK.RELEASE {} <tok>", key(*k)),
            Step::Info { c, k } => write!(f, "c{c}: LOCK.INFO {}", key(*k)),
            Step::TicketWithoutWait { c, k } => {
                write!(f, "c{c}: LOCK.ACQUIRE {} <tok> 200 TICKET 5", key(*k))
            }
            Step::AbsurdFence { c, k } => write!(
                f,
                "c{c}: LOCK.ACQUIRE {} <tok> 200 FENCE {ABSURD_FENCE}",
                key(*k)
            ),
            Step::Sleep { ms } => write!(f, "sleep {ms} ms"),
            Step::Pause { ms, all } => {
                write!(
                    f,
                    "CLIENT PAUSE {ms} {}",
                    if *all { "ALL" } else { "WRITE" }
                )
            }
            Step::Unpause => write!(f, "CLIENT UNPAUSE"),
            Step::Failover => write!(f, "FAILOVER (to the replica)"),
            Step::Promote => write!(
                f,
                "REPLICAOF NO ONE on the replica, the old primary its replica"
            ),
            Step::WritableReplica { k } => write!(
                f,
                "replica-read-only no; lock writes on the replica to {}",
                key(*k)
            ),
            Step::Unblock { c, error } => write!(
                f,
                "CLIENT UNBLOCK <c{c}>{}",
                if *error { " ERROR" } else { "" }
            ),
            Step::Kill { c } => write!(f, "CLIENT KILL ID <c{c}>"),
            Step::Disconnect { c } => write!(f, "c{c} disconnects"),
            Step::Pexpire { k, ms } => write!(f, "PEXPIRE {} {ms}", key(*k)),
            Step::Persist { k } => write!(f, "PERSIST {}", key(*k)),
            Step::Evict { policy, c, k } => write!(
                f,
                "maxmemory 1 {}; c{c}: LOCK.ACQUIRE {} <tok> 300; maxmemory 0",
                policy.name(),
                key(*k)
            ),
            Step::SwapDb => write!(f, "SWAPDB 0 1"),
            Step::Move { k } => write!(f, "MOVE {} 1", key(*k)),
            Step::Rename { k, to } => write!(f, "RENAME {} {}", key(*k), key(*to)),
            Step::Copy { k, to } => write!(f, "COPY {} {} REPLACE", key(*k), key(*to)),
            Step::Dump { k } => write!(f, "DUMP {}", key(*k)),
            Step::Restore { k } => write!(f, "RESTORE {} 0 <last dump> REPLACE", key(*k)),
            Step::Del { k } => write!(f, "DEL {}", key(*k)),
            Step::FlushAsync => write!(f, "FLUSHDB ASYNC"),
            Step::DebugReload => write!(f, "DEBUG RELOAD"),
            Step::Rewrite => write!(f, "BGREWRITEAOF"),
            Step::Scene { scene, c, w, k } => {
                let k = key(*k);
                match scene {
                    Scene::Pexpire => write!(f, "c{c} holds {k} for 700 ms, c{w} WAITs 3000; PEXPIRE {k} 5"),
                    Scene::Evict => write!(f, "c{c} holds {k} for 700 ms, c{w} WAITs 3000; maxmemory 1 allkeys-lru; PING; maxmemory 0"),
                    Scene::SwapDb => write!(f, "c{c} holds {k} for 700 ms, c{w} WAITs 3000; SWAPDB 0 1"),
                    Scene::Unblock { error } => write!(
                        f,
                        "c{c} holds {k} for 700 ms, c{w} WAITs 0; CLIENT UNBLOCK <c{w}>{}; c{c} releases",
                        if *error { " ERROR" } else { "" }
                    ),
                    Scene::Pause { all } => write!(
                        f,
                        "c{c} holds {k} for 30 ms, c{w} WAITs 1000; CLIENT PAUSE 150 {}; sleep 200 ms",
                        if *all { "ALL" } else { "WRITE" }
                    ),
                }
            }
        }
    }
}

/// A lease: mostly short, so expiries happen within a sequence.
fn ttl(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0..=5 => rng.range(20, 250),
        6..=8 => rng.range(250, 700),
        _ => rng.range(1, 15),
    }
}

fn generate(rng: &mut Rng, n: usize, skip: &[String], only: &[String]) -> Vec<Step> {
    let mut steps = Vec::with_capacity(n);
    while steps.len() < n {
        let c = rng.below(CLIENTS);
        let k = rng.below(KEYS);
        let step = match rng.below(106) {
            0..=16 => Step::Acquire {
                c,
                k,
                ttl: ttl(rng),
                fence_delta: rng.chance(15).then(|| rng.range(1, 1000)),
            },
            17..=28 => Step::Wait {
                c,
                k,
                ttl: ttl(rng),
                wait: match rng.below(6) {
                    0 => 0,
                    1 => rng.range(1, 5),
                    2 | 3 => rng.range(5, 80),
                    _ => rng.range(80, 400),
                },
                ticket: rng.chance(25),
            },
            29..=32 => Step::Race {
                c,
                w: (c + 1 + rng.below(CLIENTS - 1)) % CLIENTS,
                k,
                ttl: rng.range(10, 60),
                skew: rng.range(0, 8) as i64 - 4,
            },
            33..=38 => Step::Extend {
                c,
                k,
                ttl: ttl(rng),
            },
            39..=45 => Step::Release { c, k },
            46..=47 => Step::Info { c, k },
            48 => Step::TicketWithoutWait { c, k },
            49 => Step::AbsurdFence { c, k },
            50..=55 => Step::Sleep {
                ms: rng.range(1, 150),
            },
            56..=58 => Step::Pause {
                ms: rng.range(20, 250),
                all: rng.chance(30),
            },
            59 => Step::Unpause,
            60..=61 => Step::Failover,
            62 => Step::Promote,
            63 => Step::WritableReplica { k },
            64..=66 => Step::Unblock {
                c,
                error: rng.chance(50),
            },
            67..=68 => Step::Kill { c },
            69..=70 => Step::Disconnect { c },
            71..=73 => Step::Pexpire {
                k,
                ms: rng.range(1, 200),
            },
            74 => Step::Persist { k },
            75..=77 => Step::Evict {
                policy: match rng.below(3) {
                    0 => Policy::NoEviction,
                    1 => Policy::AllKeysLru,
                    _ => Policy::VolatileTtl,
                },
                c,
                k,
            },
            78..=79 => Step::SwapDb,
            80..=81 => Step::Move { k },
            82..=83 => Step::Rename {
                k,
                to: rng.below(KEYS),
            },
            84..=85 => Step::Copy {
                k,
                to: rng.below(KEYS),
            },
            86..=87 => Step::Dump { k },
            88..=89 => Step::Restore { k },
            90..=92 => Step::Del { k },
            93..=94 => Step::FlushAsync,
            95..=96 => Step::DebugReload,
            97..=99 => Step::Rewrite,
            _ => Step::Scene {
                scene: match rng.below(6) {
                    0 => Scene::Pexpire,
                    1 => Scene::Evict,
                    2 => Scene::SwapDb,
                    3 => Scene::Unblock {
                        error: rng.chance(50),
                    },
                    4 => Scene::Unblock { error: false },
                    _ => Scene::Pause {
                        all: rng.chance(30),
                    },
                },
                c,
                w: (c + 1 + rng.below(CLIENTS - 1)) % CLIENTS,
                k,
            },
        };
        let kind = step.kind();
        let wanted = |list: &[String]| list.iter().any(|s| s == kind);
        if !wanted(skip) && (only.is_empty() || wanted(only)) {
            steps.push(step);
        }
    }
    steps
}

// ---------------------------------------------------------------- model

/// A grant as the model knows it: only from replies a client received.
#[derive(Clone, Debug)]
struct Holder {
    token: String,
    fence: i64,
    /// The deadline is at least this (request sent + ttl).
    min_deadline: Instant,
    /// An operator may have ended it (native TTL, eviction, a restored copy):
    /// its disappearance is no violation.
    volatile: bool,
}

impl Holder {
    /// What `LOCK.INFO` shows as `owner` for it. A holder the model adopted
    /// from the server (granted to a client that left) carries the
    /// fingerprint in its name.
    fn fingerprint(&self) -> String {
        match self
            .token
            .strip_prefix("abandoned-")
            .or_else(|| self.token.strip_prefix("unknown-"))
        {
            Some(fp) => fp.to_string(),
            None => fingerprint(self.token.as_bytes()),
        }
    }
}

/// What became of one request that carried a token.
#[derive(Clone, Debug)]
struct TokenRec {
    client: usize,
    /// A grant reply (the fence) was received.
    granted: Option<i64>,
    /// The client left before its reply could be read: a grant in flight to
    /// it is not a phantom.
    abandoned: bool,
}

/// A client's `WAIT` whose reply is still to come.
#[derive(Clone, Debug)]
struct Pending {
    k: usize,
    token: String,
    ttl: u64,
    sent: Instant,
    /// 0: no timeout.
    wait: u64,
    node: usize,
    /// CLIENT UNBLOCK replied 1 at this time: one reply must follow soon.
    unblocked: Option<(Instant, bool)>,
    /// The lock was first seen free (on this waiter's node) at this time.
    free_since: Option<Instant>,
}

struct Client {
    conn: Option<RespConn>,
    node: usize,
    id: i64,
    /// The token this client uses for each key while it thinks it may hold it.
    tokens: [Option<String>; KEYS],
    pending: Option<Pending>,
}

#[derive(Default)]
struct Stats {
    steps: usize,
    requests: usize,
    grants: usize,
    handovers: usize,
    wait_timeouts: usize,
    skipped: usize,
}

/// A broken promise, with where it was found.
#[derive(Debug, Clone)]
struct Violation {
    check: &'static str,
    detail: String,
}

type Check<T = ()> = Result<T, Violation>;

fn fail<T>(check: &'static str, detail: impl Into<String>) -> Check<T> {
    Err(Violation {
        check,
        detail: detail.into(),
    })
}

struct Sim {
    flavor: Flavor,
    seed: u64,
    nodes: Vec<Server>,
    primary: usize,
    /// The operator's and checker's connection to each node.
    admin: Vec<RespConn>,
    clients: Vec<Client>,
    /// db -> key -> holder.
    dbs: [BTreeMap<usize, Holder>; 2],
    tokens: HashMap<String, TokenRec>,
    next_token: u64,
    /// Per node: new-grant fences as (fence, received at).
    fences: Vec<Vec<(i64, Instant)>>,
    /// Per node: every fence it grants is above this (raised at failover).
    floor: Vec<i64>,
    dump: Option<(Vec<u8>, Option<Holder>)>,
    /// While `maxmemory 1` was set: a grant made then (a hand-over runs on
    /// the server's own time) may be evicted at once.
    evictions: Vec<(Instant, Instant)>,
    /// No judgement on timing before this (a pause, a failover).
    quiet_until: Instant,
    keep_going: bool,
    found: Vec<Violation>,
    stats: Stats,
}

fn read_reply(r: Read1, what: &str) -> Check<Reply> {
    match r {
        Read1::Reply(reply) => Ok(reply),
        Read1::Nothing => fail(
            "every request gets a reply",
            format!("{what}: no reply within {REPLY_TIMEOUT:?}"),
        ),
        Read1::Closed(why) => fail(
            "every request gets a reply",
            format!("{what}: connection closed ({why})"),
        ),
    }
}

/// `(owner fingerprint, fence)` of a `LOCK.INFO` reply, `None` when free.
fn info_of(reply: &Reply) -> Check<Option<(String, i64)>> {
    match reply {
        Reply::Nil => Ok(None),
        Reply::Array(items) => {
            let mut owner = None;
            let mut fence = None;
            for kv in items.chunks(2) {
                if let [k, v] = kv {
                    match k.text().as_deref() {
                        Some("owner") => owner = v.text(),
                        Some("fence") => fence = v.as_int(),
                        _ => {}
                    }
                }
            }
            match (owner, fence) {
                (Some(o), Some(f)) => Ok(Some((o, f))),
                _ => fail("LOCK.INFO replies", format!("no owner/fence in {reply:?}")),
            }
        }
        other => fail("LOCK.INFO replies", format!("unexpected reply {other:?}")),
    }
}

fn info_int(text: &str, field: &str) -> Option<i64> {
    text.lines().find_map(|l| {
        l.strip_prefix(field)?
            .strip_prefix(':')?
            .trim()
            .parse()
            .ok()
    })
}

impl Sim {
    fn start(flavor: Flavor, seed: u64, keep_going: bool) -> Sim {
        let builder = |b: testkit::ServerBuilder| {
            b.appendonly(false)
                .arg("slowlog-log-slower-than", "-1")
                .arg("latency-tracking", "no")
        };
        let a = builder(Server::builder(flavor)).start();
        let b = builder(Server::builder(flavor).replica_of(&a)).start();
        b.wait_replica_synced(Duration::from_secs(10));
        let nodes = vec![a, b];
        let admin = nodes
            .iter()
            .map(|n| RespConn::connect(n.port()).expect("admin connection"))
            .collect();
        let clients = (0..CLIENTS)
            .map(|_| Client {
                conn: None,
                node: 0,
                id: 0,
                tokens: Default::default(),
                pending: None,
            })
            .collect();
        Sim {
            flavor,
            seed,
            nodes,
            primary: 0,
            admin,
            clients,
            dbs: Default::default(),
            tokens: HashMap::new(),
            next_token: 0,
            fences: vec![Vec::new(), Vec::new()],
            floor: vec![0, 0],
            dump: None,
            evictions: Vec::new(),
            quiet_until: Instant::now(),
            keep_going,
            found: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn replica(&self) -> usize {
        1 - self.primary
    }

    /// A violation: returned (stop) unless keep-going, where each kind of
    /// check is recorded once and the run goes on.
    fn report(&mut self, v: Violation) -> Check {
        if !self.keep_going {
            return Err(v);
        }
        if !self.found.iter().any(|f| f.check == v.check) {
            eprintln!(
                "hostile {} seed {}: VIOLATION at step {}: {}: {}",
                self.flavor,
                self.seed,
                self.stats.steps.saturating_sub(1),
                v.check,
                v.detail
            );
            self.found.push(v);
        }
        Ok(())
    }

    /// Run a command on a node's admin connection.
    fn admin<A: AsRef<[u8]>>(&mut self, node: usize, args: &[A]) -> Check<Reply> {
        let what = format!(
            "{} on node {node}",
            String::from_utf8_lossy(args.first().map_or(&[][..], |a| a.as_ref()))
        );
        let r = self.admin[node].call(args, REPLY_TIMEOUT);
        read_reply(r, &what).map_err(|v| self.down_or(v))
    }

    /// A lost connection is a crash when the process is gone.
    fn down_or(&self, v: Violation) -> Violation {
        std::thread::sleep(Duration::from_millis(50));
        match self.nodes.iter().position(|n| !n.is_running()) {
            Some(n) => Violation {
                check: "the server stays up",
                detail: format!("node {n} exited ({}: {})", v.check, v.detail),
            },
            None => v,
        }
    }

    fn admin_ok<A: AsRef<[u8]>>(&mut self, node: usize, args: &[A]) -> Check<Reply> {
        let reply = self.admin(node, args)?;
        if let Reply::Error(e) = &reply {
            let cmd: Vec<String> = args
                .iter()
                .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
                .collect();
            return fail("operator commands work", format!("{cmd:?}: {e}"));
        }
        Ok(reply)
    }

    fn info_text(&mut self, node: usize, section: &str) -> Check<String> {
        let reply = self.admin_ok(node, &["INFO", section])?;
        Ok(reply.text().unwrap_or_default())
    }

    fn new_token(&mut self, c: usize) -> String {
        self.next_token += 1;
        let token = format!("c{c}-t{}", self.next_token);
        self.tokens.insert(
            fingerprint(token.as_bytes()),
            TokenRec {
                client: c,
                granted: None,
                abandoned: false,
            },
        );
        token
    }

    /// The client's token for key `k`: the one it holds with, or a new one.
    fn token_for(&mut self, c: usize, k: usize) -> String {
        let held = self.dbs[0]
            .get(&k)
            .filter(|h| Some(&h.token) == self.clients[c].tokens[k].as_ref());
        match held {
            Some(h) => h.token.clone(),
            None => {
                let t = self.new_token(c);
                self.clients[c].tokens[k] = Some(t.clone());
                t
            }
        }
    }

    /// The client's connection to the primary, if it is free to send: a
    /// waiting client is busy. Checks nothing arrived that was not asked for.
    fn ready(&mut self, c: usize) -> Check<bool> {
        if self.clients[c].pending.is_some() {
            return Ok(false);
        }
        let primary = self.primary;
        let cl = &mut self.clients[c];
        if cl.node != primary {
            cl.conn = None;
        }
        if let Some(conn) = cl.conn.as_mut() {
            match conn.read(Duration::ZERO) {
                Read1::Nothing => return Ok(true),
                Read1::Closed(_) => cl.conn = None,
                Read1::Reply(r) => {
                    return fail(
                        "every request gets exactly one reply",
                        format!("c{c}: a reply nobody asked for: {r:?}"),
                    )
                }
            }
        }
        let port = self.nodes[primary].port();
        let mut conn = RespConn::connect(port).map_err(|e| Violation {
            check: "the server answers",
            detail: format!("connect to node {primary}: {e}"),
        })?;
        let id = conn.client_id().unwrap_or(-1);
        let cl = &mut self.clients[c];
        cl.conn = Some(conn);
        cl.node = primary;
        cl.id = id;
        Ok(true)
    }

    /// Send a command on client `c` and read its reply.
    fn request<A: AsRef<[u8]>>(&mut self, c: usize, args: &[A]) -> Check<(Reply, Instant)> {
        self.stats.requests += 1;
        let sent = Instant::now();
        let conn = self.clients[c].conn.as_mut().expect("ready() connected");
        let r = conn.call(args, REPLY_TIMEOUT);
        let what = format!(
            "c{c} {}",
            args.iter()
                .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        Ok((read_reply(r, &what).map_err(|v| self.down_or(v))?, sent))
    }

    fn counter(&mut self, node: usize) -> Check<i64> {
        let text = self.info_text(node, "lock")?;
        Ok(info_int(&text, "lock_fence_counter").unwrap_or(0))
    }

    /// An error reply to a lock write: fine only for these reasons.
    fn expected_error(&self, e: &str, what: &str, oom_ok: bool) -> Check {
        if e.starts_with("OOM") && oom_ok {
            return Ok(());
        }
        if e.starts_with("UNBLOCKED") {
            return Ok(());
        }
        fail("lock commands reply as documented", format!("{what}: {e}"))
    }

    /// A grant to `token` (client `c`) of key `k` in db 0, fence `fence`,
    /// its request sent at `sent`, read from `node`.
    #[allow(clippy::too_many_arguments)]
    fn granted(
        &mut self,
        c: usize,
        k: usize,
        token: &str,
        fence: i64,
        ttl: u64,
        sent: Instant,
        node: usize,
        floor: Option<i64>,
    ) -> Check {
        let now = Instant::now();
        self.stats.grants += 1;
        if node != self.primary {
            self.report(Violation {
                check: "no grants on a replica",
                detail: format!(
                    "c{c} was granted {} (fence {fence}) by node {node}, a replica",
                    key(k)
                ),
            })?;
        }
        let fp = fingerprint(token.as_bytes());
        if let Some(rec) = self.tokens.get_mut(&fp) {
            rec.granted = Some(fence);
        }
        let min_deadline = sent + Duration::from_millis(ttl);
        match self.dbs[0].get(&k).cloned() {
            Some(h)
                if h.token == token
                    && (fence == h.fence || (floor.is_some() && fence > h.fence)) =>
            {
                // A refresh: the same grant, its fence raised only by FENCE.
                let h = Holder {
                    fence,
                    min_deadline,
                    ..h
                };
                self.dbs[0].insert(k, h);
                return Ok(());
            }
            Some(h) if h.token == token && !h.volatile && h.min_deadline > now + DEADLINE_SLACK => {
                self.report(Violation {
                    check: "a refresh keeps its fencing token",
                    detail: format!("{} by {token}: fence {} became {fence}", key(k), h.fence),
                })?;
            }
            Some(h) if !h.volatile && h.min_deadline > now + DEADLINE_SLACK => {
                self.report(Violation {
                    check: "no two tokens hold a key at once",
                    detail: format!(
                        "{} granted to {token} (fence {fence}) while {} (fence {}) holds it for another {:?}",
                        key(k),
                        h.token,
                        h.fence,
                        h.min_deadline - now
                    ),
                })?;
            }
            _ => {}
        }
        // A new grant: above every fence this node handed out before the
        // request was sent, above its floor, and above the FENCE floor.
        let before = self.fences[node]
            .iter()
            .filter(|(_, at)| *at < sent)
            .map(|(f, _)| *f)
            .max()
            .unwrap_or(0)
            .max(self.floor[node]);
        if fence <= before || self.fences[node].iter().any(|(f, _)| *f == fence) {
            self.report(Violation {
                check: "fencing tokens strictly increase on a node",
                detail: format!(
                    "node {node} granted {} to {token} with fence {fence}, not above {before} handed out (or the floor) earlier",
                    key(k)
                ),
            })?;
        }
        if let Some(floor) = floor {
            if fence < floor {
                self.report(Violation {
                    check: "FENCE raises the grant",
                    detail: format!("fence {fence} below FENCE {floor}"),
                })?;
            }
        }
        self.fences[node].push((fence, now));
        self.clients[c].tokens[k] = Some(token.to_string());
        let evictable = self
            .evictions
            .iter()
            .any(|(from, to)| *from <= now && sent <= *to);
        self.dbs[0].insert(
            k,
            Holder {
                token: token.to_string(),
                fence,
                min_deadline,
                volatile: evictable,
            },
        );
        Ok(())
    }

    /// The holder of `k` in db 0 let go: per the model it holds nothing.
    fn ended(&mut self, k: usize) {
        self.dbs[0].remove(&k);
    }

    /// Read whatever waiters have been answered, without blocking.
    fn drain(&mut self) -> Check {
        self.drain_for(Duration::ZERO)
    }

    fn drain_for(&mut self, wait: Duration) -> Check {
        for c in 0..CLIENTS {
            if self.clients[c].pending.is_none() {
                continue;
            }
            let r = match self.clients[c].conn.as_mut() {
                Some(conn) => conn.read(wait),
                None => Read1::Closed("dropped".into()),
            };
            self.waiter_read(c, r)?;
        }
        Ok(())
    }

    /// A waiter's reply (or its absence) arrived.
    fn waiter_read(&mut self, c: usize, r: Read1) -> Check {
        let Some(p) = self.clients[c].pending.clone() else {
            return Ok(());
        };
        match r {
            Read1::Nothing => Ok(()),
            Read1::Closed(_) => {
                // Killed or dropped, or demoted with its waiters: no reply.
                self.abandon(c);
                Ok(())
            }
            Read1::Reply(reply) => {
                self.clients[c].pending = None;
                let now = Instant::now();
                match reply {
                    Reply::Int(fence) => {
                        self.stats.handovers += 1;
                        self.granted(c, p.k, &p.token, fence, p.ttl, p.sent, p.node, None)
                    }
                    Reply::Nil => {
                        self.stats.wait_timeouts += 1;
                        let early = p.wait > 0
                            && now < p.sent + Duration::from_millis(p.wait)
                            && p.unblocked.is_none();
                        // A WAIT 0 ends only by CLIENT UNBLOCK (or a hold
                        // limit, not used here).
                        let forever = p.wait == 0 && p.unblocked.is_none();
                        if early || forever {
                            self.report(Violation {
                                check: "a waiter is answered nil only at its timeout",
                                detail: format!(
                                    "c{c} WAIT {} on {} answered nil after {:?}",
                                    p.wait,
                                    key(p.k),
                                    now - p.sent
                                ),
                            })?;
                        }
                        Ok(())
                    }
                    Reply::Error(e) => self.expected_error(&e, &format!("c{c} WAIT"), true),
                    other => fail(
                        "lock commands reply as documented",
                        format!("c{c} WAIT: {other:?}"),
                    ),
                }
            }
        }
    }

    fn abandon(&mut self, c: usize) {
        if let Some(p) = self.clients[c].pending.take() {
            if let Some(rec) = self.tokens.get_mut(&fingerprint(p.token.as_bytes())) {
                rec.abandoned = true;
            }
        }
        self.clients[c].conn = None;
    }

    // ------------------------------------------------------------ steps

    fn step(&mut self, step: &Step) -> Check {
        self.stats.steps += 1;
        self.drain()?;
        match *step {
            Step::Acquire {
                c,
                k,
                ttl,
                fence_delta,
            } => {
                if !self.ready(c)? {
                    self.stats.skipped += 1;
                    return Ok(());
                }
                let token = self.token_for(c, k);
                let mut args = vec![
                    "LOCK.ACQUIRE".to_string(),
                    key(k),
                    token.clone(),
                    ttl.to_string(),
                ];
                let mut floor = None;
                if let Some(d) = fence_delta {
                    let f = self.counter(self.primary)? + d as i64;
                    floor = Some(f);
                    args.extend(["FENCE".to_string(), f.to_string()]);
                }
                self.acquire(c, k, &token, ttl, &args, floor, false)
            }
            Step::Wait {
                c,
                k,
                ttl,
                wait,
                ticket,
            } => self.wait(c, k, ttl, wait, ticket),
            Step::Race { c, w, k, ttl, skew } => {
                if !self.ready(c)? || !self.ready(w)? {
                    self.stats.skipped += 1;
                    return Ok(());
                }
                let token = self.token_for(c, k);
                let args = [
                    "LOCK.ACQUIRE".to_string(),
                    key(k),
                    token.clone(),
                    ttl.to_string(),
                ];
                self.acquire(c, k, &token, ttl, &args, None, false)?;
                let wait = (ttl as i64 + skew).max(1) as u64;
                self.wait(w, k, 200, wait, false)?;
                let until = Instant::now() + Duration::from_millis(ttl + 20);
                while Instant::now() < until {
                    self.drain_for(Duration::from_millis(2))?;
                }
                Ok(())
            }
            Step::Extend { c, k, ttl } => {
                if !self.ready(c)? {
                    self.stats.skipped += 1;
                    return Ok(());
                }
                let token = self.token_for(c, k);
                let (reply, sent) =
                    self.request(c, &["LOCK.EXTEND", &key(k), &token, &ttl.to_string()])?;
                let now = Instant::now();
                match reply {
                    Reply::Int(1) => match self.dbs[0].get_mut(&k) {
                        Some(h) if h.token == token => {
                            h.min_deadline = sent + Duration::from_millis(ttl);
                            Ok(())
                        }
                        _ => self.report(Violation {
                            check: "a lock held by a token was granted to it",
                            detail: format!(
                                "c{c} extended {} with {token}, which holds no grant of it",
                                key(k)
                            ),
                        }),
                    },
                    // 0: not held; -1: held, but the hold limit is reached
                    // (no MAXHOLD here, so only a lock that is gone).
                    Reply::Int(0 | -1) => {
                        if let Some(h) = self.dbs[0].get(&k).cloned() {
                            if h.token == token {
                                if !h.volatile && h.min_deadline > now + DEADLINE_SLACK {
                                    self.report(Violation {
                                        check: "a lock is not lost before its deadline",
                                        detail: format!(
                                            "c{c} could not extend {} ({:?} before its deadline)",
                                            key(k),
                                            h.min_deadline - now
                                        ),
                                    })?;
                                }
                                self.ended(k);
                            }
                        }
                        Ok(())
                    }
                    Reply::Error(e) => self.expected_error(&e, "LOCK.EXTEND", true),
                    other => fail(
                        "lock commands reply as documented",
                        format!("LOCK.EXTEND: {other:?}"),
                    ),
                }
            }
            Step::Release { c, k } => {
                if !self.ready(c)? {
                    self.stats.skipped += 1;
                    return Ok(());
                }
                let token = self.token_for(c, k);
                let (reply, _) = self.request(c, &["LOCK.RELEASE", &key(k), &token])?;
                let now = Instant::now();
                let held = self.dbs[0].get(&k).filter(|h| h.token == token).cloned();
                match (reply, held) {
                    (Reply::Int(1), Some(_)) => {
                        self.ended(k);
                        Ok(())
                    }
                    (Reply::Int(1), None) => self.report(Violation {
                        check: "a lock held by a token was granted to it",
                        detail: format!("c{c} released {} with {token}, never granted it", key(k)),
                    }),
                    (Reply::Int(0), Some(h)) => {
                        if !h.volatile && h.min_deadline > now + DEADLINE_SLACK {
                            self.report(Violation {
                                check: "a lock is not lost before its deadline",
                                detail: format!(
                                    "c{c} could not release {} ({:?} before its deadline)",
                                    key(k),
                                    h.min_deadline - now
                                ),
                            })?;
                        }
                        self.ended(k);
                        Ok(())
                    }
                    (Reply::Int(0), None) => Ok(()),
                    (Reply::Error(e), _) => self.expected_error(&e, "LOCK.RELEASE", false),
                    (other, _) => fail(
                        "lock commands reply as documented",
                        format!("LOCK.RELEASE: {other:?}"),
                    ),
                }
            }
            Step::Info { c, k } => {
                if !self.ready(c)? {
                    self.stats.skipped += 1;
                    return Ok(());
                }
                let (reply, _) = self.request(c, &["LOCK.INFO", &key(k)])?;
                info_of(&reply).map(|_| ())
            }
            Step::TicketWithoutWait { c, k } => {
                if !self.ready(c)? {
                    self.stats.skipped += 1;
                    return Ok(());
                }
                let token = self.token_for(c, k);
                let args = [
                    "LOCK.ACQUIRE".to_string(),
                    key(k),
                    token.clone(),
                    "200".into(),
                    "TICKET".into(),
                    "5".into(),
                ];
                self.acquire(c, k, &token, 200, &args, None, true)
            }
            Step::AbsurdFence { c, k } => {
                if !self.ready(c)? {
                    self.stats.skipped += 1;
                    return Ok(());
                }
                let token = self.token_for(c, k);
                let args = [
                    "LOCK.ACQUIRE".to_string(),
                    key(k),
                    token.clone(),
                    "200".into(),
                    "FENCE".into(),
                    ABSURD_FENCE.into(),
                ];
                self.acquire(c, k, &token, 200, &args, Some(i64::MAX), true)?;
                // Grants still work: a fresh key, a fresh token. (Fatal even
                // when going on: without grants the rest would be noise.)
                let probe = self.new_token(c);
                let (reply, _) =
                    self.request(c, &["LOCK.ACQUIRE", "hostile:probe", &probe, "50"])?;
                if reply.as_int().is_none() {
                    return fail(
                        "grants work after an absurd FENCE",
                        format!("LOCK.ACQUIRE of a free key replied {reply:?}"),
                    );
                }
                let _ = self.request(c, &["LOCK.RELEASE", "hostile:probe", &probe])?;
                Ok(())
            }
            Step::Sleep { ms } => {
                let until = Instant::now() + Duration::from_millis(ms);
                while Instant::now() < until {
                    self.drain_for(Duration::from_millis(5))?;
                }
                Ok(())
            }
            Step::Pause { ms, all } => {
                let p = self.primary;
                self.admin_ok(
                    p,
                    &[
                        "CLIENT",
                        "PAUSE",
                        &ms.to_string(),
                        if all { "ALL" } else { "WRITE" },
                    ],
                )?;
                self.quiet(Duration::from_millis(ms));
                Ok(())
            }
            Step::Unpause => {
                let p = self.primary;
                self.admin_ok(p, &["CLIENT", "UNPAUSE"])?;
                Ok(())
            }
            Step::Failover => self.failover(false),
            Step::Promote => self.failover(true),
            Step::WritableReplica { k } => self.writable_replica(k),
            Step::Unblock { c, error } => self.unblock(c, error),
            Step::Kill { c } => {
                let Some(conn) = self.clients[c].conn.as_ref() else {
                    return Ok(());
                };
                let _ = conn;
                let (node, id) = (self.clients[c].node, self.clients[c].id);
                self.admin(node, &["CLIENT", "KILL", "ID", &id.to_string()])?;
                // A reply already on its way is read; then the socket closes.
                let r = self.clients[c]
                    .conn
                    .as_mut()
                    .map_or(Read1::Closed("dropped".into()), |conn| {
                        conn.read(Duration::from_millis(50))
                    });
                self.waiter_read(c, r)?;
                self.abandon(c);
                Ok(())
            }
            Step::Disconnect { c } => {
                let r = self.clients[c]
                    .conn
                    .as_mut()
                    .map_or(Read1::Nothing, |conn| conn.read(Duration::ZERO));
                self.waiter_read(c, r)?;
                self.abandon(c);
                Ok(())
            }
            Step::Pexpire { k, ms } => {
                let p = self.primary;
                let r = self.admin_ok(p, &["PEXPIRE", &key(k), &ms.to_string()])?;
                if r == Reply::Int(1) {
                    self.volatile(0, k);
                }
                Ok(())
            }
            Step::Persist { k } => {
                let p = self.primary;
                self.admin_ok(p, &["PERSIST", &key(k)])?;
                Ok(())
            }
            Step::Evict { policy, c, k } => self.evict(policy, c, k),
            Step::SwapDb => {
                let p = self.primary;
                self.admin_ok(p, &["SWAPDB", "0", "1"])?;
                self.dbs.swap(0, 1);
                // Clients' tokens refer to db 0: whatever they held moved away.
                for cl in &mut self.clients {
                    cl.tokens = Default::default();
                }
                Ok(())
            }
            Step::Move { k } => {
                let p = self.primary;
                let r = self.admin_ok(p, &["MOVE", &key(k), "1"])?;
                if r == Reply::Int(1) {
                    match self.dbs[0].remove(&k) {
                        Some(h) => {
                            self.dbs[1].insert(k, h);
                        }
                        None => {
                            self.dbs[1].remove(&k);
                        }
                    }
                }
                Ok(())
            }
            Step::Rename { k, to } => {
                let p = self.primary;
                let r = self.admin(p, &["RENAME", &key(k), &key(to)])?;
                if matches!(r, Reply::Simple(_)) && k != to {
                    match self.dbs[0].remove(&k) {
                        Some(h) => {
                            self.dbs[0].insert(
                                to,
                                Holder {
                                    volatile: true,
                                    ..h
                                },
                            );
                        }
                        None => {
                            self.dbs[0].remove(&to);
                        }
                    }
                }
                Ok(())
            }
            Step::Copy { k, to } => {
                let p = self.primary;
                let r = self.admin(p, &["COPY", &key(k), &key(to), "REPLACE"])?;
                if r == Reply::Int(1) && k != to {
                    match self.dbs[0].get(&k).cloned() {
                        Some(h) => {
                            self.volatile(0, k);
                            self.dbs[0].insert(
                                to,
                                Holder {
                                    volatile: true,
                                    ..h
                                },
                            );
                        }
                        None => {
                            self.dbs[0].remove(&to);
                        }
                    }
                }
                Ok(())
            }
            Step::Dump { k } => {
                let p = self.primary;
                if let Reply::Bulk(payload) = self.admin_ok(p, &["DUMP", &key(k)])? {
                    self.dump = Some((payload, self.dbs[0].get(&k).cloned()));
                }
                Ok(())
            }
            Step::Restore { k } => {
                let Some((payload, holder)) = self.dump.clone() else {
                    return Ok(());
                };
                let p = self.primary;
                let mut args: Vec<Vec<u8>> = vec![
                    b"RESTORE".to_vec(),
                    key(k).into_bytes(),
                    b"0".to_vec(),
                    payload,
                ];
                args.push(b"REPLACE".to_vec());
                self.admin_ok(p, &args)?;
                match holder {
                    Some(h) => {
                        self.dbs[0].insert(
                            k,
                            Holder {
                                volatile: true,
                                ..h
                            },
                        );
                    }
                    None => {
                        self.dbs[0].remove(&k);
                    }
                }
                Ok(())
            }
            Step::Del { k } => {
                let p = self.primary;
                self.admin_ok(p, &["DEL", &key(k)])?;
                self.dbs[0].remove(&k);
                Ok(())
            }
            Step::FlushAsync => {
                let p = self.primary;
                self.admin_ok(p, &["FLUSHDB", "ASYNC"])?;
                self.dbs[0].clear();
                Ok(())
            }
            Step::DebugReload => {
                let p = self.primary;
                self.admin_ok(p, &["DEBUG", "RELOAD"])?;
                Ok(())
            }
            Step::Scene { scene, c, w, k } => self.scene(scene, c, w, k),
            Step::Rewrite => {
                let p = self.primary;
                let r = self.admin(p, &["BGREWRITEAOF"])?;
                match r {
                    Reply::Error(e) if !e.contains("already in progress") => {
                        fail("operator commands work", format!("BGREWRITEAOF: {e}"))
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    fn scene(&mut self, scene: Scene, c: usize, w: usize, k: usize) -> Check {
        if !self.ready(c)? || !self.ready(w)? {
            self.stats.skipped += 1;
            return Ok(());
        }
        let ttl = if matches!(scene, Scene::Pause { .. }) {
            30
        } else {
            700
        };
        let token = self.token_for(c, k);
        let args = [
            "LOCK.ACQUIRE".to_string(),
            key(k),
            token.clone(),
            ttl.to_string(),
        ];
        self.acquire(c, k, &token, ttl, &args, None, false)?;
        if self.dbs[0].get(&k).is_none_or(|h| h.token != token) {
            return Ok(()); // not granted: nothing to play
        }
        let p = self.primary;
        match scene {
            Scene::Pexpire => {
                self.wait(w, k, 300, 3000, false)?;
                self.admin_ok(p, &["PEXPIRE", &key(k), "5"])?;
                self.volatile(0, k);
                self.served(w, k)
            }
            Scene::Evict => {
                self.wait(w, k, 300, 3000, false)?;
                self.admin_ok(p, &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"])?;
                let from = Instant::now();
                self.admin_ok(p, &["CONFIG", "SET", "maxmemory", "1"])?;
                for db in 0..2 {
                    for k in 0..KEYS {
                        self.volatile(db, k);
                    }
                }
                self.admin(p, &["PING"])?;
                self.admin_ok(p, &["CONFIG", "SET", "maxmemory", "0"])?;
                self.evictions.push((from, Instant::now()));
                self.admin_ok(p, &["CONFIG", "SET", "maxmemory-policy", "noeviction"])?;
                self.served(w, k)
            }
            Scene::SwapDb => {
                self.wait(w, k, 300, 3000, false)?;
                self.step(&Step::SwapDb)?;
                self.served(w, k)
            }
            Scene::Unblock { error } => {
                self.wait(w, k, 300, 0, false)?;
                self.unblock(w, error)?;
                self.step(&Step::Release { c, k })?;
                self.drain_for(Duration::from_millis(20))
            }
            Scene::Pause { all } => {
                self.wait(w, k, 300, 1000, false)?;
                let mode = if all { "ALL" } else { "WRITE" };
                self.admin_ok(p, &["CLIENT", "PAUSE", "150", mode])?;
                self.quiet(Duration::from_millis(150));
                self.step(&Step::Sleep { ms: 200 })
            }
        }
    }

    /// After the lock `k` of db 0 went away under waiter `w`: it is served
    /// (or answered) within a bound, unless the key is back.
    fn served(&mut self, w: usize, k: usize) -> Check {
        let until = Instant::now() + Duration::from_millis(500);
        while self.clients[w].pending.is_some() && Instant::now() < until {
            self.drain_for(Duration::from_millis(5))?;
        }
        if self.clients[w].pending.is_none() {
            return Ok(());
        }
        let p = self.primary;
        if self.admin_ok(p, &["EXISTS", &key(k)])? == Reply::Int(0) {
            self.report(Violation {
                check: "a waiter is served once its lock is gone",
                detail: format!("c{w} still waits on {} 500 ms after it was removed", key(k)),
            })?;
            self.abandon(w);
        }
        Ok(())
    }

    fn quiet(&mut self, d: Duration) {
        self.quiet_until = self.quiet_until.max(Instant::now() + d + SLACK);
    }

    fn volatile(&mut self, db: usize, k: usize) {
        if let Some(h) = self.dbs[db].get_mut(&k) {
            h.volatile = true;
        }
    }

    /// `LOCK.ACQUIRE` without `WAIT`; `must_fail`: the arguments are refused.
    #[allow(clippy::too_many_arguments)]
    fn acquire(
        &mut self,
        c: usize,
        k: usize,
        token: &str,
        ttl: u64,
        args: &[String],
        floor: Option<i64>,
        must_fail: bool,
    ) -> Check {
        let node = self.clients[c].node;
        let (reply, sent) = self.request(c, args)?;
        // Hand-overs before this grant are read first, in order.
        self.drain()?;
        match reply {
            Reply::Int(fence) => {
                if must_fail {
                    self.report(Violation {
                        check: "invalid LOCK.ACQUIRE options are refused",
                        detail: format!("{} replied {fence}", args.join(" ")),
                    })?;
                }
                self.granted(c, k, token, fence, ttl, sent, node, floor)
            }
            Reply::Nil => {
                if must_fail {
                    self.report(Violation {
                        check: "invalid LOCK.ACQUIRE options are refused",
                        detail: format!("{} replied nil", args.join(" ")),
                    })?;
                }
                let now = Instant::now();
                if let Some(h) = self.dbs[0].get(&k).cloned() {
                    if h.token == token {
                        if !h.volatile && h.min_deadline > now + DEADLINE_SLACK {
                            self.report(Violation {
                                check: "a lock is not lost before its deadline",
                                detail: format!(
                                    "c{c}'s refresh of {} refused {:?} before its deadline",
                                    key(k),
                                    h.min_deadline - now
                                ),
                            })?;
                        }
                        self.ended(k);
                    }
                }
                Ok(())
            }
            Reply::Error(e) if must_fail => {
                if e.contains("internal error") {
                    return fail("no panic in the module", e);
                }
                Ok(())
            }
            Reply::Error(e) => self.expected_error(&e, &args.join(" "), true),
            other => fail(
                "lock commands reply as documented",
                format!("LOCK.ACQUIRE: {other:?}"),
            ),
        }
    }

    fn wait(&mut self, c: usize, k: usize, ttl: u64, wait: u64, ticket: bool) -> Check {
        if !self.ready(c)? {
            self.stats.skipped += 1;
            return Ok(());
        }
        let token = self.token_for(c, k);
        let mut args = vec![
            "LOCK.ACQUIRE".to_string(),
            key(k),
            token.clone(),
            ttl.to_string(),
            "WAIT".into(),
            wait.to_string(),
        ];
        if ticket {
            let micros = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            args.extend(["TICKET".into(), micros.to_string()]);
        }
        self.stats.requests += 1;
        let node = self.clients[c].node;
        let sent = Instant::now();
        let conn = self.clients[c].conn.as_mut().expect("ready() connected");
        if let Err(e) = conn.send(&args) {
            return fail("the server answers", format!("c{c} send: {e}"));
        }
        self.clients[c].pending = Some(Pending {
            k,
            token,
            ttl,
            sent,
            wait,
            node,
            unblocked: None,
            free_since: None,
        });
        // A free lock is granted at once.
        let r = self.clients[c]
            .conn
            .as_mut()
            .map_or(Read1::Nothing, |conn| conn.read(Duration::from_millis(3)));
        self.waiter_read(c, r)
    }

    fn unblock(&mut self, c: usize, error: bool) -> Check {
        if self.clients[c].conn.is_none() {
            return Ok(());
        }
        let (node, id) = (self.clients[c].node, self.clients[c].id);
        let mut args = vec!["CLIENT".to_string(), "UNBLOCK".into(), id.to_string()];
        if error {
            args.push("ERROR".into());
        }
        let r = self.admin(node, &args)?;
        let now = Instant::now();
        match (r, self.clients[c].pending.as_mut()) {
            (Reply::Int(1), Some(p)) => {
                p.unblocked = Some((now, error));
                // Exactly one reply, soon: nil, or UNBLOCKED for ERROR.
                let r = self.clients[c]
                    .conn
                    .as_mut()
                    .map_or(Read1::Nothing, |conn| conn.read(SLACK));
                let ok = match &r {
                    Read1::Reply(Reply::Nil) => true,
                    Read1::Reply(Reply::Int(_)) => true, // granted just before
                    Read1::Reply(Reply::Error(e)) => e.starts_with("UNBLOCKED") && error,
                    _ => false,
                };
                if !ok {
                    self.report(Violation {
                        check: "CLIENT UNBLOCK of a waiter: one reply, or it keeps waiting",
                        detail: format!(
                            "CLIENT UNBLOCK {}replied 1, then the waiter got {r:?}",
                            if error { "ERROR " } else { "" }
                        ),
                    })?;
                    if matches!(r, Read1::Nothing) {
                        return Ok(());
                    }
                }
                self.waiter_read(c, r)?;
                // And nothing more.
                let extra = self.clients[c]
                    .conn
                    .as_mut()
                    .map_or(Read1::Nothing, |conn| conn.read(Duration::from_millis(20)));
                if let Read1::Reply(r) = extra {
                    self.report(Violation {
                        check: "every waiter is answered exactly once",
                        detail: format!("c{c} after CLIENT UNBLOCK: a second reply {r:?}"),
                    })?;
                }
                Ok(())
            }
            (Reply::Int(1), None) => Ok(()),
            (Reply::Int(0), _) => Ok(()), // keeps waiting (or was not blocked)
            (other, _) => fail(
                "operator commands work",
                format!("CLIENT UNBLOCK: {other:?}"),
            ),
        }
    }

    fn evict(&mut self, policy: Policy, c: usize, k: usize) -> Check {
        let p = self.primary;
        self.admin_ok(p, &["CONFIG", "SET", "maxmemory-policy", policy.name()])?;
        let from = Instant::now();
        self.admin_ok(p, &["CONFIG", "SET", "maxmemory", "1"])?;
        for db in 0..2 {
            for k in 0..KEYS {
                self.volatile(db, k);
            }
        }
        let r = if self.ready(c)? {
            let token = self.token_for(c, k);
            let args = [
                "LOCK.ACQUIRE".to_string(),
                key(k),
                token.clone(),
                "300".into(),
            ];
            self.acquire(c, k, &token, 300, &args, None, false)
        } else {
            Ok(())
        };
        self.admin_ok(p, &["CONFIG", "SET", "maxmemory", "0"])?;
        self.evictions.push((from, Instant::now()));
        // Grants already read whose reply came in the window.
        for db in 0..2 {
            for k in 0..KEYS {
                self.volatile(db, k);
            }
        }
        self.admin_ok(p, &["CONFIG", "SET", "maxmemory-policy", "noeviction"])?;
        r
    }

    fn role(&mut self, node: usize) -> Check<String> {
        let text = self.info_text(node, "replication")?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("role:"))
            .unwrap_or("?")
            .trim()
            .to_string())
    }

    /// Switch primary and replica: with `FAILOVER`, or (`promote`) with
    /// `REPLICAOF NO ONE` on the replica after `WAIT`, then the old primary
    /// made its replica.
    fn failover(&mut self, promote: bool) -> Check {
        let (old, new) = (self.primary, self.replica());
        // Every grant received so far is on the replica once this returns.
        let floor = self
            .fences
            .iter()
            .flatten()
            .map(|(f, _)| *f)
            .max()
            .unwrap_or(0);
        self.admin(old, &["CLIENT", "UNPAUSE"])?;
        let acked = self.admin(old, &["WAIT", "1", "2000"])?;
        if acked != Reply::Int(1) {
            return fail(
                "operator commands work",
                format!("WAIT 1 2000 before failover replied {acked:?}"),
            );
        }
        if promote {
            self.admin_ok(new, &["REPLICAOF", "NO", "ONE"])?;
            let port = self.nodes[new].port().to_string();
            self.admin_ok(old, &["REPLICAOF", "127.0.0.1", &port])?;
        } else {
            let r = self.admin(old, &["FAILOVER", "TIMEOUT", "5000"])?;
            if let Reply::Error(e) = r {
                return fail("operator commands work", format!("FAILOVER: {e}"));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = self.role(new)? == "master" && self.role(old)? == "slave";
            if up {
                break;
            }
            for n in [old, new] {
                if !self.nodes[n].is_running() {
                    return fail(
                        "the server stays up",
                        format!("node {n} exited during the failover"),
                    );
                }
            }
            if Instant::now() > deadline {
                return fail(
                    "operator commands work",
                    "roles did not switch within 10 s".to_string(),
                );
            }
            self.drain_for(Duration::from_millis(10))?;
        }
        self.nodes[old].wait_replica_synced(Duration::from_secs(10));
        self.primary = new;
        self.floor[new] = self.floor[new].max(floor);
        self.quiet(Duration::from_millis(200));
        // The demoted node's waiters: answered (UNBLOCKED), closed, or still
        // waiting; none may be granted there.
        self.drain_for(Duration::from_millis(50))?;
        // A full sync replaced the old primary's data; the model follows the
        // new primary, which had every grant.
        Ok(())
    }

    fn writable_replica(&mut self, k: usize) -> Check {
        let r = self.replica();
        self.admin_ok(r, &["CONFIG", "SET", "replica-read-only", "no"])?;
        let mut conn = RespConn::connect(self.nodes[r].port()).map_err(|e| Violation {
            check: "the server answers",
            detail: format!("connect to the replica: {e}"),
        })?;
        let token = format!("replica-writer-{}", self.next_token);
        let cmds: [Vec<String>; 3] = [
            vec!["LOCK.ACQUIRE".into(), key(k), token.clone(), "100".into()],
            vec!["LOCK.EXTEND".into(), key(k), token.clone(), "100".into()],
            vec!["LOCK.RELEASE".into(), key(k), token.clone()],
        ];
        let mut result = Ok(());
        for cmd in &cmds {
            self.stats.requests += 1;
            let reply = read_reply(conn.call(cmd, REPLY_TIMEOUT), &cmd[0])?;
            if !reply.is_error_starting("READONLY") && result.is_ok() {
                result = self.report(Violation {
                    check: "lock writes are refused on a replica",
                    detail: format!("{} on a writable replica replied {reply:?}", cmd.join(" ")),
                });
            }
        }
        if result.is_err() || !self.found.is_empty() {
            // It took a lock its primary knows nothing of (and a replica
            // never removes by itself): remove it, to go on.
            self.admin(r, &["DEL", &key(k)])?;
        }
        self.admin_ok(r, &["CONFIG", "SET", "replica-read-only", "yes"])?;
        result
    }

    // ------------------------------------------------------------ checks

    /// After every step.
    fn check(&mut self) -> Check {
        for n in 0..self.nodes.len() {
            if !self.nodes[n].is_running() {
                return fail("the server stays up", format!("node {n} exited"));
            }
            let r = self.admin[n].call(&["PING"], REPLY_TIMEOUT);
            match r {
                Read1::Reply(Reply::Simple(s)) if s == "PONG" => {}
                other => return fail("the server stays up", format!("node {n}: PING: {other:?}")),
            }
        }
        for n in 0..self.nodes.len() {
            let log = self.nodes[n].log();
            if let Some(line) = log
                .lines()
                .find(|l| l.contains("is sending an error to its"))
            {
                return fail(
                    "a replica applies its primary's stream",
                    format!("node {n}: {}", line.trim()),
                );
            }
        }
        self.drain()?;
        let now = Instant::now();
        let quiet = now < self.quiet_until;
        // Waiters answered in time.
        for c in 0..CLIENTS {
            let Some(p) = self.clients[c].pending.clone() else {
                continue;
            };
            if quiet {
                continue;
            }
            let late = |since: Instant, d: Duration| now > since + d + SLACK;
            if p.wait > 0 && late(p.sent, Duration::from_millis(p.wait)) {
                self.report(Violation {
                    check: "every waiter is answered exactly once",
                    detail: format!(
                        "c{c} WAIT {} on {} unanswered after {:?}",
                        p.wait,
                        key(p.k),
                        now - p.sent
                    ),
                })?;
                self.abandon(c);
                continue;
            }
            if let Some(since) = p.free_since {
                if late(since, Duration::ZERO) && p.node == self.primary {
                    self.report(Violation {
                        check: "a waiter is served once its lock is gone",
                        detail: format!(
                            "c{c} still waits on {}, free for {:?}",
                            key(p.k),
                            now - since
                        ),
                    })?;
                    self.abandon(c);
                }
            }
        }
        // Every lock shown is held by a token granted it.
        let p = self.primary;
        for db in 0..2 {
            self.admin_ok(p, &["SELECT", &db.to_string()])?;
            for k in 0..KEYS {
                let reply = self.admin(p, &["LOCK.INFO", &key(k)])?;
                let shown = match info_of(&reply) {
                    Ok(s) => s,
                    Err(v) => {
                        self.admin_ok(p, &["SELECT", "0"])?;
                        return Err(v);
                    }
                };
                self.check_holder(db, k, shown)?;
            }
        }
        self.admin_ok(p, &["SELECT", "0"])?;
        // The counter covers every fence handed out.
        let counter = self.counter(p)?;
        let highest = self.fences[p].iter().map(|(f, _)| *f).max().unwrap_or(0);
        if counter < highest {
            self.report(Violation {
                check: "lock_fence_counter covers every fence handed out",
                detail: format!("node {p}: counter {counter} < fence {highest}"),
            })?;
        }
        Ok(())
    }

    fn check_holder(&mut self, db: usize, k: usize, shown: Option<(String, i64)>) -> Check {
        let now = Instant::now();
        let model = self.dbs[db].get(&k).cloned();
        match shown {
            None => {
                if let Some(h) = model {
                    if !h.volatile && h.min_deadline > now + DEADLINE_SLACK && db == 0 {
                        self.report(Violation {
                            check: "a lock is not lost before its deadline",
                            detail: format!(
                                "db {db} {} of {} gone {:?} before its deadline",
                                key(k),
                                h.token,
                                h.min_deadline - now
                            ),
                        })?;
                    }
                    self.dbs[db].remove(&k);
                }
                if db == 0 {
                    for cl in &mut self.clients {
                        if let Some(p) = cl.pending.as_mut() {
                            if p.k == k && p.free_since.is_none() {
                                p.free_since = Some(now);
                            }
                        }
                    }
                }
                Ok(())
            }
            Some((owner, fence)) => {
                if db == 0 {
                    for cl in &mut self.clients {
                        if let Some(p) = cl.pending.as_mut() {
                            if p.k == k {
                                p.free_since = None;
                            }
                        }
                    }
                }
                if model
                    .as_ref()
                    .is_some_and(|h| h.fingerprint() == owner && h.fence == fence)
                {
                    return Ok(());
                }
                // Perhaps a grant still on its way to a waiter: read it.
                self.drain_for(Duration::from_millis(30))?;
                let model = self.dbs[db].get(&k).cloned();
                if model
                    .as_ref()
                    .is_some_and(|h| h.fingerprint() == owner && h.fence == fence)
                {
                    return Ok(());
                }
                let rec = self.tokens.get(&owner).cloned();
                let v = match rec {
                    Some(rec) if rec.abandoned && rec.granted.is_none() => {
                        // Granted to a client that left: nobody holds it
                        // knowingly, but nobody was told it either.
                        self.dbs[db].insert(
                            k,
                            Holder {
                                token: format!("abandoned-{owner}"),
                                fence,
                                min_deadline: now,
                                volatile: true,
                            },
                        );
                        return Ok(());
                    }
                    Some(rec) if rec.granted.is_none() => Violation {
                        check: "no phantom holder",
                        detail: format!(
                            "db {db} {} is held (fence {fence}) by a token of c{} that got no grant reply (waiting: {:?})",
                            key(k),
                            rec.client,
                            self.clients[rec.client].pending.as_ref().map(|p| (p.wait, p.sent.elapsed()))
                        ),
                    },
                    Some(rec) => Violation {
                        check: "the lock is where its grant put it",
                        detail: format!(
                            "db {db} {} held by c{}'s token (fence {fence}, granted {:?}); the model has {:?}",
                            key(k),
                            rec.client,
                            rec.granted,
                            model.map(|h| (h.token, h.fence))
                        ),
                    },
                    None => Violation {
                        check: "no phantom holder",
                        detail: format!(
                            "db {db} {} held by unknown owner {owner} (fence {fence})",
                            key(k)
                        ),
                    },
                };
                self.report(v)?;
                // Adopt what the server shows, to go on.
                self.dbs[db].insert(
                    k,
                    Holder {
                        token: format!("unknown-{owner}"),
                        fence,
                        min_deadline: now,
                        volatile: true,
                    },
                );
                Ok(())
            }
        }
    }

    /// `used_memory` of a node less client, replication and AOF buffers
    /// (they follow traffic and roles, not locks), and every numeric field of
    /// `INFO memory` (to show what moved). Measured over a fresh admin
    /// connection, so its own buffers are the same each time.
    fn memory(&mut self, node: usize) -> Check<(i64, BTreeMap<String, i64>)> {
        self.admin[node] = RespConn::connect(self.nodes[node].port()).map_err(|e| Violation {
            check: "the server answers",
            detail: format!("connect to node {node}: {e}"),
        })?;
        self.admin_ok(node, &["PING"])?;
        std::thread::sleep(Duration::from_millis(20));
        let text = self.info_text(node, "memory")?;
        let fields: BTreeMap<String, i64> = text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect();
        let f = |name: &str| fields.get(name).copied().unwrap_or(0);
        // Since 7.0 the backlog and the replicas' output share one buffer.
        let replication = match fields.get("mem_total_replication_buffers") {
            Some(total) => *total,
            None => f("mem_replication_backlog") + f("mem_clients_slaves"),
        };
        let adjusted =
            f("used_memory") - replication - f("mem_clients_normal") - f("mem_aof_buffer");
        Ok((adjusted, fields))
    }

    /// Let every client leave and every lock end; wait (bounded) for the
    /// module to have nothing left.
    fn settle(&mut self) -> Check {
        let p = self.primary;
        self.admin(p, &["CLIENT", "UNPAUSE"])?;
        for c in 0..CLIENTS {
            self.abandon(c);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut busy = Vec::new();
            for n in 0..self.nodes.len() {
                let text = self.info_text(n, "lock")?;
                let f = |name: &str| info_int(&text, name).unwrap_or(-1);
                let keyspace = self.info_text(n, "keyspace")?;
                let keys = keyspace.lines().any(|l| l.starts_with("db"));
                if f("lock_waiters") != 0
                    || f("lock_locks") != 0
                    || f("lock_expiry_index_entries") != 0
                    || keys
                {
                    busy.push(format!(
                        "node {n}: waiters {} locks {} index {} keyspace {keyspace:?}",
                        f("lock_waiters"),
                        f("lock_locks"),
                        f("lock_expiry_index_entries")
                    ));
                }
            }
            if busy.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return fail(
                    "every waiter and lock is gone once clients leave",
                    busy.join("; "),
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------- runs

/// A short fixed warm-up, so high-water marks (hash tables, queues, client
/// and replication structures) settle before the memory baseline.
fn warm_up(sim: &mut Sim) -> Check {
    let acquire = |c, k, ttl, fence_delta| Step::Acquire {
        c,
        k,
        ttl,
        fence_delta,
    };
    let wait = |c, k, wait, ticket| Step::Wait {
        c,
        k,
        ttl: 30,
        wait,
        ticket,
    };
    // Every client waiting at once: the server pools the clients that back
    // blocked-client handles (Redis 7's temporary clients), so the pool must
    // reach its largest size here, not in the sequence.
    let steps = [
        acquire(3, 1, 150, Some(3)),
        acquire(0, 0, 150, None),
        wait(1, 0, 300, false),
        wait(2, 0, 5, true),
        wait(2, 0, 300, true),
        wait(3, 0, 300, false),
        wait(0, 1, 300, false),
        Step::Dump { k: 1 },
        Step::Sleep { ms: 250 },
        acquire(0, 2, 30, None),
        Step::Release { c: 0, k: 2 },
        Step::Info { c: 1, k: 0 },
    ];
    // On each node as primary and as replica: a node's first failover and
    // first waiters grow tables that stay grown.
    for _ in 0..2 {
        for s in &steps {
            sim.step(s)?;
            sim.check()?;
        }
        sim.settle()?;
        sim.failover(false)?;
        sim.settle()?;
    }
    Ok(())
}

#[derive(Default)]
struct Outcome {
    steps: usize,
    requests: usize,
    grants: usize,
    handovers: usize,
    timeouts: usize,
    elapsed: Duration,
}

/// Run one sequence on fresh servers. `Err((index of the failing step or
/// steps.len() for the end checks, violation))`.
fn run(
    flavor: Flavor,
    seed: u64,
    steps: &[Step],
    keep_going: bool,
    verbose: bool,
    outcome: &mut Outcome,
) -> Result<Vec<Violation>, (usize, Violation, String)> {
    let started = Instant::now();
    let mut sim = Sim::start(flavor, seed, keep_going);
    let r = run_on(&mut sim, steps, verbose);
    outcome.steps += sim.stats.steps;
    outcome.requests += sim.stats.requests;
    outcome.grants += sim.stats.grants;
    outcome.handovers += sim.stats.handovers;
    outcome.timeouts += sim.stats.wait_timeouts;
    outcome.elapsed += started.elapsed();
    r.map(|()| std::mem::take(&mut sim.found))
}

fn run_on(sim: &mut Sim, steps: &[Step], verbose: bool) -> Result<(), (usize, Violation, String)> {
    let logs = |sim: &Sim| {
        sim.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "---- node {i} (port {}) log ----\n{}",
                    n.port(),
                    log_excerpt(&n.log())
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    if let Err(v) = warm_up(sim) {
        let l = logs(sim);
        return Err((0, v, l));
    }
    let base: Vec<(i64, BTreeMap<String, i64>)> = match (0..2).map(|n| sim.memory(n)).collect() {
        Ok(b) => b,
        Err(v) => {
            let l = logs(sim);
            return Err((0, v, l));
        }
    };
    for (i, s) in steps.iter().enumerate() {
        if verbose {
            eprintln!("  [{i}] {s}");
        }
        let r = sim.step(s).and_then(|()| sim.check());
        if verbose {
            let p = sim.primary;
            let counter = sim.counter(p).unwrap_or(-1);
            eprintln!("      primary node {p}, lock_fence_counter {counter}");
        }
        if let Err(v) = r {
            let l = logs(sim);
            return Err((i, v, l));
        }
    }
    let end = sim.settle().and_then(|()| {
        for (n, (before, before_fields)) in base.iter().enumerate() {
            // The server frees pooled clients and lazily freed objects on
            // its own time: give it a bounded while to come back.
            let until = Instant::now() + Duration::from_secs(3);
            let (mut after, mut after_fields) = sim.memory(n)?;
            while after - before > MEMORY_TOLERANCE && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(200));
                (after, after_fields) = sim.memory(n)?;
            }
            if after - before > MEMORY_TOLERANCE {
                let moved: Vec<String> = after_fields
                    .iter()
                    .filter_map(|(k, a)| {
                        let b = before_fields.get(k).copied().unwrap_or(0);
                        ((a - b).abs() > 512).then(|| format!("{k} {b} -> {a}"))
                    })
                    .collect();
                sim.report(Violation {
                    check: "used_memory returns to its baseline",
                    detail: format!(
                        "node {n}: {} bytes more than the baseline once every lock and client is gone (used_memory less buffers: {before} -> {after}; moved: {})",
                        after - before,
                        moved.join(", ")
                    ),
                })?;
            } else if verbose {
                eprintln!("  node {n}: memory {before} -> {after}");
            }
        }
        sim.check()
    });
    if let Err(v) = end {
        let l = logs(sim);
        return Err((steps.len(), v, l));
    }
    Ok(())
}

/// The shortest failing sequence found within `budget` replays: the
/// failing prefix, then chunks of halving size dropped while it still
/// fails with the same check (timing makes some failures flaky, so this is
/// a shorter sequence, not always the shortest).
fn shrink(
    flavor: Flavor,
    seed: u64,
    steps: &[Step],
    at: usize,
    check: &str,
    budget: usize,
    time: Duration,
) -> Vec<Step> {
    let until = Instant::now() + time;
    let fails = |s: &[Step]| matches!(run(flavor, seed, s, false, false, &mut Outcome::default()), Err((_, v, _)) if v.check == check);
    let mut best: Vec<Step> = steps[..(at + 1).min(steps.len())].to_vec();
    let mut replays = 0;
    let mut chunk = best.len().div_ceil(2).max(1);
    while replays < budget && Instant::now() < until {
        let mut start = 0;
        while start < best.len() && replays < budget && Instant::now() < until {
            let mut candidate = best.clone();
            let end = (start + chunk).min(candidate.len());
            candidate.drain(start..end);
            replays += 1;
            if !candidate.is_empty() && fails(&candidate) {
                best = candidate;
            } else {
                start += chunk;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    best
}

/// A crash report's head (the assertion and the stack), else the log's tail.
fn log_excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let start = match lines.iter().position(|l| l.contains("BUG REPORT START")) {
        Some(at) => at.saturating_sub(10),
        None => lines.len().saturating_sub(40),
    };
    lines[start..(start + 50).min(lines.len())].join("\n")
}

fn print_sequence(steps: &[Step]) -> String {
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| format!("  {i:>3}. {s}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn lock_promises_hold_under_hostile_server_operations() {
    let first_seed = env_u64("HOSTILE_SEED").unwrap_or(1);
    let duration = env_u64("HOSTILE_DURATION").map(Duration::from_secs);
    let sequences =
        env_u64("HOSTILE_SEQUENCES").unwrap_or(if duration.is_some() { u64::MAX } else { 2 });
    let n_steps = env_u64("HOSTILE_STEPS").unwrap_or(60) as usize;
    let keep_going = std::env::var("HOSTILE_KEEP_GOING").is_ok_and(|v| v == "1");
    let verbose = std::env::var("HOSTILE_VERBOSE").is_ok_and(|v| v == "1");
    let shrink_budget = env_u64("HOSTILE_SHRINK").unwrap_or(12) as usize;
    // Shrinking replays whole sequences: bounded in time too, so that a
    // failing `make test` still ends in well under 90 s.
    let shrink_time = Duration::from_secs(
        env_u64("HOSTILE_SHRINK_SECS").unwrap_or(if duration.is_some() { 600 } else { 10 }),
    );
    let kinds = |var: &str| -> Vec<String> {
        std::env::var(var)
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let (skip, only) = (kinds("HOSTILE_SKIP"), kinds("HOSTILE_ONLY"));
    let mut failures = Vec::new();
    let only_flavor = std::env::var("HOSTILE_FLAVOR").unwrap_or_default();
    for flavor in testkit::flavors() {
        if !only_flavor.is_empty() && !flavor.to_string().contains(&only_flavor) {
            continue;
        }
        let started = Instant::now();
        let mut seqs = 0u64;
        let mut total = Outcome::default();
        let mut seed = first_seed;
        while seqs < sequences && duration.is_none_or(|d| started.elapsed() < d) {
            let steps = generate(&mut Rng::new(seed), n_steps, &skip, &only);
            seqs += 1;
            match run(flavor, seed, &steps, keep_going, verbose, &mut total) {
                Ok(found) => {
                    for v in found {
                        failures.push(format!("{flavor} seed {seed}: {}: {}", v.check, v.detail));
                    }
                }
                Err((at, v, logs)) => {
                    eprintln!(
                        "hostile {flavor}: seed {seed} FAILED at step {at}: {}: {}\n{logs}",
                        v.check, v.detail
                    );
                    let short = shrink(
                        flavor,
                        seed,
                        &steps,
                        at,
                        v.check,
                        shrink_budget,
                        shrink_time,
                    );
                    let msg = format!(
                        "{flavor} seed {seed} (HOSTILE_SEED={seed} HOSTILE_STEPS={n_steps}): {}: {}\nshortest failing sequence found ({} steps, after the warm-up):\n{}",
                        v.check,
                        v.detail,
                        short.len(),
                        print_sequence(&short)
                    );
                    eprintln!("{msg}");
                    failures.push(msg);
                    if !keep_going {
                        seed += 1;
                        break;
                    }
                }
            }
            seed += 1;
        }
        let secs = total.elapsed.as_secs_f64().max(1e-9);
        println!(
            "hostile {flavor}: seeds {first_seed}..{} sequences {seqs} steps {} requests {} grants {} hand-overs {} wait timeouts {} in {secs:.1} s ({:.0} requests/s, {:.0} steps/s, servers' start-up included)",
            seed - 1,
            total.steps,
            total.requests,
            total.grants,
            total.handovers,
            total.timeouts,
            total.requests as f64 / secs,
            total.steps as f64 / secs
        );
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
