//! `CONFIG RESETSTAT` resets the module's counters too.
//!
//! Redis 7.0 tells modules nothing about RESETSTAT, so a command filter
//! notices the command, and a timer that runs right after it checks that the
//! server really reset its statistics (the command may have been refused,
//! e.g. by ACL): `total_commands_processed` went down.

use crate::ffi::{self, filter};
use crate::server::stats;
use redis_module::raw;
use std::time::Duration;

pub fn install(ctx: *mut raw::RedisModuleCtx) -> Result<(), String> {
    filter::install(ctx, on_command)
}

fn commands_processed(ctx: &redis_module::Context) -> Option<u64> {
    filter::server_info_unsigned(ctx, c"stats", c"total_commands_processed")
}

fn on_command(args: &filter::FilterArgs) {
    let is_resetstat = args.len() == 2
        && args
            .get(0)
            .is_some_and(|a| a.eq_ignore_ascii_case(b"config"))
        && args
            .get(1)
            .is_some_and(|a| a.eq_ignore_ascii_case(b"resetstat"));
    if !is_resetstat {
        return;
    }
    let Some(ctx) = filter::detached() else {
        return;
    };
    let Some(before) = commands_processed(&ctx) else {
        return;
    };
    ctx.create_timer(Duration::ZERO, check_reset, before);
}

fn check_reset(ctx: &redis_module::Context, before: u64) {
    ffi::guard((), || {
        let after = commands_processed(ctx).unwrap_or(u64::MAX);
        if after < before || before <= 2 {
            stats::reset();
        }
    });
}
