//! Per-node reads for tools and operators: the lock as each node shows it
//! (`LOCK.INFO`), and each node's health (reachable, server, module, role,
//! rejoin or promotion delay). One request set per node, all nodes in
//! parallel, each bounded by the per-node timeouts. The reply parsers are
//! pure and tested without a server.

use std::collections::BTreeMap;
use std::time::Duration;

use redis::Value;

use crate::client::Client;
use crate::error::{Error, NodeError, NodeErrorKind};
use crate::node::Node;
use crate::nodeset::each;
use crate::proto::{pairs, value_text, Info};

/// A held lock as `LOCK.INFO` shows it on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockView {
    /// The fencing token of the grant on this node. Nodes number their own
    /// grants: after a fenced acquisition a quorum holds the lease's fence,
    /// a node granted after the quorum was reached may hold a lower one.
    pub fence: u64,
    /// A fingerprint of the holder's token (never the token).
    pub owner: String,
    /// Time left on this node.
    pub ttl: Duration,
    /// How long ago it was granted.
    pub held_for: Duration,
    pub extensions: u64,
    /// The grant's hold limit, if it has one.
    pub max_hold: Option<Duration>,
}

/// The lock on every node, in node order: `Ok(None)` where it is free.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LockViews {
    pub nodes: Vec<Result<Option<LockView>, NodeError>>,
    pub quorum: usize,
}

/// Who holds a lock across the nodes: the one reading of a node set's
/// answers that the tools share.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Holder {
    /// One owner (a token fingerprint) holds it on a quorum.
    Held { owner: String, on: usize },
    /// A quorum of nodes has it free.
    Free { on: usize },
    /// Neither: the nodes that answered do not agree on a quorum.
    Undecided {
        /// The owner on the most nodes, and on how many.
        top: Option<(String, usize)>,
        free: usize,
    },
}

impl LockViews {
    /// The views of `nodes` (in node order) under `quorum`.
    pub fn new(nodes: Vec<Result<Option<LockView>, NodeError>>, quorum: usize) -> Self {
        LockViews { nodes, quorum }
    }

    /// Nodes that did not answer.
    pub fn failed(&self) -> usize {
        self.nodes.iter().filter(|s| s.is_err()).count()
    }

    /// Who holds the lock on a quorum, if anyone.
    pub fn holder(&self) -> Holder {
        let mut by_owner: BTreeMap<&str, usize> = BTreeMap::new();
        let mut free = 0;
        for state in &self.nodes {
            match state {
                Ok(Some(v)) => *by_owner.entry(v.owner.as_str()).or_insert(0) += 1,
                Ok(None) => free += 1,
                Err(_) => {}
            }
        }
        let top = by_owner
            .iter()
            .max_by_key(|(_, count)| **count)
            .map(|(owner, count)| ((*owner).to_owned(), *count));
        match top {
            Some((owner, on)) if on >= self.quorum => Holder::Held { owner, on },
            _ if free >= self.quorum => Holder::Free { on: free },
            top => Holder::Undecided { top, free },
        }
    }

    /// Whether every node answered, a quorum did, or fewer.
    pub fn health(&self) -> Health {
        let answered = self.nodes.len() - self.failed();
        Health::of(answered, self.nodes.len(), self.quorum)
    }

    /// Whether the nodes holding the lock show different fences.
    pub fn fences_differ(&self) -> bool {
        let mut fences = self
            .nodes
            .iter()
            .filter_map(|s| s.as_ref().ok().and_then(Option::as_ref).map(|v| v.fence));
        let first = fences.next();
        fences.any(|f| Some(f) != first)
    }
}

/// How a node set stands against its quorum: the one reading of "every
/// node", "a quorum" and "fewer than a quorum" that the tools share (for
/// nodes that answered `LOCK.INFO`, or that are healthy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Every node is fine.
    All,
    /// Some are not, but a quorum is: locks still work.
    Quorum,
    /// Fewer than a quorum are: locks cannot be taken or read reliably.
    BelowQuorum,
}

impl Health {
    /// `ok` of `nodes` nodes are fine, `quorum` of them are needed.
    pub(crate) fn of(ok: usize, nodes: usize, quorum: usize) -> Health {
        if ok >= nodes {
            Health::All
        } else if ok >= quorum {
            Health::Quorum
        } else {
            Health::BelowQuorum
        }
    }

    /// A quorum (or every node) is fine.
    pub fn has_quorum(self) -> bool {
        self != Health::BelowQuorum
    }
}

/// What the module says about itself on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ModuleState {
    /// Loaded; its version when the user may read `MODULE LIST`.
    Loaded { version: Option<i64> },
    /// The node does not know the `LOCK.*` commands.
    NotLoaded,
    /// Could not be told (the node failed mid-way).
    Unknown(NodeError),
}

