//! A raw RESP2 connection for tests that must see every reply as it arrives:
//! requests are sent without waiting, and replies are read with a bound (or
//! without blocking at all), so a test can hold several blocked clients on
//! one thread and tell "no reply yet" from "one reply" from "two replies".

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Int(i64),
    Simple(String),
    Bulk(Vec<u8>),
    /// An error reply, as the server sent it ("CODE detail").
    Error(String),
    Array(Vec<Reply>),
}

impl Reply {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn is_error_starting(&self, prefix: &str) -> bool {
        matches!(self, Reply::Error(e) if e.starts_with(prefix))
    }

    /// Bulk or simple string as text (lossy).
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Simple(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// What a bounded read found.
#[derive(Debug)]
pub enum Read1 {
    Reply(Reply),
    /// Nothing (complete) arrived in time.
    Nothing,
    /// The server closed the connection (or it broke).
    Closed(String),
}

/// A RESP2 connection to 127.0.0.1:`port` with its own read buffer.
#[derive(Debug)]
pub struct RespConn {
    stream: TcpStream,
    buf: Vec<u8>,
    closed: Option<String>,
}

impl RespConn {
    /// Connect with a bounded connect timeout.
    pub fn connect(port: u16) -> io::Result<RespConn> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(RespConn {
            stream,
            buf: Vec::new(),
            closed: None,
        })
    }

    /// Send one command (not waiting for its reply).
    pub fn send<A: AsRef<[u8]>>(&mut self, args: &[A]) -> io::Result<()> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            let a = a.as_ref();
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&out)
    }

    /// The next reply, waiting at most `timeout` (zero: only what has arrived).
    pub fn read(&mut self, timeout: Duration) -> Read1 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((reply, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Read1::Reply(reply);
            }
            if let Some(why) = &self.closed {
                return Read1::Closed(why.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut chunk = [0u8; 16 * 1024];
            let got = if left.is_zero() {
                if self.stream.set_nonblocking(true).is_err() {
                    return Read1::Closed("set_nonblocking failed".into());
                }
                let r = self.stream.read(&mut chunk);
                let _ = self.stream.set_nonblocking(false);
                r
            } else {
                let _ = self.stream.set_read_timeout(Some(left));
                self.stream.read(&mut chunk)
            };
            match got {
                Ok(0) => self.closed = Some("connection closed by the server".into()),
                Ok(n) => self
                    .buf
                    .extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Read1::Nothing
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => self.closed = Some(e.to_string()),
            }
        }
    }

    /// Send a command and read its reply within `timeout`.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A], timeout: Duration) -> Read1 {
        if let Err(e) = self.send(args) {
            return Read1::Closed(e.to_string());
        }
        self.read(timeout)
    }

    /// The server's id for this connection (`CLIENT ID`).
    pub fn client_id(&mut self) -> Option<i64> {
        match self.call(&["CLIENT", "ID"], Duration::from_secs(5)) {
            Read1::Reply(Reply::Int(id)) => Some(id),
            _ => None,
        }
    }
}

fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    Some((buf.get(..end)?, end + 2))
}

/// One complete reply at the start of `buf` and its length in bytes.
fn parse(buf: &[u8]) -> Option<(Reply, usize)> {
    let (&kind, rest) = buf.split_first()?;
    let (head, used) = line(rest)?;
    let used = used + 1;
    let text = String::from_utf8_lossy(head).into_owned();
    match kind {
        b'+' => Some((Reply::Simple(text), used)),
        b'-' => Some((Reply::Error(text), used)),
        b':' => Some((Reply::Int(text.parse().ok()?), used)),
        b'$' => {
            let n: i64 = text.parse().ok()?;
            if n < 0 {
                return Some((Reply::Nil, used));
            }
            let n = usize::try_from(n).ok()?;
            let body = buf.get(used..used + n)?;
            if buf.get(used + n..used + n + 2)? != b"\r\n" {
                return None;
            }
            Some((Reply::Bulk(body.to_vec()), used + n + 2))
        }
        b'*' => {
            let n: i64 = text.parse().ok()?;
            if n < 0 {
                return Some((Reply::Nil, used));
            }
            let mut items = Vec::new();
            let mut at = used;
            for _ in 0..n {
                let (item, len) = parse(buf.get(at..)?)?;
                items.push(item);
                at += len;
            }
            Some((Reply::Array(items), at))
        }
        _ => Some((
            Reply::Error(format!("unparsable reply byte {kind:#x}")),
            buf.len(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, Reply};

    #[test]
    fn replies_parse_only_when_complete() {
        assert_eq!(parse(b":12\r\n"), Some((Reply::Int(12), 5)));
        assert_eq!(parse(b"$-1\r\n"), Some((Reply::Nil, 5)));
        assert_eq!(
            parse(b"$3\r\nabc\r\n+OK\r\n"),
            Some((Reply::Bulk(b"abc".to_vec()), 9))
        );
        assert_eq!(parse(b"$3\r\nab"), None);
        assert_eq!(
            parse(b"*2\r\n:1\r\n-ERR x\r\n"),
            Some((
                Reply::Array(vec![Reply::Int(1), Reply::Error("ERR x".into())]),
                16
            ))
        );
        assert_eq!(parse(b"*2\r\n:1\r\n"), None);
    }
}
