//! The `LOCK.*` protocol as plain values: a typed request per command, one
//! encoder to a `redis::Cmd`, and the decoding of each reply shape from a
//! `redis::Value` into a typed answer. No IO: tested with tables.
//!
//! The module's replies (docs/COMMANDS.md): `LOCK.ACQUIRE` a fence or nil,
//! `LOCK.EXTEND` 1 / 0 / -1, `LOCK.RELEASE` 1 / 0, `LOCK.INFO` nil or a
//! field map. Anything else breaks the module's contract and decodes as
//! [`Malformed`]; error replies never get here (the connection turns a
//! top-level error reply into a `RedisError`).

use std::fmt;
use std::time::Duration;

use redis::{Cmd, Value};

use crate::inspect::LockView;

/// A `LOCK.*` request: its command, key, token and options, and how its
/// reply decodes.
pub(crate) trait Request {
    type Reply;
    const NAME: &'static str;
    /// The key, and the token if the request carries one (never shown in
    /// a message).
    fn target(&self) -> (&str, Option<&str>);
    /// The arguments after the key and the token.
    fn options(&self, _cmd: &mut Cmd) {}
    fn decode(&self, reply: &Value) -> Result<Self::Reply, Malformed>;
}

/// The one encoder: `NAME key [token] options...`.
pub(crate) fn encode<R: Request>(request: &R) -> Cmd {
    let mut cmd = redis::cmd(R::NAME);
    let (key, token) = request.target();
    cmd.arg(key);
    if let Some(token) = token {
        cmd.arg(token);
    }
    request.options(&mut cmd);
    cmd
}

/// A reply outside the module's contract, said in one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn malformed<R: Request>(reply: &Value) -> Malformed {
    Malformed(format!("{} answered {reply:?}", R::NAME))
}

/// `LOCK.ACQUIRE key token ttl-ms [FENCE floor] [MAXHOLD ms] [WAIT
/// timeout-ms [TICKET n]]`: the fence if our token now holds the lock,
/// `None` if another token holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Acquire<'a> {
    pub(crate) key: &'a str,
    pub(crate) token: &'a str,
    pub(crate) ttl_ms: u64,
    /// Raise the lock's fence and the node's counter to at least this
    /// (owner-checked: a lock held by another token is left alone).
    pub(crate) fence_floor: Option<u64>,
    /// A new grant's hold limit.
    pub(crate) max_hold_ms: Option<u64>,
    /// Wait in the node's queue (on a connection of its own).
    pub(crate) wait: Option<QueueWait>,
}

/// `WAIT timeout-ms [TICKET n]` of a [`Acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueWait {
    pub(crate) wait_ms: u64,
    /// The waiter's place in the queue (the same on every node).
    pub(crate) ticket: Option<u64>,
}

impl<'a> Acquire<'a> {
    pub(crate) fn new(key: &'a str, token: &'a str, ttl_ms: u64) -> Self {
        Acquire {
            key,
            token,
            ttl_ms,
            fence_floor: None,
            max_hold_ms: None,
            wait: None,
        }
    }

    pub(crate) fn fence(self, floor: Option<u64>) -> Self {
        Acquire {
            fence_floor: floor,
            ..self
        }
    }

    pub(crate) fn wait(self, wait_ms: u64, ticket: Option<u64>) -> Self {
        Acquire {
            wait: Some(QueueWait { wait_ms, ticket }),
            ..self
        }
    }
}

impl Request for Acquire<'_> {
    type Reply = Option<u64>;
    const NAME: &'static str = "LOCK.ACQUIRE";

    fn target(&self) -> (&str, Option<&str>) {
        (self.key, Some(self.token))
    }

    fn options(&self, cmd: &mut Cmd) {
        cmd.arg(self.ttl_ms);
        if let Some(floor) = self.fence_floor {
            cmd.arg("FENCE").arg(floor);
        }
        if let Some(ms) = self.max_hold_ms {
            cmd.arg("MAXHOLD").arg(ms);
        }
        if let Some(w) = self.wait {
            cmd.arg("WAIT").arg(w.wait_ms);
            if let Some(ticket) = w.ticket {
                cmd.arg("TICKET").arg(ticket);
            }
        }
    }

    fn decode(&self, reply: &Value) -> Result<Option<u64>, Malformed> {
        match reply {
            Value::Nil => Ok(None),
            // The module never grants below the floor it was given.
            Value::Int(fence) => u64::try_from(*fence)
                .ok()
                .filter(|f| self.fence_floor.is_none_or(|floor| *f >= floor))
                .map(Some)
                .ok_or_else(|| malformed::<Self>(reply)),
            other => Err(malformed::<Self>(other)),
        }
    }
}

/// `LOCK.EXTEND key token ttl-ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extend<'a> {
    pub(crate) key: &'a str,
    pub(crate) token: &'a str,
    pub(crate) ttl_ms: u64,
}

