//! Argument parsing and validation into typed requests. Pure: works on byte
//! slices, returns the Redis error message (without the `ERR ` prefix) that
//! names the argument at fault.

use crate::pure::lock::{MAX_FENCE, MAX_TOKEN_LEN};

/// Largest `lock.max-ttl-ms` accepted: ten years. Keeps `ttl * 1000` and
/// `now + ttl` far from overflow.
pub const TTL_CEILING_MS: i64 = 10 * 365 * 24 * 3600 * 1000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgError(pub String);

impl ArgError {
    fn arity(command: &str) -> Self {
        ArgError(format!("wrong number of arguments for '{command}' command"))
    }
}

/// `LOCK.ACQUIRE key token ttl-ms [FENCE floor] [MAXHOLD ms]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcquireArgs<'a> {
    pub token: &'a [u8],
    pub ttl_ms: u64,
    /// `FENCE floor`: 0 when absent.
    pub fence_floor: u64,
    /// The hold limit of a new grant: the smaller of `MAXHOLD` and the
    /// `lock.max-hold-ms` setting (0: none).
    pub max_hold_ms: Option<u64>,
    /// `WAIT timeout-ms`: block until granted or the timeout (0: no timeout).
    pub wait_ms: Option<u64>,
    /// `TICKET n`: the waiter's place in the queue (a microsecond timestamp).
    pub ticket: Option<u64>,
}

/// Node settings that bound what a request may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `lock.max-ttl-ms`
    pub max_ttl_ms: i64,
    /// `lock.max-hold-ms`, 0: no bound.
    pub max_hold_ms: i64,
    /// The largest `FENCE` floor accepted ([`crate::pure::lock::fence_ceiling`]).
    pub max_fence: u64,
}

/// `LOCK.EXTEND key token ttl-ms`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtendArgs<'a> {
    pub token: &'a [u8],
    pub ttl_ms: u64,
}

/// `LOCK.RELEASE key token`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseArgs<'a> {
    pub token: &'a [u8],
}

/// `args` is the whole command line, name first, key second.
pub fn acquire<'a>(args: &[&'a [u8]], limits: Limits) -> Result<AcquireArgs<'a>, ArgError> {
    const NAME: &str = "lock.acquire";
    let [_, _key, token, ttl, options @ ..] = args else {
        return Err(ArgError::arity(NAME));
    };
    let token = token_arg(token)?;
    let ttl_ms = ttl_arg(ttl, limits.max_ttl_ms)?;
    let mut fence_floor = 0;
    let mut max_hold_option = None;
    let mut wait_ms = None;
    let mut ticket = None;
    let mut options = options;
    while let [name, rest @ ..] = options {
        let Some((value, rest)) = rest.split_first() else {
            return Err(ArgError(format!(
                "option '{}' needs a value, or is unknown for '{NAME}'",
                printable(name)
            )));
        };
        if name.eq_ignore_ascii_case(b"FENCE") {
            let max = limits.max_fence.clamp(1, MAX_FENCE);
            fence_floor = match parse_i64(value) {
                Some(n) if n >= 1 && n.unsigned_abs() <= max => n.unsigned_abs(),
                _ => {
                    return Err(ArgError(format!(
                        "invalid FENCE '{}': must be an integer from 1 to {max} \
                         (this node's clock in microseconds + 2^40, or its fencing counter if higher)",
                        printable(value)
                    )))
                }
            };
        } else if name.eq_ignore_ascii_case(b"WAIT") {
            wait_ms = match parse_i64(value) {
                Some(n) if (0..=TTL_CEILING_MS).contains(&n) => Some(n.unsigned_abs()),
                _ => {
                    return Err(ArgError(format!(
                    "invalid WAIT '{}': must be an integer from 0 (no timeout) to {TTL_CEILING_MS}",
                    printable(value)
                )))
                }
            };
        } else if name.eq_ignore_ascii_case(b"TICKET") {
            ticket = match parse_i64(value) {
                Some(n) if n >= 0 => Some(n.unsigned_abs()),
                _ => {
                    return Err(ArgError(format!(
                        "invalid TICKET '{}': must be a non-negative integer",
                        printable(value)
                    )))
                }
            };
        } else if name.eq_ignore_ascii_case(b"MAXHOLD") {
            max_hold_option = match parse_i64(value) {
                Some(n) if (1..=TTL_CEILING_MS).contains(&n) => Some(n.unsigned_abs()),
                _ => {
                    return Err(ArgError(format!(
                        "invalid MAXHOLD '{}': must be an integer from 1 to {TTL_CEILING_MS}",
                        printable(value)
                    )))
                }
            };
        } else {
            return Err(ArgError(format!(
                "unknown option '{}' for '{NAME}'",
                printable(name)
            )));
        }
        options = rest;
    }
    if ticket.is_some() && wait_ms.is_none() {
        // A ticket orders a queue; without WAIT there is none to join.
        return Err(ArgError(
            "TICKET needs WAIT: it orders the wait queue".to_owned(),
        ));
    }
    let setting = u64::try_from(limits.max_hold_ms).ok().filter(|m| *m > 0);
    let max_hold_ms = match (max_hold_option, setting) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(limit) = max_hold_ms.filter(|limit| ttl_ms > *limit) {
        return Err(ArgError(format!(
            "ttl-ms {ttl_ms} exceeds the hold limit of {limit} ms (MAXHOLD or lock.max-hold-ms)"
        )));
    }
    Ok(AcquireArgs {
        token,
        ttl_ms,
        fence_floor,
        max_hold_ms,
        wait_ms,
        ticket,
    })
}