/// One node's health, as `redis-lock status` shows it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeHealth {
    /// The node's position and `host:port`.
    pub node: usize,
    pub addr: String,
    /// Reached and authenticated; else why not.
    pub reachable: Result<(), NodeError>,
    /// `redis 7.0.15`, `valkey 8.1.1`; else why it could not be read (a
    /// user without `INFO` permission).
    pub server: Result<String, NodeError>,
    /// Whether the module is loaded (told by a `LOCK.INFO` when the user
    /// may not run `MODULE LIST`).
    pub module: Option<ModuleState>,
    /// `master` or `slave`, when `INFO` could be read.
    pub role: Option<String>,
    /// How long the node still refuses new grants (its rejoin or promotion
    /// delay), when `INFO` could be read and the delay runs.
    pub refusing_for: Option<Duration>,
    /// The server's `run_id`: two addresses of one server show the same.
    pub run_id: Option<String>,
    /// The lock, when a key was asked for and the node reached.
    pub lock: Option<Result<Option<LockView>, NodeError>>,
}

impl NodeHealth {
    /// Reachable and the module loaded.
    pub fn healthy(&self) -> bool {
        self.reachable.is_ok() && matches!(self.module, Some(ModuleState::Loaded { .. }))
    }

    /// Why the node is not healthy, if it is not.
    pub fn failure_kind(&self) -> Option<NodeErrorKind> {
        match (&self.reachable, &self.module) {
            (Err(e), _) => Some(e.kind),
            (Ok(()), Some(ModuleState::Loaded { .. })) => None,
            (Ok(()), Some(ModuleState::NotLoaded)) => Some(NodeErrorKind::ModuleNotLoaded),
            (Ok(()), Some(ModuleState::Unknown(e))) => Some(e.kind),
            (Ok(()), None) => Some(NodeErrorKind::Protocol),
        }
    }
}

impl Client {
    /// `LOCK.INFO resource` on every node: the lock as each one shows it.
    pub async fn lock_info(&self, resource: &str) -> LockViews {
        let nodes = each(&self.inner.nodes, |n| async move {
            node_lock(&n, resource).await
        })
        .await;
        LockViews {
            nodes,
            quorum: self.inner.config.quorum,
        }
    }

    /// Whether every node of `probes` (from [`Client::probe`]) is healthy,
    /// a quorum is, or fewer.
    pub fn health(&self, probes: &[NodeHealth]) -> Health {
        let healthy = probes.iter().filter(|p| p.healthy()).count();
        Health::of(healthy, self.inner.nodes.len(), self.inner.config.quorum)
    }

    /// Each node's health, and with `resource` the lock on it. Works with
    /// the least-privileged user the docs recommend: what it may not read
    /// is reported as such, and the module is then told by `LOCK.INFO`.
    pub async fn probe(&self, resource: Option<&str>) -> Vec<NodeHealth> {
        each(&self.inner.nodes, |n| async move {
            probe_node(&n, resource).await
        })
        .await
    }
}

impl Client {
    /// Refuses a node set in which two entries are one server (`localhost`
    /// and `127.0.0.1`, a name and its address): each server's `run_id`
    /// tells. One server counted twice could make a quorum on its own.
    /// Only nodes already connected are compared (after [`Client::connect`]
    /// or an acquisition: one server that made a quorum twice is among
    /// them), so nodes that are down cost no wait; nor are nodes whose user
    /// may not run `INFO`.
    pub async fn check_distinct(&self) -> Result<(), Error> {
        let ids = each(&self.inner.nodes, |n| async move {
            if !n.may_be_connected() {
                return None;
            }
            let mut info = redis::cmd("INFO");
            info.arg("server");
            let text = value_text(&n.query(&info).await.ok()?);
            info_field(&text, "run_id")
        })
        .await;
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            let Some(id) = id else { continue };
            if let Some(first) = seen.insert(id, i) {
                let label = |i: usize| self.inner.nodes.get(i).map_or("?", |n| n.label.as_str());
                return Err(Error::Config {
                    reason: format!(
                        "nodes #{first} ({}) and #{i} ({}) are the same server (one run_id): \
                         one server must not count twice towards the quorum",
                        label(first),
                        label(i)
                    ),
                });
            }
        }
        Ok(())
    }
}

async fn node_lock(node: &Node, resource: &str) -> Result<Option<LockView>, NodeError> {
    node.call(&Info { key: resource }).await
}

