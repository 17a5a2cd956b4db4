//! IO with one node: a long-lived multiplexed connection, made lazily and
//! remade after it breaks, with a connect timeout and a per-request timeout.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, RedisError, Value};
use tokio::sync::Mutex;
use tokio::time::timeout;

use crate::config::{NodeSpec, Tls};
use crate::error::{Error, NodeError, NodeErrorKind};
use crate::proto::{self, Request};

mod waiting;

/// The cached connection and a generation number, so that a request that
/// saw the connection break drops that connection and not a newer one.
#[derive(Default)]
struct Slot {
    generation: u64,
    conn: Option<MultiplexedConnection>,
}

pub(crate) struct Node {
    pub(crate) index: usize,
    pub(crate) label: String,
    client: redis::Client,
    slot: Mutex<Slot>,
    /// The connections that `LOCK.ACQUIRE ... WAIT` blocks, kept apart.
    waits: waiting::WaitPool,
    connect_timeout: Duration,
    request_timeout: Duration,
}

/// Where in a request a failure happened: it decides how it is reported.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connect,
    Request,
}

impl Node {
    pub(crate) fn new(
        index: usize,
        spec: &NodeSpec,
        tls: Option<&Tls>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Node, Error> {
        let client = open(spec, tls)
            .map_err(|e| Error::config(format!("node #{index} ({}): {e}", spec.label)))?;
        Ok(Node {
            index,
            label: spec.label.clone(),
            client,
            slot: Mutex::new(Slot::default()),
            waits: waiting::WaitPool::default(),
            connect_timeout,
            request_timeout,
        })
    }

    pub(crate) fn error(&self, kind: NodeErrorKind, message: impl Into<String>) -> NodeError {
        NodeError::new(self.index, &self.label, kind, message.into())
    }

    /// The cached connection, or a new one. Concurrent callers wait for one
    /// connection attempt instead of each making their own.
    async fn connection(&self) -> Result<(u64, MultiplexedConnection, bool), NodeError> {
        let mut slot = self.slot.lock().await;
        if let Some(conn) = &slot.conn {
            return Ok((slot.generation, conn.clone(), true));
        }
        let conn = self.open_connection().await?;
        slot.generation += 1;
        slot.conn = Some(conn.clone());
        tracing::debug!(node = self.index, addr = %self.label, "connected");
        Ok((slot.generation, conn, false))
    }

    /// A new connection to the node, not bounded in time: callers bound it
    /// by the connect timeout (see [`Node::no_connection`]) and time their
    /// requests themselves, dropping the future.
    async fn open_connection(&self) -> Result<MultiplexedConnection, NodeError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.classify(&e, Phase::Connect))
    }

    /// The error of a connection not made within the connect timeout.
    fn no_connection(&self) -> NodeError {
        self.error(
            NodeErrorKind::Timeout,
            format!("no connection within {:?}", self.connect_timeout),
        )
    }

    /// Whether a connection is open (or being made): a request cut off
    /// without one was never sent.
    pub(crate) fn may_be_connected(&self) -> bool {
        if self.waits.ever_opened() {
            return true;
        }
        match self.slot.try_lock() {
            Ok(slot) => slot.conn.is_some(),
            Err(_) => true,
        }
    }

    async fn forget(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if slot.generation == generation {
            slot.conn = None;
        }
    }

    /// Opens the connection now (instead of at the first request).
    pub(crate) async fn connect(&self) -> Result<(), NodeError> {
        match timeout(self.connect_timeout, self.connection()).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(self.no_connection()),
        }
    }

    /// Sends one command and returns its reply. Bounded by the connect
    /// timeout (if a connection must be made) plus the request timeout. A
    /// cached connection found broken is replaced and the command sent once
    /// more: every `LOCK.*` command is safe to repeat with the same token.
    pub(crate) async fn query(&self, cmd: &Cmd) -> Result<Value, NodeError> {
        let mut retried = false;
        // Whether an attempt went out on a connection: a node that never
        // got the request holds nothing it asked for.
        let mut sent = false;
        loop {
            let connected = timeout(self.connect_timeout, self.connection()).await;
            let (generation, mut conn, reused) = match connected {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    let e = self.with_refusal(e).await;
                    return Err(if sent { e } else { e.unsent() });
                }
                Err(_) => {
                    let e = self.no_connection();
                    return Err(if sent { e } else { e.unsent() });
                }
            };
            sent = true;
            match timeout(self.request_timeout, cmd.query_async::<Value>(&mut conn)).await {
                Err(_) => {
                    // A slow node is not a broken connection: keep it, the
                    // late reply is matched to this abandoned request.
                    return Err(self.error(
                        NodeErrorKind::Timeout,
                        format!("no reply within {:?}", self.request_timeout),
                    ));
                }
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if is_broken_connection(&e) => {
                    self.forget(generation).await;
                    if reused && !retried {
                        tracing::debug!(node = self.index, addr = %self.label, error = %e,
                            "cached connection broken, reconnecting");
                        retried = true;
                        continue;
                    }
                    return Err(self.classify(&e, Phase::Request));
                }
                Ok(Err(e)) => return Err(self.classify(&e, Phase::Request)),
            }
        }
    }

    fn classify(&self, e: &RedisError, phase: Phase) -> NodeError {
        let code = e.code().map(str::to_owned);
        let detail = e.detail().unwrap_or_default();
        let lower = detail.to_ascii_lowercase();
        let kind = if code.as_deref() == Some("NOPERM") {
            NodeErrorKind::Permission
        } else if e.kind() == ErrorKind::AuthenticationFailed
            || matches!(code.as_deref(), Some("WRONGPASS" | "NOAUTH"))
        {
            NodeErrorKind::Auth
        } else if code.as_deref() == Some("TRYAGAIN") {
            NodeErrorKind::Refusing
        } else if code.as_deref() == Some("ERR") && lower.contains("unknown command") {
            NodeErrorKind::ModuleNotLoaded
        } else if code.as_deref() == Some("ERR")
            && (lower.starts_with("invalid")
                || lower.contains("wrong number of arguments")
                || lower.contains("syntax error"))
        {
            NodeErrorKind::Rejected
        } else if e.is_timeout() {
            NodeErrorKind::Timeout
        } else if code.is_some() {
            NodeErrorKind::Server
        } else if matches!(e.kind(), ErrorKind::Parse | ErrorKind::UnexpectedReturnType) {
            NodeErrorKind::Protocol
        } else if phase == Phase::Connect {
            NodeErrorKind::Connect
        } else {
            NodeErrorKind::Io
        };
        let message = match kind {
            // The server's text echoes the command's arguments, the token
            // among them: say only what it means.
            NodeErrorKind::ModuleNotLoaded => {
                "the LOCK.* commands are unknown (is the redis-lock module loaded?)".to_owned()
            }
            NodeErrorKind::Permission => {
                let user = self
                    .client
                    .get_connection_info()
                    .redis_settings()
                    .username()
                    .unwrap_or("default")
                    .to_owned();
                format!("user {user:?}: {}", detail.trim())
            }
            NodeErrorKind::Refusing | NodeErrorKind::Rejected => detail.trim().to_owned(),
            _ => e.to_string(),
        };
        let mut error = self.error(kind, message).with_code(code);
        if kind == NodeErrorKind::Refusing {
            error.retry_after = refusal_time_left(detail);
        }
        error
    }

    /// A connection that broke during the handshake (reset, broken pipe,
    /// closed) may have been refused by the server with an error line, as
    /// `-ERR max number of clients reached` when the node is at
    /// `maxclients`: the redis crate then reports only the broken socket.
    /// Reads what the server says to a fresh connection, briefly, and adds
    /// it to the message.
    async fn with_refusal(&self, e: NodeError) -> NodeError {
        if e.kind != NodeErrorKind::Connect && e.kind != NodeErrorKind::Io {
            return e;
        }
        let redis::ConnectionAddr::Tcp(host, port) = self.client.get_connection_info().addr()
        else {
            return e;
        };
        let limit = self.connect_timeout.min(Duration::from_millis(200));
        let probe = async {
            use tokio::io::AsyncReadExt;
            let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .ok()?;
            let mut buf = [0u8; 256];
            let n = stream.read(&mut buf).await.ok()?;
            let text = String::from_utf8_lossy(buf.get(..n)?).into_owned();
            let line = text.strip_prefix('-')?.lines().next()?.trim().to_owned();
            (!line.is_empty()).then_some(line)
        };
        match timeout(limit, probe).await {
            Ok(Some(line)) => {
                let code = line.split_whitespace().next().map(str::to_owned);
                let mut e = self.error(
                    NodeErrorKind::Server,
                    format!("the server refused the connection: {line} ({})", e.message),
                );
                e.code = code;
                if e.sent {
                    e
                } else {
                    e.unsent()
                }
            }
            _ => e,
        }
    }

    /// One `LOCK.*` request: encoded, sent, its reply decoded. A reply
    /// outside the module's contract is a protocol error; an error names
    /// the command and the key, never the token.
    pub(crate) async fn call<R: Request>(&self, request: &R) -> Result<R::Reply, NodeError> {
        let reply = self.query(&proto::encode(request)).await;
        self.answer(request, reply)
    }

    fn answer<R: Request>(
        &self,
        request: &R,
        reply: Result<Value, NodeError>,
    ) -> Result<R::Reply, NodeError> {
        let reply = reply.map_err(|e| {
            let (key, token) = request.target();
            let e = match token {
                Some(token) => e.redact(token),
                None => e,
            };
            e.about(R::NAME, key)
        })?;
        request
            .decode(&reply)
            .map_err(|m| self.error(NodeErrorKind::Protocol, m.0))
    }
}

/// The redis client of one node, with the configured certificates for a
/// `rediss://` node. rustls needs a process-wide crypto provider: ring is
/// installed unless the program installed one itself.
fn open(spec: &NodeSpec, tls: Option<&Tls>) -> redis::RedisResult<redis::Client> {
    // Requests are small and latency is the point: no Nagle delay (the
    // redis crate leaves it on by default).
    let tcp = spec.info.tcp_settings().clone().set_nodelay(true);
    let info = spec.info.clone().set_tcp_settings(tcp);
    #[cfg(feature = "tls")]
    if matches!(spec.info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if let Some(tls) = tls {
            return redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: tls.client.clone().map(|(client_cert, client_key)| {
                        redis::ClientTlsConfig {
                            client_cert,
                            client_key,
                        }
                    }),
                    root_cert: tls.ca.clone(),
                },
            );
        }
    }
    let _ = tls;
    redis::Client::open(info)
}

/// The time left in a `TRYAGAIN` refusal: `... refused for another 1234 ms ...`.
fn refusal_time_left(detail: &str) -> Option<Duration> {
    let rest = detail.split("for another ").nth(1)?;
    let ms: u64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

fn is_broken_connection(e: &RedisError) -> bool {
    e.code().is_none()
        && (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
}
