//! The raw calls the `redis-module` crate does not wrap (or wraps in a way
//! that does not load on Redis 7.0), and the panic barrier every entry point
//! from Redis goes through. Each `unsafe` block says why it is sound.

pub mod blocked;
pub mod events;
pub mod filter;
pub mod value_type;

use redis_module::{raw, Context, RedisResult, RedisString};
use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

/// A command's arguments as Redis passed them: byte slices for parsing, and
/// the raw strings for opening the key and replicating.
pub struct Request<'a> {
    pub args: &'a [&'a [u8]],
    argv: &'a [*mut raw::RedisModuleString],
}

impl Request<'_> {
    /// The key (argument 1) as a Redis string.
    pub fn key(&self, ctx: &Context) -> Option<RedisString> {
        let key = *self.argv.get(1)?;
        Some(RedisString::new(std::ptr::NonNull::new(ctx.get_raw()), key))
    }
}

/// What a command handler looks like.
pub type Handler = fn(&Context, &Request) -> RedisResult;

/// Most commands have at most this many arguments: their slices live on the
/// stack (the hot path allocates nothing for its arguments).
const INLINE_ARGS: usize = 8;

/// Run `f`, turning a panic into `fallback`. A panic must never unwind into
/// Redis: since Rust 1.81 that aborts the server. The panic hook installed
/// at load has already written the message to the server log.
pub fn guard<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// The body of every command entry point. The arguments at the positions in
/// `redact` (a token, or a payload holding one) are hidden from `SLOWLOG` and
/// `MONITOR` on every path, errors and panics included.
///
/// The redaction comes last, once nothing borrows the arguments: Valkey 8.1
/// replaces the redacted string in the very `argv` the handler reads (and
/// releases the original), so a redaction before the handler would make
/// every token `(redacted)`. `SLOWLOG` and `MONITOR` take the arguments only
/// after the command returns (Redis 7.0+, Valkey), so they still see it.
pub fn run_command(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
    handler: Handler,
    redact: &[c_int],
) -> c_int {
    let status = run_handler(ctx, argv, argc, handler);
    for pos in redact.iter().filter(|pos| **pos < argc) {
        redact_argument(ctx, *pos);
    }
    status
}

fn run_handler(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
    handler: Handler,
) -> c_int {
    let context = Context::new(ctx);
    let result = guard(None, || {
        let argv: &[*mut raw::RedisModuleString] = match usize::try_from(argc) {
            // SAFETY: Redis passes argc valid strings in argv for this call.
            Ok(n) if !argv.is_null() => unsafe { std::slice::from_raw_parts(argv, n) },
            _ => &[],
        };
        let mut inline: [&[u8]; INLINE_ARGS] = [&[]; INLINE_ARGS];
        let spilled: Vec<&[u8]>;
        let args: &[&[u8]] = if argv.len() <= INLINE_ARGS {
            for (slot, arg) in inline.iter_mut().zip(argv) {
                // SAFETY: each argv entry is a valid string for this call.
                *slot = unsafe { string_bytes(*arg) };
            }
            inline.get(..argv.len()).unwrap_or(&[])
        } else {
            // SAFETY: as above.
            spilled = argv.iter().map(|a| unsafe { string_bytes(*a) }).collect();
            &spilled
        };
        Some(handler(&context, &Request { args, argv }))
    });
    match result {
        Some(reply) => context.reply(reply) as c_int,
        None => context
            .reply_error_string("ERR internal error in the lock module, see the server log")
            as c_int,
    }
}

/// Show argument `pos` of the running command as `(redacted)` in `SLOWLOG`
/// and `MONITOR`, as Redis does for `AUTH` (Redis 7.0+, Valkey; a server
/// without the call shows the argument).
fn redact_argument(ctx: *mut raw::RedisModuleCtx, pos: c_int) {
    // SAFETY: the context of the command being run; Redis checks `pos`
    // against the command's arguments.
    unsafe {
        if let Some(f) = raw::RedisModule_RedactClientCommandArgument {
            f(ctx, pos);
        }
    }
}

/// Replicate `DEL key` (to replicas and the AOF).
pub fn replicate_del(ctx: &Context, key: &RedisString) {
    // SAFETY: format "s" takes one RedisModuleString*, valid for this call.
    unsafe {
        if let Some(f) = raw::RedisModule_Replicate {
            f(ctx.get_raw(), c"DEL".as_ptr(), c"s".as_ptr(), key.inner);
        }
    }
}

