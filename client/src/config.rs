//! Configuration: node addresses, timeouts, retries, drift, quorum.
//!
//! Built with [`Config::builder`]; every mistake comes back from
//! [`ConfigBuilder::build`] as an [`Error::Config`] value.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::error::Error;
use crate::quorum;

/// Default per-node connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
/// Default per-node request timeout: far below any sensible TTL.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_millis(50);
/// Default base delay between acquisition rounds.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(50);
/// Default random extra delay between rounds (uniform in `[0, jitter]`).
pub const DEFAULT_RETRY_JITTER: Duration = Duration::from_millis(100);
/// Default drift factor: 1% of the TTL ...
pub const DEFAULT_DRIFT_FACTOR: f64 = 0.01;
/// ... plus 2 ms.
pub const DEFAULT_DRIFT_FIXED: Duration = Duration::from_millis(2);
/// Default wait budget of [`crate::Client::with_lock`].
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// Default bound on how long automatic extension keeps a lock: none, as
/// for `redis-lock run` (set [`ConfigBuilder::max_hold`] to bound it).
pub const DEFAULT_MAX_HOLD: Duration = Duration::MAX;

/// Node addresses: a comma-separated string (`"redis://a:6379,redis://b:6379"`),
/// or a list (`Vec`, slice or array) of strings, one address each.
pub trait IntoNodeAddrs {
    fn into_node_addrs(self) -> Vec<String>;
}

impl IntoNodeAddrs for &str {
    fn into_node_addrs(self) -> Vec<String> {
        self.split(',').map(|s| s.trim().to_owned()).collect()
    }
}

impl IntoNodeAddrs for String {
    fn into_node_addrs(self) -> Vec<String> {
        self.as_str().into_node_addrs()
    }
}

impl IntoNodeAddrs for &String {
    fn into_node_addrs(self) -> Vec<String> {
        self.as_str().into_node_addrs()
    }
}

impl<T: AsRef<str>> IntoNodeAddrs for Vec<T> {
    fn into_node_addrs(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().trim().to_owned()).collect()
    }
}

impl<T: AsRef<str>> IntoNodeAddrs for &[T] {
    fn into_node_addrs(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().trim().to_owned()).collect()
    }
}

impl<T: AsRef<str>, const N: usize> IntoNodeAddrs for [T; N] {
    fn into_node_addrs(self) -> Vec<String> {
        self.iter().map(|s| s.as_ref().trim().to_owned()).collect()
    }
}

/// One node: where to connect and how to name it in logs and errors.
#[derive(Clone)]
pub(crate) struct NodeSpec {
    pub(crate) info: ConnectionInfo,
    /// `host:port` (or the socket path): never the credentials.
    pub(crate) label: String,
}

impl fmt::Debug for NodeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// A checked configuration. Build it with [`Config::builder`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    pub(crate) nodes: Vec<NodeSpec>,
    pub(crate) quorum: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) retry_count: Option<u32>,
    pub(crate) retry_delay: Duration,
    pub(crate) retry_jitter: Duration,
    pub(crate) drift_factor: f64,
    pub(crate) drift_fixed: Duration,
    pub(crate) default_wait: Duration,
    pub(crate) max_hold: Duration,
    pub(crate) fenced: bool,
    pub(crate) server_wait: bool,
    /// Certificates for `rediss://` nodes: a CA to trust instead of the
    /// system's, a client certificate and key.
    pub(crate) tls: Option<Tls>,
}

/// PEM contents read from the configured files.
#[derive(Clone, Default)]
pub(crate) struct Tls {
    pub(crate) ca: Option<Vec<u8>>,
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

impl Config {
    /// Starts a configuration from node addresses (`redis://` or `rediss://`
    /// URLs, with credentials and database if needed).
    ///
    /// ```
    /// # use redis_lock_client::Config;
    /// let config = Config::builder("redis://127.0.0.1:7001, redis://127.0.0.1:7002, redis://127.0.0.1:7003")
    ///     .request_timeout(std::time::Duration::from_millis(20))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(config.nodes(), 3);
    /// assert_eq!(config.quorum(), 2);
    /// ```
    pub fn builder(nodes: impl IntoNodeAddrs) -> ConfigBuilder {
        ConfigBuilder::new(nodes.into_node_addrs())
    }

