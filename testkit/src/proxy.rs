//! A TCP proxy for one client-node link, to cut or slow it at run time.
//!
//! [`Proxy::start`] listens on a free loopback port and forwards every
//! connection to `upstream`. Its [`Mode`] can be switched at any time:
//!
//! - [`Mode::Pass`]: bytes flow both ways;
//! - [`Mode::Drop`]: every open connection is closed (both sides) and new
//!   ones are accepted and closed at once (a crashed link / reset);
//! - [`Mode::Hold`]: connections stay open but nothing is forwarded either
//!   way (a partition that drops packets silently: requests time out);
//!   switching back to `Pass` delivers what was held, in order;
//! - [`Mode::Delay`]: each chunk is forwarded after the given delay.
//!
//! Threads, not async: two pump threads per connection and one acceptor.
//! Every loop is bounded: reads time out every few milliseconds and check
//! the mode and the stop flag; dropping the proxy stops and joins them all.
//!
//! ```no_run
//! use testkit::proxy::{Mode, Proxy};
//! # let server = testkit::Server::start(testkit::flavors()[0]);
//! let proxy = Proxy::start(("127.0.0.1", server.port()));
//! let url = proxy.url(); // give this to the client instead of server.url()
//! proxy.set_mode(Mode::Hold); // the link goes silent
//! proxy.set_mode(Mode::Pass);
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often a blocked loop looks at the mode and the stop flag.
const TICK: Duration = Duration::from_millis(5);
/// Bound on connecting to the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the proxy does with the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Drop,
    Hold,
    Delay(Duration),
}

#[derive(Debug)]
struct Shared {
    mode: Mutex<Mode>,
    /// Bumped on every switch to `Drop`: pumps of older generations close.
    drops: AtomicU64,
    stop: AtomicBool,
    accepted: AtomicU64,
    forwarded: AtomicU64,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn mode(&self) -> Mode {
        *lock(&self.mode)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running proxy; see the module documentation. Dropping it stops it.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listen on a free port of 127.0.0.1 and forward to `upstream`, in
    /// [`Mode::Pass`].
    pub fn start(upstream: impl ToSocketAddrs) -> Proxy {
        let upstream = upstream
            .to_socket_addrs()
            .expect("resolve the upstream address")
            .next()
            .expect("an upstream address");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            mode: Mutex::new(Mode::Pass),
            drops: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            pumps: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || accept_loop(&listener, upstream, &s))
            .expect("spawn the proxy acceptor");
        Proxy {
            addr,
            upstream,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port())
    }

    pub fn mode(&self) -> Mode {
        self.shared.mode()
    }

