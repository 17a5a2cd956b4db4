//! Direct requests to each node, for what the quorum client does not offer:
//! per-node status and `LOCK.INFO`, and `extend` / `release` by a token
//! handed over from another process. Every request is bounded by the
//! connect and request timeouts; all nodes are asked in parallel.
//!
//! The replies are parsed by pure functions ([`parse_lock_info`],
//! [`module_version`], [`server_version`], [`verdict`]), tested without a
//! server.

use std::fmt;
use std::time::Duration;

use futures_util::future::join_all;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, IntoConnectionInfo, RedisError, Value};
use redis_lock_client::NodeErrorKind;
use tokio::time::timeout;

use crate::exit::Failure;

/// Why one node could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFailure {
    pub kind: NodeErrorKind,
    pub message: String,
}

impl NodeFailure {
    fn new(kind: NodeErrorKind, message: impl Into<String>) -> Self {
        NodeFailure {
            kind,
            message: message.into(),
        }
    }

    fn classify(e: &RedisError, connecting: bool) -> Self {
        let code = e.code();
        let detail = e.detail().unwrap_or_default().to_ascii_lowercase();
        let kind = if e.kind() == ErrorKind::AuthenticationFailed
            || matches!(code, Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
        {
            NodeErrorKind::Auth
        } else if code == Some("ERR") && detail.contains("unknown command") {
            NodeErrorKind::ModuleNotLoaded
        } else if e.is_timeout() {
            NodeErrorKind::Timeout
        } else if code.is_some() {
            NodeErrorKind::Server
        } else if connecting {
            NodeErrorKind::Connect
        } else {
            NodeErrorKind::Io
        };
        let message = match kind {
            NodeErrorKind::ModuleNotLoaded => "the LOCK.* commands are unknown".to_owned(),
            _ => e.to_string(),
        };
        NodeFailure::new(kind, message)
    }
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            NodeErrorKind::Connect => "cannot connect",
            NodeErrorKind::Timeout => "timed out",
            NodeErrorKind::Auth => "authentication or ACL refused",
            NodeErrorKind::ModuleNotLoaded => "module not loaded",
            NodeErrorKind::Protocol => "unexpected reply",
            NodeErrorKind::Io => "connection broken",
            _ => "server error",
        };
        write!(f, "{what}: {}", self.message)
    }
}

/// A held lock as `LOCK.INFO` shows it on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockInfo {
    pub fence: u64,
    /// Fingerprint of the holder's token (never the token).
    pub owner: String,
    pub ttl_ms: i64,
    pub acquired_ms: i64,
    pub extensions: i64,
    pub maxhold_ms: Option<i64>,
}

/// The lock on one node: `None` when free.
pub type LockState = Option<LockInfo>;

/// What `status` learns about one node.
#[derive(Clone, Debug)]
pub struct Probe {
    /// `redis 7.0.15`, `valkey 8.1.1`: reached and answered.
    pub server: Result<String, NodeFailure>,
    /// The module's version, `None` if it is not loaded; absent when the
    /// node could not be asked.
    pub module: Option<Result<Option<i64>, NodeFailure>>,
    /// The lock's state, when a key was given and the node could be asked.
    pub lock: Option<Result<LockState, NodeFailure>>,
}

impl Probe {
    /// Reachable and the module loaded.
    pub fn healthy(&self) -> bool {
        self.server.is_ok() && matches!(self.module, Some(Ok(Some(_))))
    }

    /// Why the node is not healthy, for choosing the exit status.
    pub fn failure_kind(&self) -> Option<NodeErrorKind> {
        match (&self.server, &self.module) {
            (Err(e), _) => Some(e.kind),
            (Ok(_), Some(Ok(Some(_)))) => None,
            (Ok(_), Some(Ok(None))) => Some(NodeErrorKind::ModuleNotLoaded),
            (Ok(_), Some(Err(e))) => Some(e.kind),
            (Ok(_), None) => Some(NodeErrorKind::Protocol),
        }
    }
}

/// One node: where to connect, and its name in output (never credentials).
struct Node {
    label: String,
    client: redis::Client,
}

