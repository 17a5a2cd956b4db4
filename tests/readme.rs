//! The README's first example, run as a new user would: the server line as
//! written (on a free port instead of 7379), from a checkout-like directory
//! whose `target/release/libredis_lock.so` is the module this build made,
//! then every `$ redis-cli` line of the
//! session through a terminal (`script`, so redis-cli prints the way it does
//! for a person), and each reply compared with the one the README shows.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

const README: &str = include_str!("../README.md");
const README_PORT: &str = "7379";

/// The lines of the fenced block after `<!-- readme-test: name -->`.
fn block(name: &str) -> Vec<&'static str> {
    let marker = format!("<!-- readme-test: {name} -->");
    let after = README
        .split_once(marker.as_str())
        .unwrap_or_else(|| panic!("README has no {marker}"))
        .1;
    let body = after.trim_start().split_once('\n').unwrap().1;
    let body = body.split_once("```").unwrap().0;
    body.lines().collect()
}

/// The server process (killed on drop) and its working dir.
struct Killed {
    child: Child,
    _dir: tempfile::TempDir,
}

/// Run the README's `redis-server` line on a free port, with this build's
/// module; wait until it answers.
fn start_as_written(start: &str) -> (Killed, String) {
    let port = testkit::free_port().to_string();
    let module = testkit::module_path();
    let line = start.replace(README_PORT, &port);
    // Where the README's commands run: a checkout after `cargo build --release`.
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink(&module, release.join("libredis_lock.so")).unwrap();
    let child = Command::new("bash")
        .args(["-c", &format!("exec {line}")])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Killed { child, _dir: dir };
    testkit::eventually(Duration::from_secs(10), "the server answers", || {
        Command::new("redis-cli")
            .args(["-p", &port, "PING"])
            .output()
            .ok()
            .filter(|o| o.stdout.starts_with(b"PONG"))
    });
    (server, port)
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn in_a_terminal(cmd: &str) -> String {
    let out = Command::new("script")
        .args(["-q", "-e", "-c", cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) runs");
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

/// A reply as the README shows it, against the one we got: a fencing token
/// (a large integer) stands for any fencing token.
fn same_reply(shown: &str, got: &str) -> bool {
    let fence = |s: &str| {
        s.strip_prefix("(integer) ")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n >= 1_000_000_000)
    };
    shown == got || (fence(shown).is_some() && fence(got).is_some())
}

#[test]
fn the_readme_session_gives_the_replies_it_shows_on_a_server_started_as_it_says() {
    let server = block("server");
    assert_eq!(server[0], "cargo build --release", "{server:?}");
    let start = server[1];
    assert!(start.starts_with("redis-server "), "{start}");
    assert!(
        start.contains("--appendonly yes"),
        "the README shows a safe setup: {start}"
    );
    let (_server, port) = start_as_written(start);

    let session = block("session");
    let mut checked = 0;
    let mut lines = session.iter().peekable();
    while let Some(line) = lines.next() {
        let cmd = line
            .strip_prefix("$ ")
            .unwrap_or_else(|| panic!("expected a command: {line}"));
        assert!(cmd.contains(&format!("-p {README_PORT}")), "{cmd}");
        let mut shown = Vec::new();
        while let Some(next) = lines.peek() {
            if next.starts_with("$ ") {
                break;
            }
            shown.push(*lines.next().unwrap());
        }
        let got = in_a_terminal(&cmd.replace(README_PORT, &port));
        let got: Vec<&str> = got.lines().collect();
        assert_eq!(
            got.len(),
            shown.len(),
            "{cmd}: shown {shown:?}, got {got:?}"
        );
        for (s, g) in shown.iter().zip(&got) {
            assert!(same_reply(s, g), "{cmd}: shown {s:?}, got {g:?}");
        }
        checked += 1;
    }
    assert_eq!(checked, 4, "every line of the session ran");
}

/// Without the README's `CONFIG SET`, a fresh AOF node refuses grants and
/// says how to end the wait: the line is there for a reason.
#[test]
fn without_the_config_set_a_fresh_node_says_how_to_end_its_wait() {
    let (_server, port) = start_as_written(block("server")[1]);
    let got = in_a_terminal(&format!(
        "redis-cli -p {port} LOCK.ACQUIRE jobs:nightly worker-a-7f3c 30000"
    ));
    assert!(got.contains("TRYAGAIN"), "{got}");
    assert!(got.contains("CONFIG SET lock.rejoin-delay-ms 0"), "{got}");
}