/// Replicate `LOCK.LOAD key payload`.
pub fn replicate_load(ctx: &Context, key: &RedisString, payload: &[u8]) {
    // SAFETY: format "sb" takes a RedisModuleString* then a buffer pointer
    // and its length, all valid for this call.
    unsafe {
        if let Some(f) = raw::RedisModule_Replicate {
            f(
                ctx.get_raw(),
                c"LOCK.LOAD".as_ptr(),
                c"sb".as_ptr(),
                key.inner,
                payload.as_ptr().cast::<c_char>(),
                payload.len(),
            );
        }
    }
}

/// Fire a keyspace event of the module class (`notify-keyspace-events` flag
/// `d`), e.g. `lock.acquired`.
pub fn notify(ctx: &Context, event: &CStr, key: &RedisString) {
    // SAFETY: a valid context, a NUL-terminated event name, a valid key.
    unsafe {
        if let Some(f) = raw::RedisModule_NotifyKeyspaceEvent {
            f(
                ctx.get_raw(),
                raw::REDISMODULE_NOTIFY_MODULE,
                event.as_ptr(),
                key.inner,
            );
        }
    }
}

/// Tell Redis the key changed (WATCH, client-side caching). The module sets
/// `NO_IMPLICIT_SIGNAL_MODIFIED`, so a refused acquire does not touch
/// watchers of a lock it did not change.
pub fn signal_modified(ctx: &Context, key: &RedisString) {
    // SAFETY: a valid context and key string for this call.
    unsafe {
        if let Some(f) = raw::RedisModule_SignalModifiedKey {
            f(ctx.get_raw(), key.inner);
        }
    }
}

/// Defines an `extern "C"` entry point for a command handler; `redact:
/// [positions]` names the arguments `SLOWLOG` and `MONITOR` must not show.
#[macro_export]
macro_rules! command_entry {
    ($entry:ident, $handler:path) => {
        $crate::command_entry!($entry, $handler, redact: []);
    };
    ($entry:ident, $handler:path, redact: [$($pos:expr),*]) => {
        extern "C" fn $entry(
            ctx: *mut redis_module::raw::RedisModuleCtx,
            argv: *mut *mut redis_module::raw::RedisModuleString,
            argc: std::ffi::c_int,
        ) -> std::ffi::c_int {
            $crate::ffi::run_command(ctx, argv, argc, $handler, &[$($pos),*])
        }
    };
}

pub type RawCommand =
    extern "C" fn(*mut raw::RedisModuleCtx, *mut *mut raw::RedisModuleString, c_int) -> c_int;

/// A command with one key, at argument 1.
pub struct CommandSpec {
    pub name: &'static CStr,
    pub entry: RawCommand,
    /// Command flags, e.g. `c"write deny-oom"`.
    pub flags: &'static CStr,
    pub arity: c_int,
    /// `REDISMODULE_CMD_KEY_*` flags of the key spec.
    pub key_flags: u32,
    pub summary: &'static CStr,
    pub complexity: &'static CStr,
    /// ACL categories where the server supports them (Redis 7.2+, Valkey),
    /// e.g. `c"lock write fast"`; Redis 7.0 has no way to set them.
    pub acl: &'static CStr,
}

/// Add the module's ACL category `@lock` (Redis 7.4+, Valkey 8+). Returns
/// whether it exists afterwards.
pub fn add_acl_category(ctx: *mut raw::RedisModuleCtx) -> bool {
    // SAFETY: the OnLoad context and a NUL-terminated name.
    unsafe {
        raw::RedisModule_AddACLCategory
            .is_some_and(|f| f(ctx, c"lock".as_ptr()) == raw::Status::Ok as c_int)
    }
}

const COMMAND_INFO_VERSION: raw::RedisModuleCommandInfoVersion =
    raw::RedisModuleCommandInfoVersion {
        version: 1,
        sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
        sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
        sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
    };

