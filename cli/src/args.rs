//! The command line: flags, their environment variables and the help texts.

use std::ffi::OsString;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::duration;

const EXAMPLES: &str = "\
Examples:
  export REDIS_LOCK_NODES=redis://10.0.0.1:6379,redis://10.0.0.2:6379,redis://10.0.0.3:6379

  # Only one machine runs the nightly sync; the others wait up to 10 minutes.
  redis-lock run --key nightly-sync --ttl 30s --wait 10m -- /usr/local/bin/sync.sh

  # From a shell script: take the lock (or stop: eval fails with 75 when
  # another holds it, with 69/78/64 on other errors), renew it, release it.
  eval \"$(redis-lock acquire --key reports --ttl 2m)\" || exit
  redis-lock extend --key reports --token \"$REDIS_LOCK_TOKEN\" --ttl 2m
  redis-lock release --key reports --token \"$REDIS_LOCK_TOKEN\"

  # Which nodes are up, have the module, and who holds a lock.
  redis-lock status --key nightly-sync";

fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match duration::parse(s)? {
        d if d.is_zero() => Err("must be longer than 0".into()),
        d => Ok(d),
    }
}

/// Distributed locks on redis-lock nodes: a flock across machines.
///
/// The lock is taken on a majority of independent Redis/Valkey nodes that run
/// the redis-lock module (the Redlock quorum), with a fencing token that grows
/// with every new holder.
#[derive(Debug, Parser)]
#[command(mut_subcommands(without_node_flags))]
#[command(name = "redis-lock", version, after_long_help = format!("{EXAMPLES}\n\n{}", crate::exit::TABLE))]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the nodes are and how to talk to them; for every subcommand.
#[derive(Debug, Args)]
pub struct Global {
    /// The nodes: comma-separated redis:// or rediss:// URLs (with user,
    /// password and database if needed). A majority must agree for a lock.
    #[arg(
        short,
        long,
        env = "REDIS_LOCK_NODES",
        global = true,
        value_name = "URLS"
    )]
    pub nodes: Option<String>,

    /// User for the nodes whose URL has none.
    #[arg(long, env = "REDIS_LOCK_USERNAME", global = true)]
    pub username: Option<String>,

    /// Password for the nodes whose URL has none (prefer the environment
    /// variable: the command line is visible to other users).
    #[arg(
        long,
        env = "REDIS_LOCK_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub password: Option<String>,

    /// For rediss:// nodes: trust the CA certificate(s) in this PEM file
    /// instead of the system's.
    #[arg(long, env = "REDIS_LOCK_TLS_CA", global = true, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// For rediss:// nodes that require a client certificate: its PEM file
    /// (with --tls-key).
    #[arg(
        long,
        env = "REDIS_LOCK_TLS_CERT",
        global = true,
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert, a PEM file.
    #[arg(
        long,
        env = "REDIS_LOCK_TLS_KEY",
        global = true,
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<std::path::PathBuf>,

    /// Limit on one request to one node.
    #[arg(long, env = "REDIS_LOCK_TIMEOUT", global = true, default_value = "250ms", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// Limit on connecting to one node.
    #[arg(long, env = "REDIS_LOCK_CONNECT_TIMEOUT", global = true, default_value = "500ms", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,

    /// Pause between rounds when a round fails while waiting (nodes down or
    /// refusing; plus up to as much again at random). The wait itself is in
    /// the nodes' queues: no polling. Rarely needed, so not in --help.
    #[arg(long, env = "REDIS_LOCK_RETRY", global = true, default_value = "100ms", value_parser = parse_duration, value_name = "DURATION", hide = true)]
    pub retry: Duration,
}

/// For the subcommands that talk to no node (`completions`, `man`): the
/// global node flags stay accepted, but their help does not list them. A
/// subcommand's own hidden copy of a global flag keeps clap from adding
/// the shown one.
fn without_node_flags(cmd: clap::Command) -> clap::Command {
    if !matches!(cmd.get_name(), "completions" | "man") {
        return cmd;
    }
    let globals = Global::augment_args(clap::Command::new("globals"));
    globals.get_arguments().fold(cmd, |cmd, arg| {
        cmd.arg(arg.clone().global(false).hide(true))
    })
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Run(RunArgs),
    Acquire(AcquireArgs),
    Extend(ExtendArgs),
    Release(ReleaseArgs),
    Info(InfoArgs),
    Status(StatusArgs),
    Completions(CompletionsArgs),
    #[command(hide = true)]
    Man(ManArgs),
}

