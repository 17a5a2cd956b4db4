//! `redis-lock`: run a command under a quorum lock held on redis-lock nodes,
//! and take, extend and release locks from shell scripts.
//!
//! The pure parts (durations, exit statuses, output) are in their own
//! modules and unit-tested; `run.rs` holds the process handling and
//! `commands.rs` the other subcommands.

// Unit tests may unwrap and index; library code may not (see [workspace.lints]).
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod args;
mod commands;
mod duration;
mod exit;
mod nodes;
mod output;
mod run;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; everything
            // else is a usage error with our usage status, not clap's 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    if let Command::Completions(c) = &cli.command {
        return ExitCode::from(commands::completions(c.shell));
    }
    // One thread: the lock is renewed on the same thread that forks the
    // command, which `run` relies on (see run.rs, PR_SET_PDEATHSIG).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redis-lock: cannot start the runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let code = runtime.block_on(commands::dispatch(cli));
    // Background releases (a dropped guard) get a moment; never block long.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    ExitCode::from(code)
}
