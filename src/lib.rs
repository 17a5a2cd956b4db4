//! redis-lock: distributed locks as a server-side Redis module.
//!
//! Three folders, one per kind of code:
//!
//! ```text
//! src/lib.rs              registration only: the type, the commands with their key
//!                         specs, the settings, the event subscriptions, the panic hook
//! src/pure/               the core: knows nothing of Redis, tested without a server
//!   lock.rs               the lock state machine: (lock, request, now) -> (reply, change)
//!   lock/tests.rs         its table tests and the property test against a model
//!   codec.rs              the versioned encoding of a lock (RDB, AOF, replication)
//!   args.rs               argument parsing and validation into typed requests
//!   expiry.rs             the expiry index: which key's lock ends when
//!   queue.rs              the wait queues per key, in ticket order
//!   rejoin.rs             the delayed rejoin and promotion delay arithmetic
//!   settings.rs           the module's settings and their bounds
//!   clock.rs              the monotonic clock in microseconds
//!   version.rs            the one version number, and its `MODULE LIST` integer
//! src/server/             the Redis glue: compiled only into the loadable module
//!   commands.rs           one thin function per command: parse, open, decide, apply, reply
//!   keys.rs               the key operations every path shares: store a lock, end one
//!                         (delete, notify, replicate), hand a freed lock to its next waiter
//!   waiters.rs            the blocked clients of `WAIT`, their timeouts and disconnections
//!   sweeper.rs            the timer that ends locks at their deadline; keyspace events
//!   datatype.rs           the `redislock` type's callbacks (rdb, aof, copy, digest, memory)
//!   state.rs              the module's node-wide state: fencing counter, index, timer
//!   stats.rs              the counters of `INFO lock`
//!   resetstat.rs          `CONFIG RESETSTAT` resets the module's counters too
//! src/ffi/                every raw `RedisModule_*` call and every `unsafe` block,
//!   mod.rs                behind small safe functions and types; the panic barrier
//! ```

// Unit tests may unwrap and index; module code may not (see [workspace.lints]).
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod pure;

#[cfg(all(feature = "module", not(test)))]
mod ffi;
#[cfg(all(feature = "module", not(test)))]
mod server;

#[cfg(all(feature = "module", not(test)))]
mod module {
    use crate::command_entry;
    use crate::ffi::events::ServerEvent;
    use crate::ffi::{self, CommandSpec};
    use crate::pure::clock;
    use crate::pure::settings::{self, Setting};
    use crate::server::datatype::LOCK_TYPE;
    use crate::server::{commands, resetstat, state, sweeper, waiters};
    use redis_module::configuration::ConfigurationFlags;
    use redis_module::{logging, raw, redis_module, Context, RedisString, Status};
    use std::sync::atomic::{AtomicI64, Ordering};

    // The token (argument 2), and LOCK.LOAD's payload, which holds one, never
    // show in SLOWLOG or MONITOR.
    command_entry!(acquire_entry, commands::acquire, redact: [2]);
    command_entry!(extend_entry, commands::extend, redact: [2]);
    command_entry!(release_entry, commands::release, redact: [2]);
    command_entry!(lock_info_entry, commands::info);
    command_entry!(load_entry, commands::load, redact: [2]);

    const RW_UPDATE: u32 = raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_UPDATE;