/// Run a command while holding the lock; release it when the command exits.
///
/// Waits up to --wait for the lock, then starts the command in its own
/// process group with REDIS_LOCK_FENCE (the fencing token: pass it to the
/// storage you protect) and REDIS_LOCK_KEY in its environment. The lease is
/// renewed in the background every third of --ttl. When the command exits,
/// the lock is released and redis-lock exits with the command's status.
///
/// The holder's token is NOT given to the command (REDIS_LOCK_TOKEN is
/// removed from its environment): the token is the capability to extend
/// and release the lock, and stays inside redis-lock.
///
/// The command runs under a watchdog (a second redis-lock process, outside
/// redis-lock's process group) that redis-lock tells the lease's validity
/// after every renewal. If the lease is not renewed in time (nodes down,
/// the key deleted, --max-hold reached, redis-lock killed with kill -9,
/// stopped with SIGSTOP or Ctrl-Z, or starved), the command's process group
/// and every process it started get SIGTERM, then SIGKILL after
/// --kill-grace, so that they are dead before the lease ends: the grace is
/// at most a third of --ttl, and SIGTERM comes that long before the end of
/// the lease. redis-lock then exits with status 76. A command that exits
/// leaving processes behind has them stopped the same way before the lock
/// is released. SIGINT, SIGTERM and SIGHUP sent to redis-lock are
/// forwarded to the group, as are SIGTSTP and SIGCONT (job control); the
/// lock is released once the command exits.
///
/// A process that escapes the tree (handed to another service) or a whole
/// machine paused past the lease is not stopped: pass REDIS_LOCK_FENCE to
/// the resource you protect and have it refuse older fences.
///
/// The command should not read from the terminal: it is not in the
/// terminal's foreground process group.
#[derive(Debug, Args)]
#[command(after_long_help = format!("Examples:
  redis-lock run --key nightly-sync --wait 10m -- /usr/local/bin/sync.sh
  redis-lock run -k backup --ttl 1m --max-hold 2h -- sh -c 'pg_dump ... --fence \"$REDIS_LOCK_FENCE\"'

{}", crate::exit::TABLE))]
pub struct RunArgs {
    #[command(flatten)]
    pub lock: LockArgs,

    #[command(flatten)]
    pub waiting: WaitArgs,

    /// Stop renewing after this long: the lock then runs out and the command
    /// is stopped as on any loss. Default: no limit.
    #[arg(long, env = "REDIS_LOCK_MAX_HOLD", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub max_hold: Option<Duration>,

    /// How long the command has between SIGTERM and SIGKILL when it must
    /// stop; at most a third of --ttl, so that it is dead before the lease
    /// ends.
    #[arg(long, env = "REDIS_LOCK_KILL_GRACE", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub kill_grace: Duration,

    /// Say on stderr when the lock is acquired and released.
    #[arg(short, long)]
    pub verbose: bool,

    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
}

/// How to wait for a lock another holds (flags as in flock(1)).
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// How long to wait, in the nodes' queues, for the lock if another holds
    /// it (like flock -w; 0: do not wait).
    #[arg(short, long, env = "REDIS_LOCK_WAIT", default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub wait: Duration,

    /// Fail at once if another holds the lock (like flock -n): --wait 0.
    #[arg(long)]
    pub nonblock: bool,

    /// Exit status when another holds the lock until the wait runs out
    /// (like flock -E).
    #[arg(short = 'E', long, default_value_t = crate::exit::NOT_ACQUIRED, value_name = "STATUS")]
    pub conflict_exit_code: u8,
}

impl WaitArgs {
    /// The wait budget: none with --nonblock.
    pub fn budget(&self) -> Duration {
        if self.nonblock {
            Duration::ZERO
        } else {
            self.wait
        }
    }
}

/// The lock's key and lease length.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name (the key on every node).
    #[arg(short, long)]
    pub key: String,

    /// Lease length: without renewal the lock runs out this long after it
    /// was taken. Far longer than the per-node --timeout.
    #[arg(short, long, env = "REDIS_LOCK_TTL", default_value = "30s", value_parser = parse_positive_duration, value_name = "DURATION")]
    pub ttl: Duration,
}

/// Take the lock and print shell assignments for it (for `eval`).
///
/// Prints REDIS_LOCK_KEY, REDIS_LOCK_TOKEN (the secret that extends and
/// releases this lease), REDIS_LOCK_FENCE (the fencing token) and
/// REDIS_LOCK_VALIDITY_MS (how long the lease can be relied on from now).
/// Nothing renews the lease: extend it before it runs out, release it when
/// done.
///
/// When the lock is not acquired, or on any error, it prints a command that
/// fails with the exit status instead (75 when another holds the lock), so
/// that `eval` fails too and `|| exit` or `set -e` stop the script.
#[derive(Debug, Args)]
#[command(after_long_help = "Example:
  $ redis-lock acquire --key reports --ttl 2m
  REDIS_LOCK_KEY=reports
  REDIS_LOCK_TOKEN=6b1f0c...e29a
  REDIS_LOCK_FENCE=1795326391278776
  REDIS_LOCK_VALIDITY_MS=118780
  $ eval \"$(redis-lock acquire --key reports --ttl 2m)\" || exit")]
pub struct AcquireArgs {
    #[command(flatten)]
    pub lock: LockArgs,

    #[command(flatten)]
    pub waiting: WaitArgs,
}