pub fn extend<'a>(args: &[&'a [u8]], max_ttl_ms: i64) -> Result<ExtendArgs<'a>, ArgError> {
    let [_, _key, token, ttl] = args else {
        return Err(ArgError::arity("lock.extend"));
    };
    Ok(ExtendArgs {
        token: token_arg(token)?,
        ttl_ms: ttl_arg(ttl, max_ttl_ms)?,
    })
}

pub fn release<'a>(args: &[&'a [u8]]) -> Result<ReleaseArgs<'a>, ArgError> {
    let [_, _key, token] = args else {
        return Err(ArgError::arity("lock.release"));
    };
    Ok(ReleaseArgs {
        token: token_arg(token)?,
    })
}

pub fn info(args: &[&[u8]]) -> Result<(), ArgError> {
    match args {
        [_, _key] => Ok(()),
        _ => Err(ArgError::arity("lock.info")),
    }
}

/// `LOCK.LOAD key payload`: returns the payload.
pub fn load<'a>(args: &[&'a [u8]]) -> Result<&'a [u8], ArgError> {
    match args {
        [_, _key, payload] => Ok(payload),
        _ => Err(ArgError::arity("lock.load")),
    }
}

/// The fencing token of a `LOCK.LOAD` payload sent by a client (not the
/// primary, not the AOF): bounded like a `FENCE` floor, so a payload cannot
/// spend the node's counter either.
pub fn loaded_fence(fence: u64, max_fence: u64) -> Result<(), ArgError> {
    if fence <= max_fence {
        return Ok(());
    }
    Err(ArgError(format!(
        "invalid LOCK.LOAD payload: fencing token {fence} is above {max_fence} \
         (this node's clock in microseconds + 2^40, or its fencing counter if higher)"
    )))
}

fn token_arg(token: &[u8]) -> Result<&[u8], ArgError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(ArgError(format!(
            "invalid token: must be 1 to {MAX_TOKEN_LEN} bytes, got {}",
            token.len()
        )));
    }
    Ok(token)
}

fn ttl_arg(raw: &[u8], max_ttl_ms: i64) -> Result<u64, ArgError> {
    let max = max_ttl_ms.clamp(1, TTL_CEILING_MS);
    match parse_i64(raw) {
        Some(ttl) if (1..=max).contains(&ttl) => Ok(ttl.unsigned_abs()),
        _ => Err(ArgError(format!(
            "invalid ttl-ms '{}': must be an integer from 1 to {max} (lock.max-ttl-ms)",
            printable(raw)
        ))),
    }
}