/// Register a command with a key spec, in the way that loads on Redis 7.0:
/// `CreateCommand` with key positions 0,0,0, then `SetCommandInfo` with the
/// key spec (first key at index 1, one key). ACL key patterns and cluster
/// routing then apply, and `COMMAND INFO`/`COMMAND GETKEYS` show the key.
pub fn register_command(ctx: *mut raw::RedisModuleCtx, spec: &CommandSpec) -> Result<(), String> {
    let name = spec.name.to_string_lossy();
    // SAFETY: ctx is the OnLoad context; name and flags are NUL-terminated
    // statics; the entry point is an extern "C" fn with the expected signature.
    let created = unsafe {
        raw::RedisModule_CreateCommand.ok_or("RedisModule_CreateCommand missing")?(
            ctx,
            spec.name.as_ptr(),
            Some(spec.entry),
            spec.flags.as_ptr(),
            0,
            0,
            0,
        )
    };
    if created != raw::Status::Ok as c_int {
        return Err(format!("failed to create command {name}"));
    }
    // SAFETY: the command was just created under this name.
    let command = unsafe {
        raw::RedisModule_GetCommand.ok_or("RedisModule_GetCommand missing")?(
            ctx,
            spec.name.as_ptr(),
        )
    };
    if command.is_null() {
        return Err(format!("command {name} not found after creation"));
    }
    let key_spec = raw::RedisModuleCommandKeySpec {
        notes: ptr::null(),
        flags: u64::from(spec.key_flags),
        begin_search_type: raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX,
        bs: raw::RedisModuleCommandKeySpec__bindgen_ty_1 {
            index: raw::RedisModuleCommandKeySpec__bindgen_ty_1__bindgen_ty_1 { pos: 1 },
        },
        find_keys_type: raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE,
        fk: raw::RedisModuleCommandKeySpec__bindgen_ty_2 {
            range: raw::RedisModuleCommandKeySpec__bindgen_ty_2__bindgen_ty_1 {
                lastkey: 0,
                keystep: 1,
                limit: 0,
            },
        },
    };
    // SAFETY: an all-zero key spec is the array terminator Redis expects.
    let terminator: raw::RedisModuleCommandKeySpec = unsafe { std::mem::zeroed() };
    let mut key_specs = [key_spec, terminator];
    let mut info = raw::RedisModuleCommandInfo {
        version: &COMMAND_INFO_VERSION,
        summary: spec.summary.as_ptr(),
        complexity: spec.complexity.as_ptr(),
        since: c"0.1.0".as_ptr(),
        history: ptr::null_mut(),
        tips: ptr::null(),
        arity: spec.arity,
        key_specs: key_specs.as_mut_ptr(),
        args: ptr::null_mut(),
    };
    // SAFETY: Redis copies everything it keeps from `info` before returning;
    // all pointers in it are valid for the call.
    let set = unsafe {
        raw::RedisModule_SetCommandInfo.ok_or("RedisModule_SetCommandInfo missing")?(
            command, &mut info,
        )
    };
    if set != raw::Status::Ok as c_int {
        return Err(format!("failed to set the command info of {name}"));
    }
    // SAFETY: the command handle from above and a NUL-terminated string.
    unsafe {
        if let Some(f) = raw::RedisModule_SetCommandACLCategories {
            if f(command, spec.acl.as_ptr()) != raw::Status::Ok as c_int {
                return Err(format!("failed to set the ACL categories of {name}"));
            }
        }
    }
    Ok(())
}

/// The database the context's client has selected.
pub fn selected_db(ctx: &Context) -> i32 {
    // SAFETY: a valid context from a callback.
    unsafe { raw::RedisModule_GetSelectedDb.map_or(0, |f| f(ctx.get_raw())) }
}

/// Select `db` on the context's client (timer callbacks start in db 0).
pub fn select_db(ctx: &Context, db: i32) -> bool {
    // SAFETY: a valid context from a callback; Redis checks the db index.
    unsafe {
        raw::RedisModule_SelectDb.is_some_and(|f| f(ctx.get_raw(), db) == raw::Status::Ok as c_int)
    }
}

/// The server's wall clock in milliseconds since the Unix epoch (the time
/// `TIME` shows; the module's own libc calls may be bound apart from the
/// server's, e.g. under `RTLD_DEEPBIND`).
pub fn server_wall_ms() -> u64 {
    // SAFETY: takes no arguments and only reads the clock.
    let ms = unsafe { raw::RedisModule_Milliseconds.map_or(0, |f| f()) };
    u64::try_from(ms).unwrap_or(0)
}

