//! Test certificates made with the `openssl` tool ([`TestCa`]: a CA and the server certificates
//! it signs, for PostgreSQL and Redis over TLS), and a TLS front for a real server: a proxy that
//! terminates TLS and passes the bytes to the server's plain port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A certificate authority made for one test with the `openssl` tool, and the server
/// certificates it signs (EC P-256, valid two days).
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

/// A server certificate and its key, as PEM files.
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

const EC: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        // A name of its own: two test CAs must not pass for each other.
        let cn = format!("/CN=edge-agent test CA {}", edge_agent_base::id::random_hex(4));
        let subj = ["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", &cn];
        openssl(dir.path(), &[&["req", "-x509"][..], &EC, &subj].concat());
        TestCa { dir }
    }

    /// The CA's certificate, to trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate named `name` (its file names) for the subject alternative names `sans`
    /// (`DNS:localhost,IP:127.0.0.1`), signed by this CA.
    pub fn server_cert(&self, name: &str, sans: &str) -> ServerCert {
        let d = self.dir.path();
        let (key, csr, cert, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        openssl(d, &[&["req"][..], &EC, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}")]].concat());
        std::fs::write(d.join(&ext), format!("subjectAltName={sans}\n")).unwrap();
        let sign = ["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"];
        openssl(d, &[&sign[..], &["-out", &cert, "-days", "2", "-extfile", &ext]].concat());
        ServerCert { cert: d.join(cert), key: d.join(key) }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

pub struct TlsFront {
    pub addr: SocketAddr,
    pub ca: TestCa,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl tool");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TlsFront {
    /// Listens on 127.0.0.1 with a certificate for `localhost` signed by a fresh test CA.
    pub async fn start(backend: SocketAddr) -> TlsFront {
        let ca = TestCa::new();
        let srv = ca.server_cert("srv", "DNS:localhost,IP:127.0.0.1");
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&srv.cert).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(&srv.key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let Ok(mut plain) = TcpStream::connect(backend).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront { addr, ca }
    }

    pub fn ca(&self) -> PathBuf {
        self.ca.ca()
    }
}