    fn command_specs(with_lock_category: bool) -> [CommandSpec; 5] {
        [
            CommandSpec {
                name: c"lock.acquire",
                entry: acquire_entry,
                flags: c"write deny-oom blocking",
                arity: -4,
                key_flags: RW_UPDATE,
                summary: c"Takes a lock for a token for ttl-ms milliseconds (FENCE floor, MAXHOLD ms); replies the fencing token, or nil if another token holds it",
                complexity: c"O(log N) where N is the number of locks on the node",
                acl: if with_lock_category { c"lock write" } else { c"write" },
            },
            CommandSpec {
                name: c"lock.extend",
                entry: extend_entry,
                flags: c"write deny-oom fast",
                arity: 4,
                key_flags: RW_UPDATE,
                summary: c"Moves the deadline of a lock the token holds to now + ttl-ms",
                complexity: c"O(log N) where N is the number of locks on the node",
                acl: if with_lock_category { c"lock write fast" } else { c"write fast" },
            },
            CommandSpec {
                name: c"lock.release",
                entry: release_entry,
                flags: c"write fast",
                arity: 3,
                key_flags: raw::REDISMODULE_CMD_KEY_RW | raw::REDISMODULE_CMD_KEY_DELETE,
                summary: c"Frees a lock the token holds",
                complexity: c"O(1)",
                acl: if with_lock_category { c"lock write fast" } else { c"write fast" },
            },
            CommandSpec {
                name: c"lock.info",
                entry: lock_info_entry,
                flags: c"readonly fast",
                arity: 2,
                key_flags: raw::REDISMODULE_CMD_KEY_RO | raw::REDISMODULE_CMD_KEY_ACCESS,
                summary: c"Shows a held lock: ttl, fence, acquired, extensions, owner fingerprint",
                complexity: c"O(1)",
                acl: if with_lock_category { c"lock read fast" } else { c"read fast" },
            },
            CommandSpec {
                name: c"lock.load",
                entry: load_entry,
                flags: c"write deny-oom",
                arity: 3,
                key_flags: raw::REDISMODULE_CMD_KEY_OW | raw::REDISMODULE_CMD_KEY_UPDATE,
                summary: c"Stores an encoded lock; used by replication and the AOF, not by applications",
                complexity: c"O(log N) where N is the number of locks on the node",
                // Not in @lock: LOCK.LOAD can overwrite any lock.
                acl: c"write",
            },
        ]
    }