    /// Switch the mode; takes effect within a few milliseconds. `Drop`
    /// closes every open connection.
    pub fn set_mode(&self, mode: Mode) {
        let mut m = lock(&self.shared.mode);
        if mode == Mode::Drop {
            self.shared.drops.fetch_add(1, Ordering::SeqCst);
        }
        *m = mode;
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far, both ways.
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let pumps = std::mem::take(&mut *lock(&self.shared.pumps));
        for p in pumps {
            let _ = p.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                if shared.mode() == Mode::Drop {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                spawn_pumps(client, server, shared);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(TICK),
            Err(_) => thread::sleep(TICK),
        }
    }
}

fn spawn_pumps(client: TcpStream, server: TcpStream, shared: &Arc<Shared>) {
    let generation = shared.drops.load(Ordering::SeqCst);
    let pairs = [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ];
    let mut pumps = lock(&shared.pumps);
    // Forget pumps that have finished, so a long run does not accumulate them.
    pumps.retain(|h| !h.is_finished());
    for (from, to) in pairs {
        let (Ok(from), Ok(to)) = (from, to) else {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            return;
        };
        let s = Arc::clone(shared);
        if let Ok(h) = thread::Builder::new()
            .name("proxy-pump".into())
            .spawn(move || pump(from, to, &s, generation))
        {
            pumps.push(h);
        }
    }
}

/// Copy `from` to `to` until either side closes, the link is dropped, or
/// the proxy stops; then close both.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, generation: u64) {
    let _ = from.set_read_timeout(Some(TICK));
    let _ = to.set_write_timeout(Some(Duration::from_secs(5)));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if shared.stop.load(Ordering::SeqCst) || shared.drops.load(Ordering::SeqCst) != generation {
            break;
        }
        let mode = shared.mode();
        if mode == Mode::Hold {
            thread::sleep(TICK);
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        // The mode when the chunk is forwarded decides: a chunk read just
        // before a switch to Hold waits, one before a Drop is lost.
        let mut gone = false;
        loop {
            if shared.stop.load(Ordering::SeqCst)
                || shared.drops.load(Ordering::SeqCst) != generation
            {
                gone = true;
                break;
            }
            match shared.mode() {
                Mode::Hold => thread::sleep(TICK),
                Mode::Delay(d) => {
                    thread::sleep(d);
                    break;
                }
                Mode::Pass | Mode::Drop => break,
            }
        }
        if gone {
            break;
        }
        let Some(chunk) = buf.get(..n) else { break };
        if to.write_all(chunk).is_err() {
            break;
        }
        shared.forwarded.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An echo server on a free port; stops when the returned flag is set.
    fn echo_server() -> (SocketAddr, Arc<AtomicBool>, JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let h = thread::spawn(move || {
            let mut conns = Vec::new();
            while !s.load(Ordering::SeqCst) {
                if let Ok((c, _)) = listener.accept() {
                    let s = Arc::clone(&s);
                    conns.push(thread::spawn(move || {
                        let mut c = c;
                        c.set_read_timeout(Some(TICK)).unwrap();
                        let mut buf = [0u8; 1024];
                        while !s.load(Ordering::SeqCst) {
                            match c.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if c.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        ErrorKind::WouldBlock | ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                    }));
                }
                thread::sleep(Duration::from_millis(1));
            }
            for c in conns {
                c.join().unwrap();
            }
        });
        (addr, stop, h)
    }

    fn connect(p: &Proxy) -> TcpStream {
        let c = TcpStream::connect(p.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        c
    }

    /// Send `msg`, read the echo; `None` on timeout, `Some(empty)` on close.
    fn roundtrip(c: &mut TcpStream, msg: &[u8]) -> Option<Vec<u8>> {
        if c.write_all(msg).is_err() {
            return Some(Vec::new());
        }
        read_n(c, msg.len())
    }

    fn read_n(c: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while got.len() < n {
            match c.read(&mut buf) {
                Ok(0) => return Some(got),
                Ok(k) => got.extend_from_slice(&buf[..k]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(_) => return Some(got),
            }
        }
        Some(got)
    }

    #[test]
    fn pass_hold_delay_and_drop() {
        let (addr, stop, echo) = echo_server();
        {
            let p = Proxy::start(addr);
            assert_eq!(p.mode(), Mode::Pass);
            let mut c = connect(&p);
            assert_eq!(roundtrip(&mut c, b"hello").as_deref(), Some(&b"hello"[..]));

            // Hold: nothing comes back, the connection stays open; Pass
            // delivers what was held, in order.
            p.set_mode(Mode::Hold);
            thread::sleep(3 * TICK);
            assert_eq!(roundtrip(&mut c, b"held"), None);
            p.set_mode(Mode::Pass);
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            assert_eq!(read_n(&mut c, 4).as_deref(), Some(&b"held"[..]));

            // Delay: the echo takes at least twice the delay (both ways).
            p.set_mode(Mode::Delay(Duration::from_millis(50)));
            let t = Instant::now();
            assert_eq!(roundtrip(&mut c, b"slow").as_deref(), Some(&b"slow"[..]));
            assert!(
                t.elapsed() >= Duration::from_millis(100),
                "{:?}",
                t.elapsed()
            );

            // Drop: the open connection is closed, new ones too.
            p.set_mode(Mode::Drop);
            thread::sleep(4 * TICK);
            assert_eq!(roundtrip(&mut c, b"x").as_deref(), Some(&b""[..]));
            let mut d = connect(&p);
            assert_eq!(roundtrip(&mut d, b"y").as_deref(), Some(&b""[..]));

            // Back to Pass: new connections work again.
            p.set_mode(Mode::Pass);
            let mut e = connect(&p);
            assert_eq!(roundtrip(&mut e, b"again").as_deref(), Some(&b"again"[..]));
            assert!(p.accepted() >= 3);
            // The counter moves just after the bytes are written on: wait
            // (bounded) rather than race the forwarding thread.
            crate::eventually(Duration::from_secs(2), "forwarded bytes counted", || {
                (p.forwarded() >= 2 * (5 + 4 + 4 + 5) as u64).then_some(())
            });
        } // dropping the proxy joins its threads
        stop.store(true, Ordering::SeqCst);
        echo.join().unwrap();
    }

    #[test]
    fn dropping_the_proxy_closes_its_connections_and_port() {
        let (addr, stop, echo) = echo_server();
        let p = Proxy::start(addr);
        let port = p.port();
        let mut c = connect(&p);
        assert!(roundtrip(&mut c, b"a").is_some());
        p.set_mode(Mode::Hold);
        let t = Instant::now();
        drop(p);
        assert!(t.elapsed() < Duration::from_secs(2), "bounded stop");
        assert_eq!(roundtrip(&mut c, b"b").as_deref(), Some(&b""[..]));
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
        stop.store(true, Ordering::SeqCst);
        echo.join().unwrap();
    }
}
