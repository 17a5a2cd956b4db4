//! What the tool prints: shell assignments for `acquire`, the per-node
//! tables of `info` and `status`. Pure functions of their inputs.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::duration;
use crate::nodes::{LockState, NodeFailure, Probe};

/// `value` quoted for a POSIX shell: as is when it is made only of safe
/// characters, else in single quotes (a `'` inside becomes `'\''`).
pub fn shell_quote(value: &str) -> String {
    let safe = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.,:/@%+=".contains(&b));
    if safe {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

/// The lines `acquire` prints, one assignment each, for `eval`.
pub fn acquired(key: &str, token: &str, fence: u64, validity: Duration) -> String {
    format!(
        "REDIS_LOCK_KEY={}\nREDIS_LOCK_TOKEN={}\nREDIS_LOCK_FENCE={fence}\nREDIS_LOCK_VALIDITY_MS={}\n",
        shell_quote(key),
        shell_quote(token),
        validity.as_millis()
    )
}

/// What `acquire` prints on stdout when it fails, for `eval`: a command
/// that fails with `code`, so that `eval "$(redis-lock acquire ...)"` fails
/// with it too and `set -e` or `|| exit` stop the script. (`eval` of an
/// empty string succeeds.) Not printed to a terminal, where nobody evals.
pub fn eval_failure(code: u8) -> String {
    // SAFETY: isatty only inspects file descriptor 1.
    if unsafe { libc::isatty(1) } == 1 {
        return String::new();
    }
    format!("(exit {code})\n")
}

/// A panic in `acquire` (a bug) must fail the `eval` as well: prints the
/// failing command and exits with the internal-error status.
pub fn fail_eval_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let _ = crate::commands::put(&eval_failure(crate::exit::INTERNAL));
        std::process::exit(i32::from(crate::exit::INTERNAL));
    }));
}

/// Columns padded to their widest cell. The last cell of a row is not
/// padded and does not widen its column (a long error message at the end of
/// one row leaves the others alone).
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter(|r| c + 1 < r.len())
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 < row.len() {
                let width = widths.get(c).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<width$}  "));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn ms(millis: i64) -> String {
    duration::format(Duration::from_millis(u64::try_from(millis).unwrap_or(0)))
}

fn lock_cells(state: &Result<LockState, NodeFailure>) -> Vec<String> {
    match state {
        Ok(None) => vec!["free".into()],
        Ok(Some(i)) => {
            let mut cells = vec![
                "held".into(),
                i.fence.to_string(),
                i.owner.clone(),
                ms(i.ttl_ms),
                ms(i.acquired_ms),
                i.extensions.to_string(),
            ];
            if let Some(m) = i.maxhold_ms {
                cells.push(format!("maxhold {}", ms(m)));
            }
            cells
        }
        Err(e) => vec!["error".into(), e.to_string()],
    }
}

/// Who holds the lock across the nodes, in one line.
pub fn lock_summary(states: &[Result<LockState, NodeFailure>], quorum: usize) -> String {
    let n = states.len();
    let mut by_owner: BTreeMap<&str, usize> = BTreeMap::new();
    let mut free = 0;
    let mut failed = 0;
    for s in states {
        match s {
            Ok(Some(i)) => {
                *by_owner.entry(i.owner.as_str()).or_insert(0) += 1;
            }
            Ok(None) => free += 1,
            Err(_) => failed += 1,
        }
    }
    let top = by_owner
        .iter()
        .max_by_key(|(_, count)| **count)
        .map(|(owner, count)| (*owner, *count));
    let unreachable = if failed > 0 {
        format!(", {failed} not answering")
    } else {
        String::new()
    };
    match top {
        Some((owner, count)) if count >= quorum => format!(
            "held by owner {owner} on {count} of {n} nodes (quorum {quorum}){unreachable}"
        ),
        _ if free >= quorum => format!("free on {free} of {n} nodes (quorum {quorum}){unreachable}"),
        Some((owner, count)) => format!(
            "not held on a quorum: owner {owner} on {count} of {n} nodes, free on {free} (quorum {quorum}){unreachable}"
        ),
        None => format!("unknown: {free} of {n} nodes free (quorum {quorum}){unreachable}"),
    }
}

