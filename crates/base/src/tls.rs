//! One rustls client configuration for every outgoing connection (token, WebSocket, releases,
//! and the server's PostgreSQL and Redis): the system's roots plus an optional extra CA file,
//! built only when a TLS connection needs it, always on the `ring` provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("no trusted root certificates: the system has none and no ca_file is configured")]
    NoRoots,
}

/// A client configuration trusting the system's roots (when `system_roots`) and `ca_file`.
pub fn client_config(system_roots: bool, ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = roots(system_roots, ca_file)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What to check when a TLS connection failed as `why` (an error chain) says; empty when it is
/// not a certificate problem. `ca_option` names where the CA is given (`?cacert=FILE`).
pub fn hint(why: &str, ca_option: &str) -> String {
    if why.contains("UnknownIssuer") || why.contains("BadSignature") {
        format!(": the server's certificate is not signed by a trusted CA (give the CA that signed it as {ca_option})")
    } else if why.contains("NotValidForName") || why.contains("not valid for name") {
        ": the server's certificate does not name the host connected to".into()
    } else if why.contains("InvalidContentType") || why.contains("CorruptMessage") {
        ": the server did not answer TLS".into()
    } else {
        String::new()
    }
}

/// The one crypto provider: `ring`.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's roots (when `system_roots`) and the certificates of `ca_file`; an unreadable CA
/// file, or one with no certificate in it, is an error naming it.
pub fn roots(system_roots: bool, ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if system_roots {
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
    }
    if let Some(path) = ca_file {
        let ca_error = |message: String| TlsError::CaFile { path: path.to_path_buf(), message };
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| ca_error(e.to_string()))?;
        let mut n = 0;
        for cert in certs {
            roots.add(cert.map_err(|e| ca_error(e.to_string()))?).map_err(|e| ca_error(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(ca_error("no PEM certificate in it".into()));
        }
    }
    if system_roots && roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    Ok(roots)
}