/// Extend a lease taken by `acquire`: its TTL starts again from now.
///
/// Exit status 0 if a quorum of nodes still held the lock for this token and
/// extended it, 1 if not (it had run out, was released, or is held by
/// another).
#[derive(Debug, Args)]
pub struct ExtendArgs {
    #[command(flatten)]
    pub lock: LockArgs,

    /// The token printed by `acquire`.
    #[arg(long, env = "REDIS_LOCK_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// Release a lease taken by `acquire`.
///
/// Exit status 0 if a quorum of nodes held the lock for this token (it is
/// now free), 1 if not (it had already run out, been released, or is held
/// by another).
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The lock's name.
    #[arg(short, long)]
    pub key: String,

    /// The token printed by `acquire`.
    #[arg(long, env = "REDIS_LOCK_TOKEN", hide_env_values = true)]
    pub token: String,
}

/// Show the lock on every node (LOCK.INFO): fence, owner fingerprint, TTL.
///
/// The owner is a fingerprint of the holder's token, never the token.
/// Exit status as for `status`: 0 if every node answered, 1 if some did not
/// but a quorum did, 69 or 78 if fewer than a quorum did.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The lock's name.
    #[arg(short, long)]
    pub key: String,
}

/// Show each node: reachable, server version, module loaded, and a lock.
///
/// Exit status 0 if every node is healthy, 1 if some are not but a quorum
/// is, 69 or 78 if fewer than a quorum are.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Also show this lock on each node.
    #[arg(short, long)]
    pub key: Option<String>,
}

/// Print a shell completion script.
///
/// bash: redis-lock completions bash > /etc/bash_completion.d/redis-lock
/// zsh:  redis-lock completions zsh > "${fpath[1]}/_redis-lock"
/// fish: redis-lock completions fish > ~/.config/fish/completions/redis-lock.fish
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

/// Print the redis-lock(1) manual page (roff), generated from this tool's
/// own definition: redis-lock man > redis-lock.1
#[derive(Debug, Args)]
pub struct ManArgs {}

#[cfg(test)]
mod tests {

    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("redis-lock").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_the_command_after_the_flags() {
        let cli = parse(&[
            "-n",
            "redis://a",
            "run",
            "-k",
            "job",
            "--ttl",
            "2s",
            "--wait",
            "10m",
            "--",
            "sh",
            "-c",
            "echo --ttl",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.lock.key, "job");
        assert_eq!(run.lock.ttl, Duration::from_secs(2));
        assert_eq!(run.waiting.budget(), Duration::from_secs(600));
        assert_eq!(run.waiting.conflict_exit_code, 75);
        assert_eq!(run.kill_grace, Duration::from_secs(5));
        assert_eq!(run.max_hold, None);
        assert_eq!(run.command, ["sh", "-c", "echo --ttl"]);
        // Without `--` too: everything from the first word on is the command.
        let cli = parse(&["run", "-k", "job", "ls", "-l"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.command, ["ls", "-l"]);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        let cases: [&[&str]; 6] = [
            &["run", "-k", "j", "--ttl", "30", "--", "true"],
            &["run", "-k", "j", "--ttl", "0s", "--", "true"],
            &["run", "-k", "j"],
            &["run", "--", "true"],
            &["acquire", "-k", "j", "--wait", "soon"],
            &["completions", "tcsh"],
        ];
        for args in cases {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn node_flags_are_not_listed_for_completions_or_man() {
        let flags = [
            "--timeout",
            "--connect-timeout",
            "--nodes",
            "--username",
            "--password",
            "--tls-ca",
            "--tls-cert",
            "--retry",
        ];
        let mut cmd = Cli::command();
        // As for a real --help: the global flags propagated first.
        cmd.build();
        for sub in ["completions", "man"] {
            let help = cmd
                .find_subcommand_mut(sub)
                .unwrap()
                .render_long_help()
                .to_string();
            for flag in flags {
                assert!(!help.contains(flag), "{flag} under {sub} --help:\n{help}");
            }
        }
        // Where they matter they are still listed, and still accepted anywhere.
        let run = cmd
            .find_subcommand_mut("run")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(run.contains("--timeout") && run.contains("--connect-timeout"));
        let cli = parse(&["completions", "bash", "--timeout", "1s"]).unwrap();
        assert!(matches!(cli.command, Command::Completions(_)));
        let cli = parse(&["--timeout", "2s", "completions", "zsh"]).unwrap();
        assert_eq!(cli.global.timeout, Duration::from_secs(2));
    }

    #[test]
    fn help_documents_exit_codes_and_the_token_rule() {
        let mut cmd = Cli::command();
        let top = cmd.render_long_help().to_string();
        assert!(top.contains("75 "), "{top}");
        assert!(top.contains("REDIS_LOCK_NODES"), "{top}");
        let run = cmd
            .find_subcommand_mut("run")
            .unwrap()
            .render_long_help()
            .to_string();
        for needle in ["REDIS_LOCK_FENCE", "NOT given", "76", "--kill-grace"] {
            assert!(
                run.contains(needle),
                "{needle} missing from run --help:\n{run}"
            );
        }
    }
}
