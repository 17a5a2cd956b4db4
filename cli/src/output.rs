//! What the tool prints: shell assignments for `acquire`, the per-node
//! tables of `info` and `status`. Pure functions of their inputs.

use std::time::Duration;

use redis_lock_client::{Health, Holder, LockView, LockViews, ModuleState, NodeError, NodeHealth};

use crate::duration;

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
        let _ = crate::setup::put(&eval_failure(crate::exit::INTERNAL));
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

/// One line per cell: a server's multi-line error text must not break the
/// table.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A node's error without the node's name (the row names it).
fn node_error(e: &NodeError) -> String {
    let text = e.to_string();
    let bare = text
        .strip_prefix(&format!("node {} ({}): ", e.node, e.addr))
        .unwrap_or(&text);
    one_line(bare)
}

fn lock_cells(state: &Result<Option<LockView>, NodeError>) -> Vec<String> {
    match state {
        Ok(None) => vec!["free".into()],
        Ok(Some(v)) => {
            let mut cells = vec![
                "held".into(),
                v.fence.to_string(),
                v.owner.clone(),
                duration::format(v.ttl),
                duration::format(v.held_for),
                v.extensions.to_string(),
            ];
            if let Some(m) = v.max_hold {
                cells.push(format!("maxhold {}", duration::format(m)));
            }
            cells
        }
        Err(e) => vec!["error".into(), node_error(e)],
    }
}

/// Who holds the lock across the nodes, in one line.
pub fn lock_summary(views: &LockViews) -> String {
    let n = views.nodes.len();
    let quorum = views.quorum;
    let failed = views.failed();
    let unreachable = if failed > 0 {
        format!(", {failed} not answering")
    } else {
        String::new()
    };
    match views.holder() {
        Holder::Held { owner, on } => format!(
            "held by owner {owner} on {on} of {n} nodes (quorum {quorum}){unreachable}"
        ),
        Holder::Free { on } => format!("free on {on} of {n} nodes (quorum {quorum}){unreachable}"),
        Holder::Undecided {
            top: Some((owner, on)),
            free,
        } => format!(
            "not held on a quorum: owner {owner} on {on} of {n} nodes, free on {free} (quorum {quorum}){unreachable}"
        ),
        Holder::Undecided { free, .. } => {
            format!("unknown: {free} of {n} nodes free (quorum {quorum}){unreachable}")
        }
        _ => format!("unknown (quorum {quorum}){unreachable}"),
    }
}

/// The `info` table: one row per node, then the summary line.
pub fn info(labels: &[String], views: &LockViews) -> String {
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
    for (label, state) in labels.iter().zip(&views.nodes) {
        let mut row = vec![label.clone()];
        row.extend(lock_cells(state));
        rows.push(row);
    }
    let mut out = format!("{}{}\n", table(&rows), lock_summary(views));
    if views.fences_differ() {
        out.push_str(
            "fences differ: each node numbers its own grants; the lease's fence is the one a quorum \
             was raised to, nodes that granted after the quorum may show a lower one\n",
        );
    }
    out
}

fn module_cell(module: Option<&ModuleState>) -> String {
    match module {
        Some(ModuleState::Loaded { version: Some(v) }) => {
            // MODULE LIST's integer: major * 10000 + minor * 100 + patch.
            format!("lock v{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
        }
        Some(ModuleState::Loaded { version: None }) => "lock (version not readable)".into(),
        Some(ModuleState::NotLoaded) => "NOT LOADED".into(),
        Some(ModuleState::Unknown(e)) => format!("unknown ({})", node_error(e)),
        _ => "-".into(),
    }
}

/// The `status` table: reachable, server, role, module and (with a key)
/// the lock; then what could not be read, and the verdict.
pub fn status(
    labels: &[String],
    probes: &[NodeHealth],
    key: Option<&str>,
    quorum: usize,
    health: Health,
) -> String {
    let mut header = ["node", "reachable", "server", "role", "module"]
        .map(String::from)
        .to_vec();
    if let Some(key) = key {
        header.push(format!("lock {key}"));
    }
    let mut rows = vec![header];
    let mut unreadable = Vec::new();
    for (label, p) in labels.iter().zip(probes) {
        let mut row = vec![label.clone()];
        if let Err(e) = &p.reachable {
            row.push("no".into());
            row.push(node_error(e));
            rows.push(row);
            continue;
        }
        row.push("yes".into());
        match &p.server {
            Ok(version) => row.push(version.clone()),
            Err(e) => {
                row.push("?".into());
                unreadable.push(format!("{label}: {}", node_error(e)));
            }
        }
        let role = p.role.clone().unwrap_or_else(|| "?".into());
        row.push(match p.refusing_for {
            Some(left) => format!("{role}, refusing grants for {}", duration::format(left)),
            None => role,
        });
        row.push(module_cell(p.module.as_ref()));
        match &p.lock {
            Some(state) => row.push(match state {
                Ok(None) => "free".into(),
                Ok(Some(v)) => format!(
                    "held: fence {} owner {} ttl {}",
                    v.fence,
                    v.owner,
                    duration::format(v.ttl)
                ),
                Err(e) => node_error(e),
            }),
            None if key.is_some() => row.push("-".into()),
            None => {}
        }
        rows.push(row);
    }
    let healthy = probes.iter().filter(|p| p.healthy()).count();
    let n = probes.len();
    let verdict = match health {
        Health::All => "ok",
        h if h.has_quorum() => "degraded: a quorum is healthy, locks still work",
        _ => "DOWN: fewer than a quorum healthy, locks cannot be taken",
    };
    let mut out = table(&rows);
    for line in unreadable {
        out.push_str(&format!("not readable with this user: {line}\n"));
    }
    out.push_str(&format!(
        "{healthy} of {n} nodes healthy, quorum {quorum}: {verdict}\n"
    ));
    if key.is_some() {
        let views = LockViews::new(
            probes
                .iter()
                .map(|p| match (&p.lock, &p.reachable) {
                    (Some(s), _) => s.clone(),
                    (None, Err(e)) => Err(e.clone()),
                    (None, Ok(())) => Ok(None),
                })
                .collect(),
            quorum,
        );
        out.push_str(&format!("lock: {}\n", lock_summary(&views)));
    }
    out
}

#[cfg(test)]
mod tests {

    use super::*;

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
}