/// Whether the running command is a replay of effects this node must take
/// as they are: from its primary over the replication link, or from the AOF
/// while loading.
pub fn is_replay(ctx: &Context) -> bool {
    let replay = raw::REDISMODULE_CTX_FLAGS_REPLICATED | raw::REDISMODULE_CTX_FLAGS_LOADING;
    // SAFETY: a valid context of the running command.
    let flags = unsafe { raw::RedisModule_GetContextFlags.map_or(0, |f| f(ctx.get_raw())) };
    u32::try_from(flags).is_ok_and(|flags| flags & replay != 0)
}

/// Whether the server is loading its data (start-up, `DEBUG RELOAD`, a full
/// sync from a primary), as opposed to running a command (`RESTORE`), when
/// a type callback runs without a context.
pub fn server_loading() -> bool {
    // SAFETY: Redis accepts a null context and then reports server flags only.
    let flags = unsafe { raw::RedisModule_GetContextFlags.map_or(0, |f| f(ptr::null_mut())) };
    u32::try_from(flags).is_ok_and(|flags| flags & raw::REDISMODULE_CTX_FLAGS_LOADING != 0)
}

/// Ask Redis to report RDB read errors to `rdb_load` instead of exiting (a
/// corrupt `RESTORE` payload is an error reply, not a crash), and to leave
/// signalling modified keys to the module.
pub fn set_module_options(ctx: *mut raw::RedisModuleCtx) {
    let options = raw::REDISMODULE_OPTIONS_HANDLE_IO_ERRORS
        | raw::REDISMODULE_OPTION_NO_IMPLICIT_SIGNAL_MODIFIED;
    // SAFETY: the OnLoad context.
    unsafe {
        if let Some(f) = raw::RedisModule_SetModuleOptions {
            f(ctx, options as c_int);
        }
    }
}

/// `RedisModule_EmitAOF(io, cmd, "sb", key, payload)`.
pub fn emit_aof(
    io: *mut raw::RedisModuleIO,
    command: &CStr,
    key: *mut raw::RedisModuleString,
    payload: &[u8],
) {
    // SAFETY: the format "sb" takes a RedisModuleString* then a buffer
    // pointer and its length; io and key come from Redis for this call.
    unsafe {
        if let Some(f) = raw::RedisModule_EmitAOF {
            f(
                io,
                command.as_ptr(),
                c"sb".as_ptr(),
                key,
                payload.as_ptr().cast::<c_char>(),
                payload.len(),
            );
        }
    }
}

/// The bytes of a Redis string handed to a callback.
///
/// # Safety
/// `s` must be a valid `RedisModuleString` for the duration of the borrow.
pub unsafe fn string_bytes<'a>(s: *const raw::RedisModuleString) -> &'a [u8] {
    RedisString::string_as_slice(s)
}

/// The C string Redis passes as an event name, as UTF-8 (lossy is fine: the
/// names we look for are ASCII).
///
/// # Safety
/// `s` must be NUL-terminated and valid for the duration of the borrow.
pub unsafe fn event_name<'a>(s: *const c_char) -> std::borrow::Cow<'a, str> {
    if s.is_null() {
        return "".into();
    }
    // SAFETY: per the caller's contract.
    unsafe { CStr::from_ptr(s) }.to_string_lossy()
}

/// Whether the server wants no writes from the module right now: clients
/// are paused (`CLIENT PAUSE ... WRITE|ALL`, which `FAILOVER` and cluster
/// failovers use). A write made outside a client command (a timer) while
/// paused trips an assertion in Redis and Valkey once there is an AOF or a
/// replica; Redis holds back its own expiry and eviction then, and so does
/// the module.
pub fn writes_paused() -> bool {
    // SAFETY: takes no arguments and only reads server state.
    unsafe { raw::RedisModule_AvoidReplicaTraffic.is_some_and(|f| f() != 0) }
}

/// The database and the name's length of the key a type callback with a
/// key context (`mem_usage2`) is about; `None` if the server gives none.
///
/// # Safety
/// `ctx` must be the key context Redis passes to the callback.
pub unsafe fn opt_ctx_key(ctx: *mut raw::RedisModuleKeyOptCtx) -> Option<(i32, usize)> {
    if ctx.is_null() {
        return None;
    }
    // SAFETY: per the caller's contract; the name is valid for the call.
    unsafe {
        let db = raw::RedisModule_GetDbIdFromOptCtx?(ctx);
        let name = raw::RedisModule_GetKeyNameFromOptCtx?(ctx);
        if name.is_null() {
            return None;
        }
        Some((db, string_bytes(name).len()))
    }
}
