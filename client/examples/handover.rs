//! Contended throughput, hand-over latency and fairness of one lock passed
//! among contender processes, in one run: this client waiting in the nodes'
//! queues (`LOCK.ACQUIRE ... WAIT`) and polling, and `rslock` (a polling
//! peer), on 1 and 5 local nodes; then this client queued on 5 nodes with
//! one contender whose wall clock is a day ahead, and one a day behind
//! (libfaketime, wall clock only). Run by `scripts/bench-handover.sh`.
//!
//! Each contender is a process of its own (this program, `contender` mode)
//! that loops acquire, hold, release and records, on the shared monotonic
//! clock, when each grant came and when its release began. From those:
//! locks/s (and as a fraction of 1/hold, the hold measured), the hand-over
//! (a release's start to the next grant) p50/p99, the longest wait for one
//! grant, grants per contender, and, from the nodes' `INFO stats` deltas,
//! server commands and connections opened per grant. Mutual exclusion (no
//! grant before the previous holder began its release) and fence order
//! (fences increase with grants) are checked on the same records.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis_lock_client::{Client, Config};
use testkit::{Flavor, NodeSet};

const TTL: Duration = Duration::from_secs(10);
const KEY: &str = "bench:contended";

/// The monotonic clock in nanoseconds, the same in every process.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Queued,
    Polling,
    Rslock,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Queued => "queued",
            Mode::Polling => "polling",
            Mode::Rslock => "rslock",
        }
    }
    fn parse(s: &str) -> Mode {
        match s {
            "queued" => Mode::Queued,
            "polling" => Mode::Polling,
            "rslock" => Mode::Rslock,
            _ => panic!("mode {s}"),
        }
    }
}

/// One grant as a contender saw it.
struct Grant {
    /// When `acquire` was called, when it returned, when the release began.
    asked: u64,
    got: u64,
    released: u64,
    fence: u64,
    who: usize,
}

/// `contender <mode> <urls,> <hold-us> <secs>`: waits for a line on stdin,
/// then loops acquire / hold / release and prints one line per grant.
fn contender(args: &[String]) {
    let mode = Mode::parse(&args[0]);
    let urls: Vec<String> = args[1].split(',').map(str::to_owned).collect();
    let hold = Duration::from_micros(args[2].parse().unwrap());
    let secs: u64 = args[3].parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::new(
            Config::builder(urls.clone())
                .server_wait(mode == Mode::Queued)
                .build()
                .unwrap(),
        )
        .unwrap();
        client.connect().await.unwrap();
        let rs = rslock::LockManager::new(urls.clone());
        println!("ready");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        let stop = mono_ns() + secs * 1_000_000_000;
        let mut out = Vec::new();
        let mut failures = 0u64;
        while mono_ns() < stop {
            let asked = mono_ns();
            let wait =
                Duration::from_nanos(stop.saturating_sub(asked)).max(Duration::from_millis(100));
            match mode {
                Mode::Queued | Mode::Polling => match client.acquire(KEY, TTL, wait).await {
                    Ok(lease) => {
                        let got = mono_ns();
                        // The thread's sleep, not the runtime's timer (1 ms
                        // ticks): a hold of 1 ms, not 2.
                        std::thread::sleep(hold);
                        let released = mono_ns();
                        let _ = client.release(&lease).await;
                        out.push(format!("g {asked} {got} {released} {}", lease.fence()));
                    }
                    Err(_) => failures += 1,
                },
                Mode::Rslock => {
                    let lock = loop {
                        if let Ok(lock) = rs.lock(KEY, TTL).await {
                            break Some(lock);
                        }
                        if mono_ns() >= stop {
                            break None;
                        }
                    };
                    let Some(lock) = lock else { break };
                    let got = mono_ns();
                    std::thread::sleep(hold);
                    let released = mono_ns();
                    rs.unlock(&lock).await;
                    out.push(format!("g {asked} {got} {released} 0"));
                }
            }
        }
        client.settle(Duration::from_secs(2)).await;
        let mut stdout = std::io::stdout().lock();
        for l in out {
            writeln!(stdout, "{l}").unwrap();
        }
        writeln!(stdout, "failures {failures}").unwrap();
        if std::env::var_os("HANDOVER_CPU").is_some() {
            // SAFETY: a valid, writable rusage.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
            let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
            eprintln!(
                "contender cpu user {} us sys {} us",
                us(ru.ru_utime),
                us(ru.ru_stime)
            );
        }
    });
}

/// Sum of an `INFO stats` field over the nodes.
fn stat(set: &NodeSet, nodes: usize, field: &str) -> u64 {
    set.nodes[..nodes]
        .iter()
        .map(|s| {
            let info = s.info("stats");
            info.lines()
                .find_map(|l| l.strip_prefix(&format!("{field}:")))
                .map(|v| v.trim().parse::<u64>().unwrap())
                .unwrap()
        })
        .sum()
}