/// A node's answer to `LOCK.EXTEND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Extended {
    /// 1: extended.
    Yes,
    /// 0: not held by our token.
    NotHeld,
    /// -1: our token holds it, but the node's hold limit is reached.
    HoldLimit,
}

impl Request for Extend<'_> {
    type Reply = Extended;
    const NAME: &'static str = "LOCK.EXTEND";

    fn target(&self) -> (&str, Option<&str>) {
        (self.key, Some(self.token))
    }

    fn options(&self, cmd: &mut Cmd) {
        cmd.arg(self.ttl_ms);
    }

    fn decode(&self, reply: &Value) -> Result<Extended, Malformed> {
        match reply {
            Value::Int(1) => Ok(Extended::Yes),
            Value::Int(0) => Ok(Extended::NotHeld),
            Value::Int(-1) => Ok(Extended::HoldLimit),
            other => Err(malformed::<Self>(other)),
        }
    }
}

/// `LOCK.RELEASE key token`: whether our token held it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Release<'a> {
    pub(crate) key: &'a str,
    pub(crate) token: &'a str,
}

impl Request for Release<'_> {
    type Reply = bool;
    const NAME: &'static str = "LOCK.RELEASE";

    fn target(&self) -> (&str, Option<&str>) {
        (self.key, Some(self.token))
    }

    fn decode(&self, reply: &Value) -> Result<bool, Malformed> {
        match reply {
            Value::Int(1) => Ok(true),
            Value::Int(0) => Ok(false),
            other => Err(malformed::<Self>(other)),
        }
    }
}

/// `LOCK.INFO key`: the lock as the node shows it, `None` when free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Info<'a> {
    pub(crate) key: &'a str,
}

impl Request for Info<'_> {
    type Reply = Option<LockView>;
    const NAME: &'static str = "LOCK.INFO";

    fn target(&self) -> (&str, Option<&str>) {
        (self.key, None)
    }

    fn decode(&self, reply: &Value) -> Result<Option<LockView>, Malformed> {
        if matches!(reply, Value::Nil) {
            return Ok(None);
        }
        let bad = || malformed::<Self>(reply);
        let fields = pairs(reply).ok_or_else(bad)?;
        let mut view = LockView::default();
        let mut seen_fence = false;
        for (name, value) in fields {
            let int = match value {
                Value::Int(i) => Some(*i),
                _ => None,
            };
            match (name.as_str(), int) {
                ("fence", Some(i)) => {
                    view.fence = u64::try_from(i).map_err(|_| bad())?;
                    seen_fence = true;
                }
                ("ttl", Some(i)) => view.ttl = millis(i),
                ("acquired", Some(i)) => view.held_for = millis(i),
                ("extensions", Some(i)) => view.extensions = u64::try_from(i).unwrap_or(0),
                ("maxhold", Some(i)) => view.max_hold = Some(millis(i)),
                ("owner", _) => view.owner = value_text(value),
                _ => {}
            }
        }
        if !seen_fence {
            return Err(bad());
        }
        Ok(Some(view))
    }
}

