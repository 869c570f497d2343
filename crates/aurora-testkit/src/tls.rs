//! TLS of the test's own: a test CA with server and client certificates made by `openssl`
//! (on PATH) in a temporary directory, a second CA that signed none of them (to be refused),
//! and servers on free ports that speak only TLS: Mosquitto with a TLS listener requiring
//! client certificates, NATS with a `tls {}` block (client certificates verified or not),
//! NATS with user/password authorization, Redis with `--tls-port` and `--port 0`.
//!
//! Every certificate names `127.0.0.1` and `localhost`; keys are P-256 (PKCS#8 PEM). Each
//! server is killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::servers::{free_port, redis_args, MosquittoServer};

/// The files of a test PKI. `ca` signed the server and client certificates; `wrong_ca` is
/// another CA that signed nothing here.
pub struct TestCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub wrong_ca: PathBuf,
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("openssl not runnable ({e}): install it"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

fn make_ca(dir: &Path, name: &str, cn: &str) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let subj = format!("/CN={cn}");
    let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
    args.extend(EC);
    args.extend([
        "-keyout",
        &key,
        "-out",
        &pem,
        "-subj",
        &subj,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &args);
}

fn make_leaf(dir: &Path, name: &str, cn: &str, usage: &str) {
    let (key, csr, pem, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(
        dir.join(&ext),
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        ),
    )
    .expect("write the extensions file");
    let subj = format!("/CN={cn}");
    let mut args = vec!["req", "-new", "-nodes"];
    args.extend(EC);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &ext,
        ],
    );
}

impl TestCerts {
    /// A CA, a server certificate (`127.0.0.1`, `localhost`), a client certificate
    /// (`CN=aurora-test-client`) and a wrong CA, in a fresh directory every server user can
    /// read (Mosquitto started as root reads them as its own user).
    pub fn make() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let d = dir.path();
        make_ca(d, "ca", "Aurora test CA");
        make_leaf(d, "server", "localhost", "serverAuth");
        make_leaf(d, "client", "aurora-test-client", "clientAuth");
        let wrong = d.join("wrong");
        std::fs::create_dir(&wrong).expect("a directory for the wrong CA");
        make_ca(&wrong, "ca", "Another CA");
        {
            use std::os::unix::fs::PermissionsExt;
            for p in [d, wrong.as_path()] {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
                    .expect("chmod the certificates' directory");
                for entry in std::fs::read_dir(p)
                    .expect("list the certificates")
                    .flatten()
                {
                    if entry.path().is_file() {
                        std::fs::set_permissions(
                            entry.path(),
                            std::fs::Permissions::from_mode(0o644),
                        )
                        .expect("chmod a certificate");
                    }
                }
            }
        }
        Self {
            ca: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
            wrong_ca: wrong.join("ca.pem"),
            dir,
        }
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `p` as a `&str` (temporary paths are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("a temporary path in UTF-8")
}

/// A Mosquitto whose only listener is TLS on a free port, requiring a client certificate
/// signed by the test CA (`require_certificate true`); anonymous otherwise. Its URL is
/// `mqtts://127.0.0.1:<port>`.
pub fn mosquitto_tls(certs: &TestCerts) -> MosquittoServer {
    MosquittoServer::start_with_config(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
         allow_anonymous true\nmax_queued_messages 100000\n",
        path_str(&certs.ca),
        path_str(&certs.server_cert),
        path_str(&certs.server_key),
    ))
}

/// A server process of the test's own (NATS or Redis with TLS or authorization), its
/// configuration and output in a temporary directory. Killed when dropped.
pub struct TlsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    name: &'static str,
}

impl TlsServer {
    fn spawn(
        name: &'static str,
        program: &str,
        args: &[String],
        port: u16,
        dir: tempfile::TempDir,
    ) -> Self {
        let log = std::fs::File::create(dir.path().join("server.log")).expect("a log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}: run `make services`"));
        let server = Self {
            child: Some(child),
            port,
            dir,
            name,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{name} did not listen on {port}; log:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// A NATS with JetStream that speaks only TLS with the test CA's server certificate;
    /// with `verify`, a client must present a certificate signed by the test CA.
    pub fn nats_tls(certs: &TestCerts, verify: bool) -> Self {
        Self::nats(&format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify}\n  timeout: 5\n}}\n",
            path_str(&certs.server_cert),
            path_str(&certs.server_key),
            path_str(&certs.ca),
        ))
    }

    /// A NATS with JetStream (no TLS) where only `user` with `password` may connect.
    pub fn nats_with_password(user: &str, password: &str) -> Self {
        Self::nats(&format!(
            "authorization {{\n  user: \"{user}\"\n  password: \"{password}\"\n}}\n"
        ))
    }

    fn nats(block: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{}\"\n}}\n{block}",
                path_str(&dir.path().join("js"))
            ),
        )
        .expect("write nats.conf");
        let args = vec!["-c".to_string(), path_str(&conf).to_string()];
        Self::spawn("nats-server", "nats-server", &args, port, dir)
    }

    /// A Redis listening only with TLS (`--tls-port`, `--port 0`), the test CA's server
    /// certificate; clients are not asked for certificates (`--tls-auth-clients no`: the
    /// services' `rediss://` URL carries none).
    pub fn redis_tls(certs: &TestCerts) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let port = free_port();
        let args = redis_args(
            &["--port", "0", "--tls-port", &port.to_string()],
            dir.path(),
            &[
                "--tls-cert-file",
                path_str(&certs.server_cert),
                "--tls-key-file",
                path_str(&certs.server_key),
                "--tls-ca-cert-file",
                path_str(&certs.ca),
                "--tls-auth-clients",
                "no",
            ],
        );
        Self::spawn("redis-server", "redis-server", &args, port, dir)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>` for NATS (the client upgrades to TLS as the server asks),
    /// `rediss://127.0.0.1:<port>` for Redis.
    pub fn url(&self) -> String {
        match self.name {
            "redis-server" => format!("rediss://127.0.0.1:{}", self.port),
            _ => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    /// What the server wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_ca_signed_the_server_and_client_certificates_and_not_the_wrong_one() {
        let certs = TestCerts::make();
        let verify = |ca: &Path, cert: &Path| {
            Command::new("openssl")
                .args(["verify", "-CAfile", path_str(ca), path_str(cert)])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        assert!(verify(&certs.ca, &certs.server_cert));
        assert!(verify(&certs.ca, &certs.client_cert));
        assert!(!verify(&certs.wrong_ca, &certs.server_cert));
    }
}
