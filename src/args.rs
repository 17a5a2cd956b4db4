//! Argument parsing and validation into typed requests. Pure: works on byte
//! slices, returns the Redis error message (without the `ERR ` prefix) that
//! names the argument at fault.

use crate::lock::MAX_TOKEN_LEN;

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

/// `LOCK.ACQUIRE key token ttl-ms`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcquireReq<'a> {
    pub token: &'a [u8],
    pub ttl_ms: u64,
}

/// `LOCK.EXTEND key token ttl-ms`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtendReq<'a> {
    pub token: &'a [u8],
    pub ttl_ms: u64,
}

/// `LOCK.RELEASE key token`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseReq<'a> {
    pub token: &'a [u8],
}

/// `args` is the whole command line, name first, key second.
pub fn acquire<'a>(args: &[&'a [u8]], max_ttl_ms: i64) -> Result<AcquireReq<'a>, ArgError> {
    const NAME: &str = "lock.acquire";
    let [_, _key, token, ttl, options @ ..] = args else {
        return Err(ArgError::arity(NAME));
    };
    if let Some(option) = options.first() {
        return Err(ArgError(format!(
            "unknown option '{}' for '{NAME}'",
            printable(option)
        )));
    }
    Ok(AcquireReq {
        token: token_arg(token)?,
        ttl_ms: ttl_arg(ttl, max_ttl_ms)?,
    })
}

pub fn extend<'a>(args: &[&'a [u8]], max_ttl_ms: i64) -> Result<ExtendReq<'a>, ArgError> {
    let [_, _key, token, ttl] = args else {
        return Err(ArgError::arity("lock.extend"));
    };
    Ok(ExtendReq {
        token: token_arg(token)?,
        ttl_ms: ttl_arg(ttl, max_ttl_ms)?,
    })
}

pub fn release<'a>(args: &[&'a [u8]]) -> Result<ReleaseReq<'a>, ArgError> {
    let [_, _key, token] = args else {
        return Err(ArgError::arity("lock.release"));
    };
    Ok(ReleaseReq {
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

    #[test]
    fn acquire_accepts_a_well_formed_request() {
        let args = argv(&["LOCK.ACQUIRE", "k", "tok", "1500"]);
        assert_eq!(
            acquire(&args, 86_400_000),
            Ok(AcquireReq {
                token: b"tok",
                ttl_ms: 1500
            })
        );
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
                &["LOCK.ACQUIRE", "k", "tok", "100", "NX"],
                "unknown option 'NX' for 'lock.acquire'",
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
                b"LOCK.ACQUIRE" => acquire(&args, max).map(|_| ()),
                b"LOCK.EXTEND" => extend(&args, max).map(|_| ()),
                _ => release(&args).map(|_| ()),
            }
            .unwrap_err();
            assert!(err.0.starts_with(expected), "{args:?}: got '{}'", err.0);
        }
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
        assert!(acquire(&args, i64::MAX).is_err());
        let args: [&[u8]; 4] = [b"LOCK.ACQUIRE", b"k", b"t", b"315360000000"];
        assert!(acquire(&args, i64::MAX).is_ok());
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
}