/// The `info` table: one row per node, then the summary line.
pub fn info(labels: &[String], states: &[Result<LockState, NodeFailure>], quorum: usize) -> String {
    let mut rows = vec![[
        "node",
        "state",
        "fence",
        "owner",
        "ttl",
        "held for",
        "extensions",
    ]
    .map(String::from)
    .to_vec()];
    for (label, state) in labels.iter().zip(states) {
        let mut row = vec![label.clone()];
        row.extend(lock_cells(state));
        rows.push(row);
    }
    format!("{}{}\n", table(&rows), lock_summary(states, quorum))
}

/// The `status` table: reachable, server, module and (with a key) the lock.
pub fn status(labels: &[String], probes: &[Probe], key: Option<&str>, quorum: usize) -> String {
    let mut header = ["node", "reachable", "server", "module"]
        .map(String::from)
        .to_vec();
    if let Some(key) = key {
        header.push(format!("lock {key}"));
    }
    let mut rows = vec![header];
    for (label, p) in labels.iter().zip(probes) {
        let mut row = vec![label.clone()];
        match &p.server {
            Ok(version) => {
                row.push("yes".into());
                row.push(version.clone());
            }
            Err(e) => {
                row.push("no".into());
                row.push(e.to_string());
                rows.push(row);
                continue;
            }
        }
        row.push(match &p.module {
            Some(Ok(Some(v))) => format!("lock v{v}"),
            Some(Ok(None)) => "NOT LOADED".into(),
            Some(Err(e)) => format!("unknown ({e})"),
            None => "-".into(),
        });
        match &p.lock {
            Some(state) => row.push(match state {
                Ok(None) => "free".into(),
                Ok(Some(i)) => format!(
                    "held: fence {} owner {} ttl {}",
                    i.fence,
                    i.owner,
                    ms(i.ttl_ms)
                ),
                Err(e) => e.to_string(),
            }),
            None if key.is_some() => row.push("-".into()),
            None => {}
        }
        rows.push(row);
    }
    let healthy = probes.iter().filter(|p| p.healthy()).count();
    let n = probes.len();
    let verdict = if healthy == n {
        "ok"
    } else if healthy >= quorum {
        "degraded: a quorum is healthy, locks still work"
    } else {
        "DOWN: fewer than a quorum healthy, locks cannot be taken"
    };
    let mut out = table(&rows);
    out.push_str(&format!(
        "{healthy} of {n} nodes healthy, quorum {quorum}: {verdict}\n"
    ));
    if key.is_some() {
        let states: Vec<Result<LockState, NodeFailure>> = probes
            .iter()
            .map(|p| match (&p.lock, &p.server) {
                (Some(s), _) => s.clone(),
                (None, Err(e)) => Err(e.clone()),
                (None, Ok(_)) => Ok(None),
            })
            .collect();
        out.push_str(&format!("lock: {}\n", lock_summary(&states, quorum)));
    }
    out
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::nodes::LockInfo;
    use redis_lock_client::NodeErrorKind;

    #[test]
    fn shell_quoting_table() {
        let cases = [
            ("abc123", "abc123"),
            ("jobs:nightly", "jobs:nightly"),
            ("", "''"),
            ("two words", "'two words'"),
            ("it's", r"'it'\''s'"),
            ("$(rm -rf /)", "'$(rm -rf /)'"),
            ("a\nb", "'a\nb'"),
            ("back`tick`", "'back`tick`'"),
        ];
        for (raw, quoted) in cases {
            assert_eq!(shell_quote(raw), quoted, "{raw:?}");
        }
    }

    #[test]
    fn acquire_prints_assignments() {
        let out = acquired("jobs:it's", "ab12", 42, Duration::from_millis(29_690));
        assert_eq!(
            out,
            "REDIS_LOCK_KEY='jobs:it'\\''s'\nREDIS_LOCK_TOKEN=ab12\nREDIS_LOCK_FENCE=42\nREDIS_LOCK_VALIDITY_MS=29690\n"
        );
    }

    fn held(owner: &str, fence: u64) -> Result<LockState, NodeFailure> {
        Ok(Some(LockInfo {
            fence,
            owner: owner.into(),
            ttl_ms: 4_990,
            acquired_ms: 10,
            extensions: 0,
            maxhold_ms: None,
        }))
    }

    fn down() -> Result<LockState, NodeFailure> {
        Err(NodeFailure {
            kind: NodeErrorKind::Connect,
            message: "refused".into(),
        })
    }

    #[test]
    fn summary_names_the_quorum_holder() {
        let cases = [
            (
                vec![held("aa", 5), held("aa", 7), down()],
                "held by owner aa on 2 of 3 nodes (quorum 2), 1 not answering",
            ),
            (vec![Ok(None), Ok(None), Ok(None)], "free on 3 of 3 nodes (quorum 2)"),
            (
                vec![held("aa", 5), Ok(None), down()],
                "not held on a quorum: owner aa on 1 of 3 nodes, free on 1 (quorum 2), 1 not answering",
            ),
            (
                vec![down(), down(), Ok(None)],
                "unknown: 1 of 3 nodes free (quorum 2), 2 not answering",
            ),
        ];
        for (states, want) in cases {
            assert_eq!(lock_summary(&states, 2), want);
        }
    }

    #[test]
    fn info_table_aligns_columns() {
        let labels = vec!["127.0.0.1:7001".to_owned(), "127.0.0.1:17002".to_owned()];
        let out = info(&labels, &[held("1a76", 99), down()], 2);
        let want = "\
node             state  fence  owner  ttl    held for  extensions
127.0.0.1:7001   held   99     1a76   4.99s  10ms      0
127.0.0.1:17002  error  cannot connect: refused
not held on a quorum: owner 1a76 on 1 of 2 nodes, free on 0 (quorum 2), 1 not answering
";
        assert_eq!(out, want);
    }

    #[test]
    fn status_reports_health_and_verdict() {
        let labels: Vec<String> = (1..=3).map(|i| format!("127.0.0.1:700{i}")).collect();
        let ok = Probe {
            server: Ok("redis 7.0.15".into()),
            module: Some(Ok(Some(1))),
            lock: Some(Ok(None)),
        };
        let no_module = Probe {
            server: Ok("redis 7.0.15".into()),
            module: Some(Ok(None)),
            lock: Some(Err(NodeFailure {
                kind: NodeErrorKind::ModuleNotLoaded,
                message: "the LOCK.* commands are unknown".into(),
            })),
        };
        let unreachable = Probe {
            server: Err(NodeFailure {
                kind: NodeErrorKind::Connect,
                message: "refused".into(),
            }),
            module: None,
            lock: None,
        };
        let out = status(&labels, &[ok.clone(), no_module, unreachable], Some("k"), 2);
        assert!(
            out.contains("127.0.0.1:7001  yes        redis 7.0.15"),
            "{out}"
        );
        assert!(out.contains("NOT LOADED"), "{out}");
        assert!(
            out.contains("127.0.0.1:7003  no         cannot connect: refused"),
            "{out}"
        );
        assert!(
            out.contains("1 of 3 nodes healthy, quorum 2: DOWN"),
            "{out}"
        );
        let all = status(&labels, &[ok.clone(), ok.clone(), ok], None, 2);
        assert!(
            all.ends_with("3 of 3 nodes healthy, quorum 2: ok\n"),
            "{all}"
        );
        assert!(!all.contains("lock:"), "{all}");
    }
}