struct Row {
    name: String,
    rate: f64,
    fraction: f64,
    p50: Duration,
    p99: Duration,
    max_wait: Duration,
    fewest: usize,
    most: usize,
    skewed: Option<usize>,
    commands: f64,
    connections: f64,
    failures: u64,
    exclusion_violations: usize,
    fence_violations: Option<usize>,
}

fn quantile(v: &mut [u64], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    Duration::from_nanos(v[i.min(v.len() - 1)])
}

/// One contended run: `contenders` processes for `secs` on the first
/// `nodes` nodes; `skew` runs contender 0 under libfaketime at that offset.
fn run(
    set: &NodeSet,
    nodes: usize,
    mode: Mode,
    contenders: usize,
    hold: Duration,
    secs: u64,
    skew: Option<&str>,
) -> Row {
    let urls = set.urls()[..nodes].join(",");
    // A clean key: nothing left from the previous case.
    for s in &set.nodes[..nodes] {
        let _: () = redis::cmd("DEL").arg(KEY).query(&mut s.conn()).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let mut children: Vec<Child> = (0..contenders)
        .map(|i| {
            let mut cmd = Command::new(&exe);
            cmd.arg("contender")
                .arg(mode.name())
                .arg(&urls)
                .arg(hold.as_micros().to_string())
                .arg(secs.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            if let (0, Some(offset)) = (i, skew) {
                let lib = testkit::libfaketime().expect("libfaketime (apt-get install faketime)");
                cmd.env("LD_PRELOAD", lib)
                    .env("FAKETIME", offset)
                    .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                    .env("FAKETIME_DONT_RESET", "1");
            }
            cmd.spawn().unwrap()
        })
        .collect();
    let mut readers: Vec<_> = children
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().unwrap()))
        .collect();
    for r in &mut readers {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "contender did not start");
    }
    let commands_before = stat(set, nodes, "total_commands_processed");
    let connections_before = stat(set, nodes, "total_connections_received");
    for c in &mut children {
        writeln!(c.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let mut grants = Vec::new();
    let mut failures = 0;
    for (who, r) in readers.into_iter().enumerate() {
        for line in r.lines() {
            let line = line.unwrap();
            let f: Vec<&str> = line.split_whitespace().collect();
            match f[0] {
                "g" => grants.push(Grant {
                    asked: f[1].parse().unwrap(),
                    got: f[2].parse().unwrap(),
                    released: f[3].parse().unwrap(),
                    fence: f[4].parse().unwrap(),
                    who,
                }),
                "failures" => failures += f[1].parse::<u64>().unwrap(),
                _ => {}
            }
        }
    }
    for mut c in children {
        c.wait().unwrap();
    }
    // Minus this function's own INFO commands (one per node per reading).
    let commands = stat(set, nodes, "total_commands_processed")
        .saturating_sub(commands_before)
        .saturating_sub(nodes as u64);
    let connections = stat(set, nodes, "total_connections_received")
        .saturating_sub(connections_before)
        .saturating_sub(nodes as u64);
    grants.sort_by_key(|g| g.got);
    let n = grants.len().max(1);
    let mut handovers: Vec<u64> = grants
        .windows(2)
        .map(|w| w[1].got.saturating_sub(w[0].released))
        .collect();
    let exclusion_violations = grants
        .windows(2)
        .filter(|w| w[1].got < w[0].released)
        .count();
    let fence_violations = (mode != Mode::Rslock).then(|| {
        grants
            .windows(2)
            .filter(|w| w[1].fence <= w[0].fence)
            .count()
    });
    let max_wait = Duration::from_nanos(grants.iter().map(|g| g.got - g.asked).max().unwrap_or(0));
    let mean_hold = grants.iter().map(|g| g.released - g.got).sum::<u64>() as f64 / n as f64 / 1e9;
    let mut per = vec![0usize; contenders];
    for g in &grants {
        per[g.who] += 1;
    }
    let rate = grants.len() as f64 / secs as f64;
    Row {
        name: format!(
            "{} {}, {} node{}{}",
            if mode == Mode::Rslock {
                "rslock 0.10"
            } else {
                "this client"
            },
            if mode == Mode::Queued {
                "queued"
            } else {
                "polling"
            },
            nodes,
            if nodes == 1 { "" } else { "s" },
            skew.map(|s| format!(", #0 at {s}")).unwrap_or_default()
        ),
        rate,
        fraction: rate * mean_hold,
        p50: quantile(&mut handovers, 0.5),
        p99: quantile(&mut handovers, 0.99),
        max_wait,
        fewest: per.iter().copied().min().unwrap_or(0),
        most: per.iter().copied().max().unwrap_or(0),
        skewed: skew.map(|_| per[0]),
        commands: commands as f64 / n as f64,
        connections: connections as f64 / n as f64,
        failures,
        exclusion_violations,
        fence_violations,
    }
}

/// The floor of a hand-over on the first `nodes` nodes, no client: one
/// thread per node blocked on a raw `LOCK.ACQUIRE ... WAIT`, the holder
/// writing `LOCK.RELEASE` to every node; the time to the quorum-th reply.
fn raw_floor(set: &NodeSet, nodes: usize, samples: usize) -> (Duration, Duration) {
    use std::io::Read;
    use std::net::TcpStream;
    fn cmd(args: &[&str]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            v.extend(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
        }
        v
    }
    fn reply(s: &mut TcpStream) {
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0 && buf[0] != b'-',
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    let connect = || -> Vec<TcpStream> {
        set.nodes[..nodes]
            .iter()
            .map(|s| {
                let c = TcpStream::connect(("127.0.0.1", s.port())).unwrap();
                c.set_nodelay(true).unwrap();
                c
            })
            .collect()
    };
    let quorum = nodes / 2 + 1;
    let (mut holder, mut waiters) = (connect(), connect());
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let (a, b) = (format!("a{i}"), format!("b{i}"));
        for h in &mut holder {
            h.write_all(&cmd(&["LOCK.ACQUIRE", "bench:raw", &a, "10000"]))
                .unwrap();
            reply(h);
        }
        for w in &mut waiters {
            w.write_all(&cmd(&[
                "LOCK.ACQUIRE",
                "bench:raw",
                &b,
                "10000",
                "WAIT",
                "5000",
            ]))
            .unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let blocked: Vec<_> = waiters
            .drain(..)
            .map(|mut w| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    reply(&mut w);
                    tx.send(mono_ns()).unwrap();
                    w
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2));
        let released = mono_ns();
        for h in &mut holder {
            h.write_all(&cmd(&["LOCK.RELEASE", "bench:raw", &a]))
                .unwrap();
        }
        let mut got: Vec<u64> = (0..nodes).map(|_| rx.recv().unwrap()).collect();
        got.sort_unstable();
        lat.push(got[quorum - 1].saturating_sub(released));
        for h in &mut holder {
            reply(h);
        }
        waiters = blocked.into_iter().map(|t| t.join().unwrap()).collect();
        for w in &mut waiters {
            w.write_all(&cmd(&["LOCK.RELEASE", "bench:raw", &b]))
                .unwrap();
            reply(w);
        }
    }
    (quantile(&mut lat, 0.5), quantile(&mut lat, 0.99))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("contender") {
        return contender(&args[1..]);
    }
    let secs: u64 = args.first().map_or(10, |s| s.parse().expect("seconds"));
    let contenders = 4;
    let hold = Duration::from_millis(1);
    let set = NodeSet::start(5, Flavor::Redis7);
    println!(
        "{contenders} contender processes, one key, {}ms hold, {secs} s a case; fraction = locks/s x the measured hold",
        hold.as_millis()
    );
    println!(
        "{:<44} {:>7} {:>6} {:>15} {:>9} {:>11} {:>8} {:>10} {:>6} {:>8}",
        "client",
        "locks/s",
        "x1/hold",
        "hand-over p50/p99 us",
        "max wait",
        "grants min-max",
        "skewed",
        "cmds/grant",
        "conns/grant",
        "checks"
    );
    let mut cases: Vec<(usize, Mode, Option<&str>)> = Vec::new();
    for nodes in [1, 5] {
        for mode in [Mode::Queued, Mode::Polling, Mode::Rslock] {
            cases.push((nodes, mode, None));
        }
    }
    cases.push((5, Mode::Queued, Some("+1d")));
    cases.push((5, Mode::Queued, Some("-1d")));
    // HANDOVER_CASES=queued (say) runs only the rows whose name has it.
    let only = std::env::var("HANDOVER_CASES").unwrap_or_default();
    for (nodes, mode, skew) in cases {
        if !only.is_empty() && mode.name() != only {
            continue;
        }
        let r = run(&set, nodes, mode, contenders, hold, secs, skew);
        let checks = format!(
            "excl {} fence {} fail {}",
            r.exclusion_violations,
            r.fence_violations
                .map_or("n/a".to_owned(), |v| v.to_string()),
            r.failures
        );
        println!(
            "{:<44} {:>7.0} {:>6.2} {:>7.0} / {:>6.0} {:>7.1}ms {:>5}-{:<5} {:>8} {:>10.1} {:>6.2} {checks}",
            r.name,
            r.rate,
            r.fraction,
            r.p50.as_secs_f64() * 1e6,
            r.p99.as_secs_f64() * 1e6,
            r.max_wait.as_secs_f64() * 1e3,
            r.fewest,
            r.most,
            r.skewed.map_or("-".to_owned(), |s| s.to_string()),
            r.commands,
            r.connections,
        );
    }
    if only.is_empty() || only == "floor" {
        let (p1, q1) = raw_floor(&set, 1, 400);
        let (p5, q5) = raw_floor(&set, 5, 400);
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "floor, no client (raw LOCK.RELEASE -> quorum-th WAIT reply, a thread per node): 1 node {:.0} / {:.0} us, 5 nodes {:.0} / {:.0} us (p50 / p99; 5-node p50 {:.1}x the 1-node one)",
            us(p1), us(q1), us(p5), us(q5), us(p5) / us(p1)
        );
    }
}
