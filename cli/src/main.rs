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

/// A line on stderr that can never panic: a closed or broken stderr (EPIPE)
/// must not turn into a crash that skips the release of a lock.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod args;
mod commands;
mod duration;
mod exit;
mod output;
mod run;
mod setup;
mod watchdog;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == watchdog::SUBCOMMAND) {
        return ExitCode::from(watchdog::main(args.get(2..).unwrap_or(&[])));
    }
    // `eval "$(redis-lock acquire ...)"` evaluates whatever acquire prints:
    // on every failure, that must be a command that fails with our status,
    // or the script would go on without the lock.
    let for_eval = args.iter().skip(1).any(|a| a == "acquire");
    if for_eval {
        output::fail_eval_on_panic();
    }
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; everything
            // else is a usage error with our usage status, not clap's 2.
            let _ = e.print();
            if !e.use_stderr() {
                return ExitCode::from(exit::OK);
            }
            if for_eval {
                setup::put(&output::eval_failure(exit::USAGE));
            }
            return ExitCode::from(exit::USAGE);
        }
    };
    let for_eval = matches!(cli.command, Command::Acquire(_));
    match &cli.command {
        Command::Completions(c) => return ExitCode::from(commands::completions(c.shell)),
        Command::Man(_) => return ExitCode::from(commands::man()),
        _ => {}
    }
    // One thread is plenty for a handful of connections and one child.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say!("redis-lock: cannot start the runtime: {e}");
            if for_eval {
                setup::put(&output::eval_failure(exit::INTERNAL));
            }
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let code = runtime.block_on(dispatch(cli));
    // Background releases (a dropped guard) get a moment; never block long.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    if for_eval && code != exit::OK {
        setup::put(&output::eval_failure(code));
    }
    ExitCode::from(code)
}

/// Runs the parsed subcommand; its exit status.
async fn dispatch(cli: Cli) -> u8 {
    let g = &cli.global;
    match cli.command {
        Command::Run(a) => run::run(g, a).await,
        Command::Acquire(a) => commands::acquire(g, a).await,
        Command::Extend(a) => commands::extend(g, a).await,
        Command::Release(a) => commands::release(g, a).await,
        Command::Info(a) => commands::info(g, a).await,
        Command::Status(a) => commands::status(g, a).await,
        Command::Completions(c) => commands::completions(c.shell),
        Command::Man(_) => commands::man(),
    }
}