    /// A configuration with every default, from node addresses.
    pub fn from_urls(nodes: impl IntoNodeAddrs) -> Result<Config, Error> {
        Config::builder(nodes).build()
    }

    /// The number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The `host:port` of each node, in order (the indexes used in errors
    /// and leases).
    pub fn node_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.label.clone()).collect()
    }

    /// How many nodes must agree.
    pub fn quorum(&self) -> usize {
        self.quorum
    }

    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The clock drift allowed for a lock of `ttl`.
    pub fn drift(&self, ttl: Duration) -> Duration {
        quorum::drift(ttl, self.drift_factor, self.drift_fixed)
    }

    /// The wait budget of [`crate::Client::acquire_default`] and
    /// [`crate::Client::with_lock`].
    pub fn default_wait(&self) -> Duration {
        self.default_wait
    }

    /// At most this many rounds after the first (`None`: only the wait
    /// budget limits them).
    pub fn retry_count(&self) -> Option<u32> {
        self.retry_count
    }

    /// Base delay between rounds when polling.
    pub fn retry_delay(&self) -> Duration {
        self.retry_delay
    }

    /// Random extra delay between rounds, uniform in `[0, jitter]`.
    pub fn retry_jitter(&self) -> Duration {
        self.retry_jitter
    }

    pub fn max_hold(&self) -> Duration {
        self.max_hold
    }

    /// Whether [`crate::Client::acquire`] waits in the nodes' queues
    /// (`LOCK.ACQUIRE ... WAIT`) rather than polling.
    pub fn server_wait(&self) -> bool {
        self.server_wait
    }

    /// Whether acquisition raises the granting nodes to a common fence, so
    /// that fences increase across the node set (the default).
    pub fn fenced(&self) -> bool {
        self.fenced
    }

    pub(crate) fn backoff(&self) -> quorum::Backoff {
        quorum::Backoff {
            base: self.retry_delay,
            jitter: self.retry_jitter,
        }
    }
}

/// Builder for [`Config`]; each setter takes and returns the builder.
#[derive(Clone)]
#[must_use]
pub struct ConfigBuilder {
    addrs: Vec<String>,
    extra: Vec<ConnectionInfo>,
    username: Option<String>,
    password: Option<String>,
    quorum: Option<usize>,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry_count: Option<u32>,
    retry_delay: Duration,
    retry_jitter: Duration,
    drift_factor: f64,
    drift_fixed: Duration,
    default_wait: Duration,
    max_hold: Duration,
    fenced: bool,
    server_wait: bool,
    tls_ca: Option<std::path::PathBuf>,
    tls_client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Addresses may carry passwords: show only how many there are.
        f.debug_struct("ConfigBuilder")
            .field("nodes", &(self.addrs.len() + self.extra.len()))
            .field("quorum", &self.quorum)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl ConfigBuilder {
    fn new(addrs: Vec<String>) -> Self {
        ConfigBuilder {
            addrs,
            extra: Vec::new(),
            username: None,
            password: None,
            quorum: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            retry_count: None,
            retry_delay: DEFAULT_RETRY_DELAY,
            retry_jitter: DEFAULT_RETRY_JITTER,
            drift_factor: DEFAULT_DRIFT_FACTOR,
            drift_fixed: DEFAULT_DRIFT_FIXED,
            default_wait: DEFAULT_WAIT,
            max_hold: DEFAULT_MAX_HOLD,
            fenced: true,
            server_wait: true,
            tls_ca: None,
            tls_client: None,
        }
    }

    /// For `rediss://` nodes: trust the CA certificate(s) in this PEM file
    /// instead of the system's.
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.tls_ca = Some(path.into());
        self
    }