/// A reply element as text.
pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// The field/value pairs of a RESP2 flat array or a RESP3 map.
pub(crate) fn pairs(v: &Value) -> Option<Vec<(String, &Value)>> {
    match v {
        Value::Map(kv) => Some(kv.iter().map(|(k, v)| (value_text(k), v)).collect()),
        Value::Array(items) => Some(
            items
                .chunks(2)
                .filter_map(|kv| match kv {
                    [k, v] => Some((value_text(k), v)),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

fn millis(i: i64) -> Duration {
    Duration::from_millis(u64::try_from(i).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command's words, as sent.
    fn words(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<cursor>".to_owned(),
            })
            .collect()
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn requests_encode_to_the_documented_command_lines() {
        let acquire = Acquire::new("jobs:a", "tok", 5000);
        let cases: [(Cmd, &str); 8] = [
            (encode(&acquire), "LOCK.ACQUIRE jobs:a tok 5000"),
            (
                encode(&acquire.fence(Some(42))),
                "LOCK.ACQUIRE jobs:a tok 5000 FENCE 42",
            ),
            (encode(&acquire.fence(None)), "LOCK.ACQUIRE jobs:a tok 5000"),
            (
                encode(&acquire.wait(800, Some(1_700_000_000_000_000))),
                "LOCK.ACQUIRE jobs:a tok 5000 WAIT 800 TICKET 1700000000000000",
            ),
            (
                encode(&Acquire {
                    max_hold_ms: Some(60_000),
                    ..acquire.fence(Some(7)).wait(10, None)
                }),
                "LOCK.ACQUIRE jobs:a tok 5000 FENCE 7 MAXHOLD 60000 WAIT 10",
            ),
            (
                encode(&Extend {
                    key: "k",
                    token: "t",
                    ttl_ms: 1,
                }),
                "LOCK.EXTEND k t 1",
            ),
            (
                encode(&Release {
                    key: "k",
                    token: "t",
                }),
                "LOCK.RELEASE k t",
            ),
            (encode(&Info { key: "a b" }), "LOCK.INFO a b"),
        ];
        for (cmd, want) in cases {
            assert_eq!(words(&cmd).join(" "), want);
        }
        // A key with a space stays one argument.
        assert_eq!(words(&encode(&Info { key: "a b" })), ["LOCK.INFO", "a b"]);
    }

    #[test]
    fn acquire_replies_decode_to_a_fence_or_nil() {
        let plain = Acquire::new("k", "t", 10);
        let floored = plain.fence(Some(100));
        let cases: [(Acquire, Value, Result<Option<u64>, ()>); 9] = [
            (plain, Value::Nil, Ok(None)),
            (plain, Value::Int(7), Ok(Some(7))),
            (plain, Value::Int(0), Ok(Some(0))),
            (plain, Value::Int(-1), Err(())),
            (plain, Value::Okay, Err(())),
            (plain, bulk("7"), Err(())),
            // Never below the floor it was given.
            (floored, Value::Int(100), Ok(Some(100))),
            (floored, Value::Int(99), Err(())),
            (floored, Value::Nil, Ok(None)),
        ];
        for (request, reply, want) in cases {
            let got = request.decode(&reply).map_err(|_| ());
            assert_eq!(got, want, "{request:?} <- {reply:?}");
        }
        let e = plain.decode(&Value::Int(-1)).unwrap_err();
        assert_eq!(e.to_string(), "LOCK.ACQUIRE answered int(-1)");
    }

    #[test]
    fn extend_and_release_replies_decode_to_their_answers() {
        let extend = Extend {
            key: "k",
            token: "t",
            ttl_ms: 10,
        };
        let cases = [
            (Value::Int(1), Ok(Extended::Yes)),
            (Value::Int(0), Ok(Extended::NotHeld)),
            (Value::Int(-1), Ok(Extended::HoldLimit)),
            (Value::Int(2), Err(())),
            (Value::Nil, Err(())),
            // An error nested in a reply is no answer either.
            (redis::parse_redis_value(b"-ERR x\r\n").unwrap(), Err(())),
        ];
        for (reply, want) in cases {
            assert_eq!(extend.decode(&reply).map_err(|_| ()), want, "{reply:?}");
        }
        let release = Release {
            key: "k",
            token: "t",
        };
        let cases = [
            (Value::Int(1), Ok(true)),
            (Value::Int(0), Ok(false)),
            (Value::Int(-1), Err(())),
            (Value::Nil, Err(())),
            (Value::Okay, Err(())),
        ];
        for (reply, want) in cases {
            assert_eq!(release.decode(&reply).map_err(|_| ()), want, "{reply:?}");
        }
    }

    #[test]
    fn lock_info_decodes_from_resp2_and_resp3() {
        let info = Info { key: "k" };
        let flat = Value::Array(vec![
            bulk("acquired"),
            Value::Int(12),
            bulk("extensions"),
            Value::Int(1),
            bulk("fence"),
            Value::Int(1_795_326_391_278_776),
            bulk("owner"),
            bulk("1a7674eb4ee78df7"),
            bulk("ttl"),
            Value::Int(4988),
        ]);
        let want = LockView {
            fence: 1_795_326_391_278_776,
            owner: "1a7674eb4ee78df7".into(),
            ttl: Duration::from_millis(4988),
            held_for: Duration::from_millis(12),
            extensions: 1,
            max_hold: None,
        };
        assert_eq!(info.decode(&flat).unwrap(), Some(want.clone()));
        let map = Value::Map(vec![
            (bulk("fence"), Value::Int(1_795_326_391_278_776)),
            (bulk("owner"), bulk("1a7674eb4ee78df7")),
            (bulk("ttl"), Value::Int(4988)),
            (bulk("acquired"), Value::Int(12)),
            (bulk("extensions"), Value::Int(1)),
            (bulk("maxhold"), Value::Int(50_000)),
        ]);
        let with_maxhold = LockView {
            max_hold: Some(Duration::from_millis(50_000)),
            ..want
        };
        assert_eq!(info.decode(&map).unwrap(), Some(with_maxhold));
        assert_eq!(info.decode(&Value::Nil).unwrap(), None);
        for garbage in [
            Value::Int(3),
            Value::Array(vec![bulk("ttl"), Value::Int(1)]),
            Value::Array(vec![bulk("fence"), Value::Int(-1)]),
        ] {
            assert!(info.decode(&garbage).is_err(), "{garbage:?}");
        }
    }
}