/// The configured nodes, for direct requests.
pub struct Nodes {
    nodes: Vec<Node>,
    quorum: usize,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Nodes {
    /// `urls` and `labels` in the same order (the labels come from the
    /// client's checked configuration, which has already validated the URLs).
    pub fn new(
        urls: &[String],
        labels: Vec<String>,
        credentials: (Option<&str>, Option<&str>),
        quorum: usize,
        timeouts: (Duration, Duration),
    ) -> Result<Nodes, String> {
        let mut nodes = Vec::with_capacity(urls.len());
        for (i, (url, label)) in urls.iter().zip(labels).enumerate() {
            let info = url
                .as_str()
                .into_connection_info()
                .map_err(|e| format!("node address #{i} is not a valid Redis URL: {e}"))?;
            let mut redis = info.redis_settings().clone();
            if let (None, Some(user)) = (redis.username(), credentials.0) {
                redis = redis.set_username(user);
            }
            if let (None, Some(password)) = (redis.password(), credentials.1) {
                redis = redis.set_password(password);
            }
            let client = redis::Client::open(info.set_redis_settings(redis))
                .map_err(|e| format!("node #{i} ({label}): {e}"))?;
            nodes.push(Node { label, client });
        }
        Ok(Nodes {
            nodes,
            quorum,
            connect_timeout: timeouts.0,
            request_timeout: timeouts.1,
        })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn quorum(&self) -> usize {
        self.quorum
    }

    pub fn labels(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.label.clone()).collect()
    }

    async fn connect(&self, node: &Node) -> Result<MultiplexedConnection, NodeFailure> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.request_timeout));
        // The handshake (AUTH, HELLO) is a request too: bound both.
        let limit = self.connect_timeout + self.request_timeout;
        match timeout(
            limit,
            node.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(NodeFailure::classify(&e, true)),
            Err(_) => Err(NodeFailure::new(
                NodeErrorKind::Timeout,
                format!("no connection within {limit:?}"),
            )),
        }
    }

    async fn ask(&self, conn: &mut MultiplexedConnection, cmd: &Cmd) -> Result<Value, NodeFailure> {
        match timeout(self.request_timeout, cmd.query_async::<Value>(conn)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(NodeFailure::classify(&e, false)),
            Err(_) => Err(NodeFailure::new(
                NodeErrorKind::Timeout,
                format!("no reply within {:?}", self.request_timeout),
            )),
        }
    }

    async fn ask_once(&self, node: &Node, cmd: &Cmd) -> Result<Value, NodeFailure> {
        let mut conn = self.connect(node).await?;
        self.ask(&mut conn, cmd).await
    }

    /// Sends `cmd` to every node; the replies in node order.
    pub async fn each(&self, cmd: &Cmd) -> Vec<Result<Value, NodeFailure>> {
        join_all(self.nodes.iter().map(|n| self.ask_once(n, cmd))).await
    }

    /// `LOCK.INFO key` on every node.
    pub async fn lock_info(&self, key: &str) -> Vec<Result<LockState, NodeFailure>> {
        let mut cmd = redis::cmd("LOCK.INFO");
        cmd.arg(key);
        self.each(&cmd)
            .await
            .into_iter()
            .map(|r| r.and_then(|v| parse_lock_info(&v)))
            .collect()
    }

    /// `LOCK.EXTEND` (with `Some(ttl_ms)`) or `LOCK.RELEASE` for `token` on
    /// every node: for each, whether the token held the lock there.
    pub async fn extend_or_release(
        &self,
        key: &str,
        token: &str,
        ttl_ms: Option<u64>,
    ) -> Vec<Result<bool, NodeFailure>> {
        let mut cmd = match ttl_ms {
            Some(_) => redis::cmd("LOCK.EXTEND"),
            None => redis::cmd("LOCK.RELEASE"),
        };
        cmd.arg(key).arg(token);
        if let Some(ms) = ttl_ms {
            cmd.arg(ms);
        }
        self.each(&cmd)
            .await
            .into_iter()
            .map(|r| {
                r.and_then(|v| match v {
                    Value::Int(1) => Ok(true),
                    Value::Int(0) => Ok(false),
                    // The module's "held by this token, but at its hold
                    // limit": not extended, and not a loss of the lock.
                    Value::Int(-1) => Err(NodeFailure::new(
                        NodeErrorKind::Server,
                        "held by this token but at its hold limit (MAXHOLD / lock.max-hold-ms): not extended",
                    )),
                    other => Err(NodeFailure::new(
                        NodeErrorKind::Protocol,
                        format!("answered {other:?}"),
                    )),
                })
            })
            .collect()
    }

    /// Reachability, server and module version, and optionally the lock.
    pub async fn probe(&self, key: Option<&str>) -> Vec<Probe> {
        join_all(self.nodes.iter().map(|n| self.probe_one(n, key))).await
    }

    async fn probe_one(&self, node: &Node, key: Option<&str>) -> Probe {
        let mut conn = match self.connect(node).await {
            Ok(c) => c,
            Err(e) => {
                return Probe {
                    server: Err(e),
                    module: None,
                    lock: None,
                }
            }
        };
        let mut info = redis::cmd("INFO");
        info.arg("server");
        let server = match self.ask(&mut conn, &info).await {
            Ok(v) => Ok(server_version(&value_text(&v))),
            Err(e) => Err(e),
        };
        if server.is_err() {
            return Probe {
                server,
                module: None,
                lock: None,
            };
        }
        let mut modules = redis::cmd("MODULE");
        modules.arg("LIST");
        let module = Some(
            self.ask(&mut conn, &modules)
                .await
                .map(|v| module_version(&v, "lock")),
        );
        let lock = match key {
            Some(key) => {
                let mut cmd = redis::cmd("LOCK.INFO");
                cmd.arg(key);
                Some(
                    self.ask(&mut conn, &cmd)
                        .await
                        .and_then(|v| parse_lock_info(&v)),
                )
            }
            None => None,
        };
        Probe {
            server,
            module,
            lock,
        }
    }
}