async fn probe_node(node: &Node, resource: Option<&str>) -> NodeHealth {
    let mut health = NodeHealth {
        node: node.index,
        addr: node.label.clone(),
        reachable: Ok(()),
        server: Err(node.error(NodeErrorKind::Protocol, "not asked")),
        module: None,
        role: None,
        refusing_for: None,
        run_id: None,
        lock: None,
    };
    if let Err(e) = node.connect().await {
        health.server = Err(e.clone());
        health.reachable = Err(e);
        return health;
    }
    let mut info = redis::cmd("INFO");
    info.arg("server").arg("replication").arg("lock");
    match node.query(&info).await {
        Ok(v) => {
            let text = value_text(&v);
            let field = |name: &str| info_field(&text, name);
            health.server = Ok(server_version(&text));
            health.role = field("role");
            health.run_id = field("run_id");
            let left = ["lock_rejoin_delay_left_ms", "lock_promotion_delay_left_ms"]
                .iter()
                .filter_map(|f| field(f)?.parse::<u64>().ok())
                .max()
                .filter(|ms| *ms > 0);
            health.refusing_for = left.map(Duration::from_millis);
        }
        Err(e) if e.kind == NodeErrorKind::Permission => {
            health.server = Err(e.about("INFO", ""));
        }
        Err(e) => {
            health.server = Err(e.clone());
            health.reachable = Err(e);
            return health;
        }
    }
    let mut modules = redis::cmd("MODULE");
    modules.arg("LIST");
    health.module = Some(match node.query(&modules).await {
        Ok(v) => match module_version(&v, "lock") {
            Some(version) => ModuleState::Loaded {
                version: Some(version),
            },
            None => ModuleState::NotLoaded,
        },
        // Not allowed to list modules: a `LOCK.INFO` tells. A command the
        // server does not know is refused as unknown before any ACL check,
        // so even a NOPERM answer means the module is loaded.
        Err(e) if e.kind == NodeErrorKind::Permission => {
            match node_lock(node, resource.unwrap_or("redis-lock:probe")).await {
                Ok(_) => ModuleState::Loaded { version: None },
                Err(e) if e.kind == NodeErrorKind::Permission => {
                    ModuleState::Loaded { version: None }
                }
                Err(e) if e.kind == NodeErrorKind::ModuleNotLoaded => ModuleState::NotLoaded,
                Err(e) => ModuleState::Unknown(e),
            }
        }
        Err(e) => ModuleState::Unknown(e),
    });
    if let Some(resource) = resource {
        health.lock = Some(node_lock(node, resource).await);
    }
    health
}

/// The version of module `name` in a `MODULE LIST` reply, `None` if it is
/// not loaded.
fn module_version(v: &Value, name: &str) -> Option<i64> {
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

fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
        .map(str::to_owned)
}

/// `valkey 8.1.1` or `redis 7.0.15` from the text of `INFO server`.
fn server_version(info: &str) -> String {
    match (
        info_field(info, "valkey_version"),
        info_field(info, "redis_version"),
    ) {
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
    fn module_list_finds_the_lock_module() {
        let entry = |name: &str, ver: i64| {
            Value::Array(vec![
                bulk("name"),
                bulk(name),
                bulk("ver"),
                Value::Int(ver),
                bulk("path"),
                bulk("/x.so"),
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
        let redis = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc\r\n";
        assert_eq!(server_version(redis), "redis 7.0.15");
        assert_eq!(info_field(redis, "run_id").as_deref(), Some("abc"));
        let valkey =
            "# Server\r\nredis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.1.1\r\n";
        assert_eq!(server_version(valkey), "valkey 8.1.1");
        assert_eq!(server_version(""), "unknown server");
    }

    fn held(owner: &str, fence: u64) -> Result<Option<LockView>, NodeError> {
        Ok(Some(LockView {
            fence,
            owner: owner.into(),
            ..LockView::default()
        }))
    }

    fn down() -> Result<Option<LockView>, NodeError> {
        Err(NodeError::new(
            0,
            "x:1",
            NodeErrorKind::Connect,
            "refused".into(),
        ))
    }

    #[test]
    fn health_counts_against_the_quorum() {
        let cases = [
            ((3, 3, 2), Health::All, true),
            ((2, 3, 2), Health::Quorum, true),
            ((1, 3, 2), Health::BelowQuorum, false),
            ((0, 1, 1), Health::BelowQuorum, false),
            ((3, 5, 3), Health::Quorum, true),
            ((2, 5, 3), Health::BelowQuorum, false),
        ];
        for ((ok, nodes, quorum), want, has) in cases {
            let got = Health::of(ok, nodes, quorum);
            assert_eq!(got, want, "{ok} of {nodes}, quorum {quorum}");
            assert_eq!(got.has_quorum(), has);
        }
        let views = LockViews::new(vec![Ok(None), down(), held("aa", 1)], 2);
        assert_eq!(views.health(), Health::Quorum);
    }

    #[test]
    fn holder_is_decided_by_a_quorum() {
        let views = |nodes| LockViews { nodes, quorum: 2 };
        let cases = [
            (
                vec![held("aa", 5), held("aa", 7), down()],
                Holder::Held {
                    owner: "aa".into(),
                    on: 2,
                },
                true,
            ),
            (
                vec![Ok(None), Ok(None), Ok(None)],
                Holder::Free { on: 3 },
                false,
            ),
            (
                vec![held("aa", 5), Ok(None), down()],
                Holder::Undecided {
                    top: Some(("aa".into(), 1)),
                    free: 1,
                },
                false,
            ),
            (
                vec![down(), down(), Ok(None)],
                Holder::Undecided { top: None, free: 1 },
                false,
            ),
        ];
        for (nodes, want, differ) in cases {
            let v = views(nodes);
            assert_eq!(v.holder(), want);
            assert_eq!(v.fences_differ(), differ);
        }
    }
}