    /// Where each setting lives.
    fn variable(setting: &Setting) -> Option<&'static AtomicI64> {
        [
            (settings::MAX_TTL_MS, &commands::MAX_TTL_MS),
            (settings::MAX_HOLD_MS, &commands::MAX_HOLD_MS),
            (settings::REJOIN_DELAY_MS, &commands::REJOIN_DELAY_MS),
            (settings::MAX_WAITERS, &commands::MAX_WAITERS),
            (settings::PROMOTION_DELAY_MS, &commands::PROMOTION_DELAY_MS),
        ]
        .into_iter()
        .find_map(|(s, v)| (s.name == setting.name).then_some(v))
    }

    /// Apply the module load arguments, checked as `CONFIG SET` would check
    /// them (Redis applies them to module configs without any check). They
    /// come after the `lock.*` lines of the config file, so they win.
    fn apply_load_args(ctx: &Context, args: &[RedisString]) -> Status {
        let args: Vec<&[u8]> = args.iter().map(RedisString::as_slice).collect();
        let values = match settings::load_args(&args) {
            Ok(values) => values,
            Err(e) => {
                ctx.log_warning(&format!("lock: {e}; the module is not loaded"));
                return Status::Err;
            }
        };
        for (setting, value) in values {
            match variable(&setting) {
                Some(var) => var.store(value, Ordering::Relaxed),
                None => {
                    ctx.log_warning(&format!("lock: no variable for {} (bug)", setting.name));
                    return Status::Err;
                }
            }
        }
        Status::Ok
    }

    fn init(ctx: &Context, args: &[RedisString]) -> Status {
        // First, before anything is registered that a failed load would
        // leave behind.
        if apply_load_args(ctx, args) == Status::Err {
            return Status::Err;
        }
        clock::init();
        std::panic::set_hook(Box::new(|info| {
            logging::log_warning(format!("lock: internal error (bug): {info}"));
        }));
        let raw_ctx = ctx.get_raw();
        ffi::set_module_options(raw_ctx);
        // Start the fencing counter at the wall clock in microseconds: a node
        // that lost its data resumes above every token it handed out before,
        // unless its clock went backwards. Persisted counters raise it further.
        let wall_micros = ffi::server_wall_ms().saturating_mul(1000);
        state::with(|n| n.fences.observe(wall_micros));
        waiters::init_clock(wall_micros);
        commands::init_rejoin(ctx);
        let with_lock_category = ffi::add_acl_category(raw_ctx);
        for spec in command_specs(with_lock_category) {
            if let Err(e) = ffi::register_command(raw_ctx, &spec) {
                ctx.log_warning(&format!("lock: {e}"));
                return Status::Err;
            }
        }
        // Expired and evicted keys come in classes of their own: a lock key
        // removed by a native TTL or by eviction must still serve its waiters.
        let events = raw::REDISMODULE_NOTIFY_GENERIC
            | raw::REDISMODULE_NOTIFY_LOADED
            | raw::REDISMODULE_NOTIFY_EXPIRED
            | raw::REDISMODULE_NOTIFY_EVICTED;
        ffi::blocked::on_disconnect(waiters::disconnected);
        let subscribed =
            ffi::events::subscribe_keyspace_events(raw_ctx, events, sweeper::on_keyspace_event)
                .and_then(|()| ffi::events::subscribe_server_events(raw_ctx, on_server_event));
        if let Err(e) = subscribed.and_then(|()| resetstat::install(raw_ctx)) {
            ctx.log_warning(&format!("lock: {e}"));
            return Status::Err;
        }
        // Replaces the crate's default INFO handler: this runs after it.
        raw::register_info_function(raw_ctx, Some(info_entry));
        Status::Ok
    }

    fn on_server_event(ctx: &Context, event: ServerEvent) {
        match event {
            ServerEvent::SwapDb(a, b) => sweeper::on_swapdb(ctx, a, b),
            ServerEvent::Flushed(db) => sweeper::on_flush(ctx, db),
            ServerEvent::Promoted => commands::on_promoted(ctx),
        }
    }

    extern "C" fn info_entry(ctx: *mut raw::RedisModuleInfoCtx, _for_crash_report: i32) {
        ffi::guard((), || {
            commands::info_section(&redis_module::InfoContext::new(ctx))
        });
    }

    redis_module! {
        name: "lock",
        version: crate::pure::version::MODULE_VERSION,
        allocator: (redis_module::alloc::RedisAlloc, redis_module::alloc::RedisAlloc),
        data_types: [LOCK_TYPE],
        init: init,
        configurations: [
            i64: [
                [settings::MAX_TTL_MS.name, &commands::MAX_TTL_MS, settings::MAX_TTL_MS.default, settings::MAX_TTL_MS.min, settings::MAX_TTL_MS.max, ConfigurationFlags::DEFAULT, None],
                [settings::MAX_HOLD_MS.name, &commands::MAX_HOLD_MS, settings::MAX_HOLD_MS.default, settings::MAX_HOLD_MS.min, settings::MAX_HOLD_MS.max, ConfigurationFlags::DEFAULT, None],
                [settings::REJOIN_DELAY_MS.name, &commands::REJOIN_DELAY_MS, settings::REJOIN_DELAY_MS.default, settings::REJOIN_DELAY_MS.min, settings::REJOIN_DELAY_MS.max, ConfigurationFlags::DEFAULT, None],
                [settings::MAX_WAITERS.name, &commands::MAX_WAITERS, settings::MAX_WAITERS.default, settings::MAX_WAITERS.min, settings::MAX_WAITERS.max, ConfigurationFlags::DEFAULT, None],
                [settings::PROMOTION_DELAY_MS.name, &commands::PROMOTION_DELAY_MS, settings::PROMOTION_DELAY_MS.default, settings::PROMOTION_DELAY_MS.min, settings::PROMOTION_DELAY_MS.max, ConfigurationFlags::DEFAULT, None],
            ],
            string: [],
            bool: [],
            enum: [],
            // The crate would apply load arguments as the configs' defaults,
            // which Redis does not check against the bounds: `init` checks
            // and applies them instead.
            module_args_as_configuration: false,
        ]
    }
}