/// How a fan-out of `LOCK.EXTEND` or `LOCK.RELEASE` came out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Nodes where the token held the lock.
    pub held: usize,
    /// Nodes where it did not.
    pub not_held: usize,
    /// Nodes that failed, and how.
    pub failed: Vec<NodeErrorKind>,
}

impl Tally {
    pub fn of(results: &[Result<bool, NodeFailure>]) -> Tally {
        let mut t = Tally::default();
        for r in results {
            match r {
                Ok(true) => t.held += 1,
                Ok(false) => t.not_held += 1,
                Err(e) => t.failed.push(e.kind),
            }
        }
        t
    }
}

/// Whether the token held the lock on a quorum; otherwise whether it
/// certainly did not (more nodes said no than a quorum can spare) or the
/// nodes that failed leave the answer open.
pub fn verdict(t: &Tally, nodes: usize, quorum: usize) -> Result<(), Failure> {
    if t.held >= quorum {
        Ok(())
    } else if t.not_held > nodes.saturating_sub(quorum) {
        Err(Failure::NotHeld)
    } else {
        Err(Failure::from_node_kinds(t.failed.iter().copied()))
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// The field/value pairs of a RESP2 flat array or a RESP3 map.
fn pairs(v: &Value) -> Option<Vec<(String, &Value)>> {
    match v {
        Value::Map(kv) => Some(kv.iter().map(|(k, v)| (value_text(k), v)).collect()),
        Value::Array(items) => Some(
            items
                .chunks(2)
                .filter_map(|kv| match kv {
                    [k, v] => Some((value_text(k), v)),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// A `LOCK.INFO` reply: nil when free, else the fields.
pub fn parse_lock_info(v: &Value) -> Result<LockState, NodeFailure> {
    if matches!(v, Value::Nil) {
        return Ok(None);
    }
    let bad = || NodeFailure::new(NodeErrorKind::Protocol, format!("LOCK.INFO answered {v:?}"));
    let fields = pairs(v).ok_or_else(bad)?;
    let mut info = LockInfo::default();
    let mut seen_fence = false;
    for (name, value) in fields {
        let int = match value {
            Value::Int(i) => Some(*i),
            _ => None,
        };
        match (name.as_str(), int) {
            ("fence", Some(i)) => {
                info.fence = u64::try_from(i).map_err(|_| bad())?;
                seen_fence = true;
            }
            ("ttl", Some(i)) => info.ttl_ms = i,
            ("acquired", Some(i)) => info.acquired_ms = i,
            ("extensions", Some(i)) => info.extensions = i,
            ("maxhold", Some(i)) => info.maxhold_ms = Some(i),
            ("owner", _) => info.owner = value_text(value),
            _ => {}
        }
    }
    if !seen_fence {
        return Err(bad());
    }
    Ok(Some(info))
}

/// The version of module `name` in a `MODULE LIST` reply, `None` if it is
/// not loaded.
pub fn module_version(v: &Value, name: &str) -> Option<i64> {
    let (Value::Array(modules) | Value::Set(modules)) = v else {
        return None;
    };
    modules.iter().find_map(|m| {
        let fields = pairs(m)?;
        let named = fields
            .iter()
            .any(|(k, v)| k == "name" && value_text(v) == name);
        if !named {
            return None;
        }
        fields.iter().find_map(|(k, v)| match (k.as_str(), v) {
            ("ver", Value::Int(i)) => Some(*i),
            _ => None,
        })
    })
}

/// `valkey 8.1.1` or `redis 7.0.15` from the text of `INFO server`.
pub fn server_version(info: &str) -> String {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(str::to_owned)
    };
    match (field("valkey_version"), field("redis_version")) {
        (Some(v), _) => format!("valkey {v}"),
        (None, Some(v)) => format!("redis {v}"),
        (None, None) => "unknown server".to_owned(),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn lock_info_from_resp2_and_resp3() {
        let flat = Value::Array(vec![
            bulk("acquired"),
            Value::Int(12),
            bulk("extensions"),
            Value::Int(1),
            bulk("fence"),
            Value::Int(1_795_326_391_278_776),
            bulk("owner"),
            bulk("1a7674eb4ee78df7"),
            bulk("ttl"),
            Value::Int(4988),
        ]);
        let want = LockInfo {
            fence: 1_795_326_391_278_776,
            owner: "1a7674eb4ee78df7".into(),
            ttl_ms: 4988,
            acquired_ms: 12,
            extensions: 1,
            maxhold_ms: None,
        };
        assert_eq!(parse_lock_info(&flat).unwrap(), Some(want.clone()));
        let map = Value::Map(vec![
            (bulk("fence"), Value::Int(1_795_326_391_278_776)),
            (bulk("owner"), bulk("1a7674eb4ee78df7")),
            (bulk("ttl"), Value::Int(4988)),
            (bulk("acquired"), Value::Int(12)),
            (bulk("extensions"), Value::Int(1)),
            (bulk("maxhold"), Value::Int(50_000)),
        ]);
        let with_maxhold = LockInfo {
            maxhold_ms: Some(50_000),
            ..want
        };
        assert_eq!(parse_lock_info(&map).unwrap(), Some(with_maxhold));
        assert_eq!(parse_lock_info(&Value::Nil).unwrap(), None);
    }

    #[test]
    fn lock_info_garbage_is_a_protocol_failure() {
        for v in [
            Value::Int(3),
            Value::Array(vec![bulk("ttl"), Value::Int(1)]),
            Value::Array(vec![bulk("fence"), Value::Int(-1)]),
        ] {
            let e = parse_lock_info(&v).unwrap_err();
            assert_eq!(e.kind, NodeErrorKind::Protocol, "{v:?}");
        }
    }

    #[test]
    fn module_list_finds_the_lock_module() {
        let entry = |name: &str, ver: i64| {
            Value::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("ver"),
                Value::Int(ver),
                bulk("path"),
                bulk("/x.so"),
                bulk("args"),
                Value::Array(vec![]),
            ])
        };
        let list = Value::Array(vec![entry("ReJSON", 20_000), entry("lock", 1)]);
        assert_eq!(module_version(&list, "lock"), Some(1));
        assert_eq!(module_version(&list, "other"), None);
        assert_eq!(module_version(&Value::Array(vec![]), "lock"), None);
        let resp3 = Value::Array(vec![Value::Map(vec![
            (bulk("name"), bulk("lock")),
            (bulk("ver"), Value::Int(2)),
        ])]);
        assert_eq!(module_version(&resp3, "lock"), Some(2));
    }

    #[test]
    fn server_version_prefers_valkey() {
        let redis = "# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:0\r\n";
        assert_eq!(server_version(redis), "redis 7.0.15");
        let valkey =
            "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.1\r\n";
        assert_eq!(server_version(valkey), "valkey 8.1.1");
        assert_eq!(server_version(""), "unknown server");
    }

    #[test]
    fn verdict_table() {
        use NodeErrorKind::*;
        let t = |held, not_held, failed: &[NodeErrorKind]| Tally {
            held,
            not_held,
            failed: failed.to_vec(),
        };
        let cases = [
            // (tally, nodes, quorum, verdict)
            (t(5, 0, &[]), 5, 3, Ok(())),
            (t(3, 2, &[]), 5, 3, Ok(())),
            (t(3, 0, &[Connect, Connect]), 5, 3, Ok(())),
            (t(0, 5, &[]), 5, 3, Err(Failure::NotHeld)),
            (t(2, 3, &[]), 5, 3, Err(Failure::NotHeld)),
            (t(2, 2, &[Timeout]), 5, 3, Err(Failure::Unavailable)),
            (
                t(0, 0, &[Connect, Connect, Connect]),
                3,
                2,
                Err(Failure::Unavailable),
            ),
            (
                t(1, 0, &[ModuleNotLoaded, Connect]),
                3,
                2,
                Err(Failure::Misconfigured),
            ),
            (t(1, 0, &[]), 1, 1, Ok(())),
            (t(0, 1, &[]), 1, 1, Err(Failure::NotHeld)),
        ];
        for (tally, n, q, want) in cases {
            assert_eq!(verdict(&tally, n, q), want, "{tally:?} of {n}, quorum {q}");
        }
    }

    #[test]
    fn tally_counts_each_answer() {
        let results = vec![
            Ok(true),
            Ok(false),
            Ok(true),
            Err(NodeFailure::new(NodeErrorKind::Timeout, "x")),
        ];
        assert_eq!(
            Tally::of(&results),
            Tally {
                held: 2,
                not_held: 1,
                failed: vec![NodeErrorKind::Timeout]
            }
        );
    }
}