/// A strict decimal integer as Redis reads one: optional `-`, digits, no
/// spaces, no `+`, no leading zeros.
pub fn parse_i64(raw: &[u8]) -> Option<i64> {
    let digits = raw.strip_prefix(b"-").unwrap_or(raw);
    let well_formed = !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && (digits == b"0" || !digits.starts_with(b"0"));
    if !well_formed {
        return None;
    }
    std::str::from_utf8(raw).ok()?.parse().ok()
}

/// An argument as it may appear in an error message: printable ASCII kept,
/// everything else escaped, long values cut.
pub fn printable(raw: &[u8]) -> String {
    const LIMIT: usize = 64;
    let mut out = String::new();
    for b in raw.iter().take(LIMIT) {
        match b {
            b' '..=b'~' if *b != b'\'' && *b != b'\\' => out.push(char::from(*b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if raw.len() > LIMIT {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(parts: &[&'static str]) -> Vec<&'static [u8]> {
        parts.iter().map(|p| p.as_bytes()).collect()
    }

    const LIMITS: Limits = Limits {
        max_ttl_ms: 86_400_000,
        max_hold_ms: 0,
        max_fence: MAX_FENCE,
    };

    fn limits(max_ttl_ms: i64) -> Limits {
        Limits {
            max_ttl_ms,
            ..LIMITS
        }
    }

    #[test]
    fn acquire_accepts_a_well_formed_request() {
        let args = argv(&["LOCK.ACQUIRE", "k", "tok", "1500"]);
        assert_eq!(
            acquire(&args, LIMITS),
            Ok(AcquireArgs {
                token: b"tok",
                ttl_ms: 1500,
                fence_floor: 0,
                max_hold_ms: None,
                wait_ms: None,
                ticket: None,
            })
        );
    }

    #[test]
    fn ticket_without_wait_is_refused() {
        let args = argv(&["LOCK.ACQUIRE", "k", "t", "100", "TICKET", "5"]);
        let err = acquire(&args, LIMITS).unwrap_err();
        assert!(err.0.contains("TICKET needs WAIT"), "{}", err.0);
        let args = argv(&["LOCK.ACQUIRE", "k", "t", "100", "TICKET", "5", "WAIT", "10"]);
        assert_eq!(acquire(&args, LIMITS).unwrap().ticket, Some(5));
    }

    #[test]
    fn acquire_options_in_any_order_and_case() {
        let args = argv(&[
            "LOCK.ACQUIRE",
            "k",
            "t",
            "100",
            "maxhold",
            "5000",
            "FENCE",
            "77",
            "Wait",
            "0",
        ]);
        let req = acquire(&args, LIMITS).unwrap();
        assert_eq!(
            (req.fence_floor, req.max_hold_ms, req.wait_ms),
            (77, Some(5000), Some(0))
        );
        let setting = Limits {
            max_hold_ms: 3000,
            ..LIMITS
        };
        let req = acquire(&args, setting).unwrap();
        assert_eq!(req.max_hold_ms, Some(3000), "the smaller bound wins");
        let plain = argv(&["LOCK.ACQUIRE", "k", "t", "100"]);
        assert_eq!(acquire(&plain, setting).unwrap().max_hold_ms, Some(3000));
    }

    #[test]
    fn bad_arguments_name_the_argument() {
        let max = 10_000;
        let cases: &[(&[&str], &str)] = &[
            (
                &["LOCK.ACQUIRE", "k", "tok"],
                "wrong number of arguments for 'lock.acquire' command",
            ),
            (
                &["LOCK.ACQUIRE", "k", "tok", "0"],
                "invalid ttl-ms '0': must be an integer from 1 to 10000 (lock.max-ttl-ms)",
            ),
            (&["LOCK.ACQUIRE", "k", "tok", "-5"], "invalid ttl-ms '-5'"),
            (
                &["LOCK.ACQUIRE", "k", "tok", "10001"],
                "invalid ttl-ms '10001'",
            ),
            (
                &["LOCK.ACQUIRE", "k", "tok", "12ms"],
                "invalid ttl-ms '12ms'",
            ),
            (&["LOCK.ACQUIRE", "k", "tok", "+5"], "invalid ttl-ms '+5'"),
            (&["LOCK.ACQUIRE", "k", "tok", "05"], "invalid ttl-ms '05'"),
            (
                &["LOCK.ACQUIRE", "k", "tok", "99999999999999999999"],
                "invalid ttl-ms",
            ),
            (
                &["LOCK.ACQUIRE", "k", "", "100"],
                "invalid token: must be 1 to 256 bytes, got 0",
            ),
            (
                &["LOCK.ACQUIRE", "k", "tok", "100", "NX", "1"],
                "unknown option 'NX' for 'lock.acquire'",
            ),
            (
                &["LOCK.ACQUIRE", "k", "tok", "100", "NX"],
                "option 'NX' needs a value, or is unknown",
            ),
            (
                &["LOCK.ACQUIRE", "k", "tok", "100", "FENCE"],
                "option 'FENCE' needs a value",
            ),
            (
                &["LOCK.ACQUIRE", "k", "tok", "100", "FENCE", "0"],
                "invalid FENCE '0'",
            ),
            (
                &["LOCK.ACQUIRE", "k", "tok", "100", "FENCE", "x"],
                "invalid FENCE 'x'",
            ),
            (
                &["LOCK.ACQUIRE", "k", "tok", "100", "MAXHOLD", "-1"],
                "invalid MAXHOLD '-1'",
            ),
            (
                &["LOCK.ACQUIRE", "k", "tok", "100", "MAXHOLD", "99"],
                "ttl-ms 100 exceeds the hold limit of 99 ms",
            ),
            (
                &["LOCK.EXTEND", "k", "tok"],
                "wrong number of arguments for 'lock.extend' command",
            ),
            (&["LOCK.EXTEND", "k", "tok", "x"], "invalid ttl-ms 'x'"),
            (
                &["LOCK.EXTEND", "k", "tok", "1", "2"],
                "wrong number of arguments for 'lock.extend' command",
            ),
            (
                &["LOCK.RELEASE", "k"],
                "wrong number of arguments for 'lock.release' command",
            ),
            (&["LOCK.RELEASE", "k", ""], "invalid token"),
        ];
        for (args, expected) in cases {
            let args = argv(args);
            let err = match args[0] {
                b"LOCK.ACQUIRE" => acquire(&args, limits(max)).map(|_| ()),
                b"LOCK.EXTEND" => extend(&args, max).map(|_| ()),
                _ => release(&args).map(|_| ()),
            }
            .unwrap_err();
            assert!(err.0.starts_with(expected), "{args:?}: got '{}'", err.0);
        }
    }

    #[test]
    fn a_fence_floor_is_bounded_by_the_node() {
        let limits = Limits {
            max_fence: 5_000,
            ..LIMITS
        };
        let cases: &[(&str, Result<u64, &str>)] = &[
            ("1", Ok(1)),
            ("5000", Ok(5_000)),
            (
                "5001",
                Err("invalid FENCE '5001': must be an integer from 1 to 5000 (this node's clock"),
            ),
            (
                "9223372036854775807",
                Err("invalid FENCE '9223372036854775807'"),
            ),
            ("0", Err("invalid FENCE '0'")),
            ("-1", Err("invalid FENCE '-1'")),
        ];
        for (floor, expected) in cases {
            let args = [
                b"LOCK.ACQUIRE",
                &b"k"[..],
                b"t",
                b"100",
                b"FENCE",
                floor.as_bytes(),
            ];
            match (acquire(&args, limits), expected) {
                (Ok(req), Ok(want)) => assert_eq!(req.fence_floor, *want, "{floor}"),
                (Err(e), Err(want)) => assert!(e.0.starts_with(want), "{floor}: {}", e.0),
                (got, _) => panic!("{floor}: {got:?}"),
            }
        }
        assert_eq!(loaded_fence(5_000, 5_000), Ok(()));
        let err = loaded_fence(5_001, 5_000).unwrap_err();
        assert!(
            err.0
                .starts_with("invalid LOCK.LOAD payload: fencing token 5001 is above 5000"),
            "{}",
            err.0
        );
    }

    #[test]
    fn token_length_bounds() {
        let long = vec![b'x'; MAX_TOKEN_LEN];
        let too_long = vec![b'x'; MAX_TOKEN_LEN + 1];
        assert!(release(&[b"LOCK.RELEASE", b"k", &long]).is_ok());
        assert!(release(&[b"LOCK.RELEASE", b"k", &too_long]).is_err());
        assert!(release(&[b"LOCK.RELEASE", b"k", b"\0\xff binary"]).is_ok());
    }

    #[test]
    fn max_ttl_is_clamped_to_the_ceiling() {
        let args: [&[u8]; 4] = [b"LOCK.ACQUIRE", b"k", b"t", b"315360000001"];
        assert!(acquire(&args, limits(i64::MAX)).is_err());
        let args: [&[u8]; 4] = [b"LOCK.ACQUIRE", b"k", b"t", b"315360000000"];
        assert!(acquire(&args, limits(i64::MAX)).is_ok());
    }

    #[test]
    fn error_messages_escape_what_they_quote() {
        assert_eq!(printable(b"a\0b'\n"), "a\\x00b\\x27\\x0a");
        assert!(printable(&[b'z'; 100]).ends_with("..."));
    }

    #[test]
    fn parse_i64_is_strict() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        for bad in [
            &b""[..],
            b"-",
            b" 1",
            b"1 ",
            b"+1",
            b"01",
            b"1e3",
            b"9223372036854775808",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }

    /// Fuzzing the parser: random arity, random words from the option
    /// vocabulary and random bytes. Never a panic; anything accepted is
    /// within the limits; every refusal names what is wrong.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn word() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                Just(b"FENCE".to_vec()),
                Just(b"wait".to_vec()),
                Just(b"MaxHold".to_vec()),
                Just(b"TICKET".to_vec()),
                Just(b"0".to_vec()),
                Just(b"-1".to_vec()),
                Just(b"9223372036854775807".to_vec()),
                Just(b"9223372036854775808".to_vec()),
                Just(b"".to_vec()),
                (0i64..1_000_000).prop_map(|n| n.to_string().into_bytes()),
                any::<i64>().prop_map(|n| n.to_string().into_bytes()),
                proptest::collection::vec(any::<u8>(), 0..300),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]

            #[test]
            fn parsers_never_panic_and_respect_the_limits(
                words in proptest::collection::vec(word(), 0..12),
                max_ttl in 1i64..100_000,
                max_hold in 0i64..100_000,
                max_fence in prop_oneof![Just(MAX_FENCE), 1u64..2_000_000, any::<u64>()],
            ) {
                let limits = Limits { max_ttl_ms: max_ttl, max_hold_ms: max_hold, max_fence };
                let mut all: Vec<&[u8]> = vec![b"LOCK.ACQUIRE"];
                all.extend(words.iter().map(Vec::as_slice));
                match acquire(&all, limits) {
                    Ok(req) => {
                        prop_assert!((1..=256).contains(&req.token.len()));
                        prop_assert!(req.ttl_ms >= 1 && req.ttl_ms <= max_ttl.unsigned_abs());
                        if let Some(h) = req.max_hold_ms {
                            prop_assert!(req.ttl_ms <= h);
                            if max_hold > 0 {
                                prop_assert!(h <= max_hold.unsigned_abs());
                            }
                        }
                        prop_assert!(req.fence_floor <= i64::MAX.unsigned_abs());
                        prop_assert!(req.fence_floor <= max_fence.max(1));
                    }
                    Err(e) => prop_assert!(!e.0.is_empty()),
                }
                let _ = extend(&all, max_ttl);
                let _ = release(&all);
                let _ = info(&all);
                let _ = load(&all);
            }
        }
    }
}
