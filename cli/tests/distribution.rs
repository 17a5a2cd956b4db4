//! Distribution: one version number everywhere, and the release tarball,
//! `install` and `uninstall` of scripts/dist.sh (what `make dist`, `make
//! install` and `make uninstall` run), on the built files.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use testkit::redis;
use testkit::Server;

const BIN: &str = env!("CARGO_BIN_EXE_redis-lock");

fn root() -> PathBuf {
    testkit::workspace_root()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn module_version(conn: &mut redis::Connection) -> i64 {
    let list: Vec<Vec<redis::Value>> = redis::cmd("MODULE").arg("LIST").query(conn).unwrap();
    for module in list {
        let fields: Vec<String> = module
            .iter()
            .map(|v| match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                redis::Value::Int(i) => i.to_string(),
                _ => String::new(),
            })
            .collect();
        if fields.get(1).map(String::as_str) == Some("lock") {
            let at = fields.iter().position(|f| f == "ver").unwrap();
            return fields[at + 1].parse().unwrap();
        }
    }
    panic!("the lock module is not in MODULE LIST");
}

#[test]
fn one_version_number_everywhere() {
    let v = redis_lock_client::VERSION;
    let printed = run(Command::new(BIN).arg("--version"));
    assert_eq!(printed.trim(), format!("redis-lock {v}"));
    let parts: Vec<i64> = v.split('.').map(|p| p.parse().unwrap()).collect();
    let encoded = parts[0] * 10000 + parts[1] * 100 + parts[2];
    for flavor in testkit::flavors() {
        let server = Server::start(flavor);
        let mut c = server.conn();
        assert_eq!(module_version(&mut c), encoded, "{flavor}: MODULE LIST");
        let info = server.info("lock");
        assert!(
            info.lines()
                .any(|l| l.trim() == format!("lock_version:{v}")),
            "{flavor}: INFO lock: {info}"
        );
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn the_tarball_verifies_and_installs_where_an_admin_looks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dist");
    let module = testkit::module_path();
    let dist = run(Command::new("bash")
        .arg(root().join("scripts/dist.sh"))
        .arg("dist")
        .env("MODULE", &module)
        .env("BIN", BIN)
        .env("OUT", &out));
    assert!(dist.contains(": OK"), "{dist}");
    // The checksums verify, outside and inside the tarball.
    run(Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&out));
    let tarball = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.gz"))
        .unwrap();
    let unpacked = tmp.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&unpacked));
    let top = std::fs::read_dir(&unpacked)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    run(Command::new("sha256sum")
        .args(["-c", "SHA256SUMS"])
        .current_dir(&top));
    for want in [
        "lib/redis/modules/libredis_lock.so",
        "bin/redis-lock",
        "share/man/man1/redis-lock.1",
        "share/bash-completion/completions/redis-lock",
        "share/zsh/vendor-completions/_redis-lock",
        "share/fish/vendor_completions.d/redis-lock.fish",
        "share/doc/redis-lock/redis.conf.example",
        "share/doc/redis-lock/LICENSE-MIT",
        "share/doc/redis-lock/LICENSE-APACHE",
        "share/doc/redis-lock/docs/COMMANDS.md",
    ] {
        assert!(top.join(want).is_file(), "{want} missing from the tarball");
    }

    // make install PREFIX=...
    let prefix = tmp.path().join("prefix");
    run(Command::new("bash")
        .arg(root().join("scripts/dist.sh"))
        .arg("install")
        .env("MODULE", &module)
        .env("BIN", BIN)
        .env("PREFIX", &prefix));
    let installed = prefix.join("bin/redis-lock");
    let v = run(Command::new(&installed).arg("--version"));
    assert_eq!(
        v.trim(),
        format!("redis-lock {}", redis_lock_client::VERSION)
    );
    let page = prefix.join("share/man/man1/redis-lock.1");
    let roff = std::fs::read_to_string(&page).unwrap();
    assert!(
        roff.starts_with(".ie") || roff.contains(".TH redis-lock"),
        "{roff}"
    );
    if Command::new("man").arg("--version").output().is_ok() {
        let shown = run(Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80"));
        assert!(
            shown.contains("redis-lock") && shown.contains("SYNOPSIS"),
            "{shown}"
        );
    }
    // The installed module loads and works.
    let flavor = testkit::first_flavor();
    let server = Server::builder(flavor)
        .module(prefix.join("lib/redis/modules/libredis_lock.so"))
        .start();
    let fence: Option<i64> = redis::cmd("LOCK.ACQUIRE")
        .arg("k")
        .arg("t")
        .arg(1000)
        .query(&mut server.conn())
        .unwrap();
    assert!(fence.is_some(), "{flavor}");

    // make uninstall removes every file it put there.
    run(Command::new("bash")
        .arg(root().join("scripts/dist.sh"))
        .arg("uninstall")
        .env("PREFIX", &prefix));
    let left = files_under(&prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
}