    /// For `rediss://` nodes that ask for one (`tls-auth-clients`): the
    /// client certificate and its private key, PEM files.
    pub fn tls_client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.tls_client = Some((cert.into(), key.into()));
        self
    }

    /// Adds one node given as a `redis::ConnectionInfo`.
    pub fn node(mut self, info: ConnectionInfo) -> Self {
        self.extra.push(info);
        self
    }

    /// Username for the nodes whose address has none.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Password for the nodes whose address has none.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// How many nodes must agree; a strict majority of the nodes at least
    /// (anything less would let two holders win). Default: `N/2 + 1`.
    pub fn quorum(mut self, quorum: usize) -> Self {
        self.quorum = Some(quorum);
        self
    }

    /// Per-node limit on establishing a connection (including the handshake).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Per-node limit on one request.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// At most this many rounds after the first in [`crate::Client::acquire`]
    /// (default: no limit but the wait budget).
    pub fn retry_count(mut self, retries: u32) -> Self {
        self.retry_count = Some(retries);
        self
    }

    /// Base delay between rounds.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Random extra delay between rounds, uniform in `[0, jitter]`.
    pub fn retry_jitter(mut self, jitter: Duration) -> Self {
        self.retry_jitter = jitter;
        self
    }

    /// Clock drift allowance: `factor * ttl + fixed` (default `0.01 * ttl + 2 ms`).
    pub fn drift(mut self, factor: f64, fixed: Duration) -> Self {
        self.drift_factor = factor;
        self.drift_fixed = fixed;
        self
    }

    /// Wait budget of [`crate::Client::with_lock`] and
    /// [`crate::Client::acquire_default`] (default 10 s).
    pub fn default_wait(mut self, wait: Duration) -> Self {
        self.default_wait = wait;
        self
    }

    /// Automatic extension stops once holding longer would pass this bound
    /// (default: no bound, `Duration::MAX`, as for `redis-lock run`).
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = max_hold;
        self
    }

    /// Wait for a taken lock in the nodes' FIFO queues (`LOCK.ACQUIRE ...
    /// WAIT`), woken the moment it is freed (default), or poll with
    /// randomized backoff (`false`). Waits run on waiting connections of
    /// their own (a blocked request holds up its connection), kept per node
    /// and reused, and closed after 30 s unused.
    pub fn server_wait(mut self, on: bool) -> Self {
        self.server_wait = on;
        self
    }

    /// Fenced acquisition (default `true`): after a won round the client
    /// takes the largest fence `T` among the granting nodes and raises every
    /// granting node below it to `T` (`LOCK.ACQUIRE ... FENCE T`); the lease
    /// is handed out only once a quorum holds `T`, and its fence is `T`.
    /// Fences then increase across the whole node set: a lease granted
    /// after another ended has a greater fence, whichever majorities granted
    /// them (docs/DESIGN.md, "Fencing tokens").
    ///
    /// `false` saves that round trip (when the fences differ, which is
    /// nearly always on more than one node), and the lease's fence is then
    /// only the largest of its granting nodes' fences: monotonic per node,
    /// not across the set. Use it only when nothing checks the fence.
    pub fn fenced(mut self, fenced: bool) -> Self {
        self.fenced = fenced;
        self
    }

    /// Checks everything and returns the configuration.
    pub fn build(self) -> Result<Config, Error> {
        let mut infos = Vec::with_capacity(self.addrs.len() + self.extra.len());
        for (i, addr) in self.addrs.iter().enumerate() {
            if addr.is_empty() {
                return Err(Error::config(format!("node address #{i} is empty")));
            }
            // The address may contain a password: report the position and
            // the parser's complaint, never the address itself.
            let schemes = ["redis://", "rediss://", "unix://", "redis+unix://"];
            if !schemes.iter().any(|s| addr.starts_with(s)) {
                return Err(Error::config(format!(
                    "node address #{i} is not a Redis URL: write each node as \
                     redis://[user:password@]host:port[/db], or rediss:// for TLS \
                     (e.g. redis://localhost:6379)"
                )));
            }
            let info = addr.as_str().into_connection_info().map_err(|e| {
                Error::config(format!(
                    "node address #{i} is not a valid Redis URL ({e}): write each node as \
                     redis://[user:password@]host:port[/db], or rediss:// for TLS"
                ))
            })?;
            infos.push(info);
        }
        infos.extend(self.extra);
        if infos.is_empty() {
            return Err(Error::config("no node addresses"));
        }

        let mut nodes = Vec::with_capacity(infos.len());
        let mut seen = HashSet::new();
        for (i, info) in infos.into_iter().enumerate() {
            let addr = info.addr();
            if !addr.is_supported() {
                return Err(Error::config(format!(
                    "node #{i} ({addr}): this address type is not supported by this build \
                     (rediss:// needs the `tls` feature)"
                )));
            }
            let label = match addr {
                ConnectionAddr::Unix(path) => format!("unix:{}", path.display()),
                other => other.to_string(),
            };
            // Two databases of one server are one failure domain: counting
            // them as two nodes would make the quorum a lie.
            if !seen.insert(label.clone()) {
                return Err(Error::config(format!(
                    "node #{i} ({label}) is listed twice: one server must not count twice towards the quorum"
                )));
            }
            let mut redis = info.redis_settings().clone();
            if redis.username().is_none() {
                if let Some(u) = &self.username {
                    redis = redis.set_username(u);
                }
            }
            if redis.password().is_none() {
                if let Some(p) = &self.password {
                    redis = redis.set_password(p);
                }
            }
            nodes.push(NodeSpec {
                info: info.set_redis_settings(redis),
                label,
            });
        }

        let n = nodes.len();
        if n > crate::nodeset::NodeMask::MAX {
            return Err(Error::config(format!(
                "{n} nodes: at most {} are supported",
                crate::nodeset::NodeMask::MAX
            )));
        }
        let quorum = self.quorum.unwrap_or_else(|| quorum::majority(n));
        if quorum > n {
            return Err(Error::config(format!(
                "quorum {quorum} is larger than the {n} nodes"
            )));
        }
        if quorum < quorum::majority(n) {
            return Err(Error::config(format!(
                "quorum {quorum} of {n} nodes is not a majority (at least {} needed): two holders could both win",
                quorum::majority(n)
            )));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::config("connect timeout must be positive"));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::config("request timeout must be positive"));
        }
        if !(self.drift_factor.is_finite() && (0.0..1.0).contains(&self.drift_factor)) {
            return Err(Error::config(format!(
                "drift factor {} is not in [0, 1)",
                self.drift_factor
            )));
        }
        if self.max_hold.is_zero() {
            return Err(Error::config("maximum hold must be positive"));
        }
        let read = |what: &str, path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| Error::config(format!("{what} {}: {e}", path.display())))
        };
        let tls = if self.tls_ca.is_some() || self.tls_client.is_some() {
            Some(Tls {
                ca: match &self.tls_ca {
                    Some(p) => Some(read("TLS CA file", p)?),
                    None => None,
                },
                client: match &self.tls_client {
                    Some((c, k)) => Some((
                        read("TLS client certificate", c)?,
                        read("TLS client key", k)?,
                    )),
                    None => None,
                },
            })
        } else {
            None
        };
        Ok(Config {
            nodes,
            quorum,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            retry_count: self.retry_count,
            retry_delay: self.retry_delay,
            retry_jitter: self.retry_jitter,
            drift_factor: self.drift_factor,
            drift_fixed: self.drift_fixed,
            default_wait: self.default_wait,
            max_hold: self.max_hold,
            server_wait: self.server_wait,
            fenced: self.fenced,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn err(b: ConfigBuilder) -> String {
        match b.build() {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => {
                assert!(matches!(e, Error::Config { .. }), "{e:?}");
                e.to_string()
            }
        }
    }

    #[test]
    fn comma_separated_string_and_lists_agree() {
        let a = Config::from_urls("redis://127.0.0.1:1, redis://127.0.0.1:2,redis://127.0.0.1:3")
            .unwrap();
        let b = Config::from_urls(vec![
            "redis://127.0.0.1:1",
            "redis://127.0.0.1:2",
            "redis://127.0.0.1:3",
        ])
        .unwrap();
        let c = Config::from_urls([
            String::from("redis://127.0.0.1:1"),
            String::from("redis://127.0.0.1:2"),
            String::from("redis://127.0.0.1:3"),
        ])
        .unwrap();
        for cfg in [&a, &b, &c] {
            assert_eq!(
                cfg.node_addrs(),
                vec!["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            );
            assert_eq!(cfg.quorum(), 2);
        }
    }

    #[test]
    fn defaults() {
        let c = Config::from_urls("redis://127.0.0.1:1").unwrap();
        assert_eq!(c.quorum(), 1);
        assert_eq!(c.request_timeout(), Duration::from_millis(50));
        assert_eq!(c.drift(Duration::from_secs(10)), Duration::from_millis(102));
        assert!(c.fenced());
        let unfenced = Config::builder("redis://127.0.0.1:1")
            .fenced(false)
            .build()
            .unwrap();
        assert!(!unfenced.fenced());
        let five = Config::from_urls(
            (1..=5)
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(five.quorum(), 3);
    }

    #[test]
    fn credentials_fill_in_only_where_missing() {
        let c = Config::builder("redis://alice:secret@127.0.0.1:1, redis://127.0.0.1:2/3")
            .username("bob")
            .password("pw")
            .build()
            .unwrap();
        let r0 = c.nodes[0].info.redis_settings();
        assert_eq!(
            (r0.username(), r0.password()),
            (Some("alice"), Some("secret"))
        );
        let r1 = c.nodes[1].info.redis_settings();
        assert_eq!(
            (r1.username(), r1.password(), r1.db()),
            (Some("bob"), Some("pw"), 3)
        );
        // Labels never carry credentials.
        assert_eq!(c.node_addrs(), vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn invalid_configurations_are_errors() {
        let cases: Vec<(ConfigBuilder, &str)> = vec![
            (Config::builder(""), "#0 is empty"),
            (Config::builder(Vec::<String>::new()), "no node addresses"),
            (Config::builder("redis://127.0.0.1:1,"), "#1 is empty"),
            (
                Config::builder("http://127.0.0.1:1"),
                "#0 is not a Redis URL",
            ),
            (Config::builder("not a url"), "#0 is not a Redis URL"),
            (
                Config::builder("redis://127.0.0.1:1,redis://127.0.0.1:1"),
                "listed twice",
            ),
            (
                Config::builder("redis://127.0.0.1:1,redis://127.0.0.1:2").quorum(1),
                "not a majority",
            ),
            (
                Config::builder("redis://127.0.0.1:1,redis://127.0.0.1:2,redis://127.0.0.1:3")
                    .quorum(4),
                "larger than",
            ),
            (
                Config::builder("redis://127.0.0.1:1").request_timeout(Duration::ZERO),
                "request timeout",
            ),
            (
                Config::builder("redis://127.0.0.1:1").connect_timeout(Duration::ZERO),
                "connect timeout",
            ),
            (
                Config::builder("redis://127.0.0.1:1").drift(1.5, Duration::ZERO),
                "drift factor",
            ),
            (
                Config::builder("redis://127.0.0.1:1").drift(f64::NAN, Duration::ZERO),
                "drift factor",
            ),
            (
                Config::builder("redis://127.0.0.1:1").max_hold(Duration::ZERO),
                "maximum hold",
            ),
        ];
        for (builder, want) in cases {
            let text = err(builder);
            assert!(text.contains(want), "{text:?} should contain {want:?}");
        }
    }

    #[test]
    fn parse_errors_do_not_echo_passwords() {
        let text = err(Config::builder("redis://u:hunter2@127.0.0.1:notaport"));
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn one_server_twice_is_rejected_even_with_another_db() {
        let text = err(Config::builder(
            "redis://127.0.0.1:1/0,redis://127.0.0.1:1/1",
        ));
        assert!(text.contains("listed twice"), "{text}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_urls_parse() {
        let c = Config::from_urls("rediss://127.0.0.1:1,rediss://127.0.0.1:2,rediss://127.0.0.1:3")
            .unwrap();
        assert_eq!(c.nodes(), 3);
    }
}
