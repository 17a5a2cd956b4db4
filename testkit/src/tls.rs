//! Certificates for TLS tests, made with the `openssl` command in a temp
//! dir: a CA, a server certificate for `localhost` and `127.0.0.1`, and a
//! client certificate, all signed by the CA.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use crate::{free_port, Flavor, Server, ServerBuilder};

/// The files of one test PKI; removed with the value.
pub struct Certs {
    dir: TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    pub fn generate() -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=redis-lock test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        );
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write ext.cnf");
        for name in ["server", "client"] {
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    "ext.cnf",
                    "-out",
                    &crt,
                ],
            );
        }
        Certs { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A server builder that also listens for TLS on a free port (returned),
    /// requiring a client certificate signed by this CA.
    pub fn server(&self, flavor: Flavor) -> (ServerBuilder, u16) {
        let port = free_port();
        let p = |f: &str| self.path(f).display().to_string();
        let builder = Server::builder(flavor)
            .arg("tls-port", &port.to_string())
            .arg("tls-cert-file", &p("server.crt"))
            .arg("tls-key-file", &p("server.key"))
            .arg("tls-ca-cert-file", &p("ca.crt"))
            .arg("tls-auth-clients", "yes");
        (builder, port)
    }
}
