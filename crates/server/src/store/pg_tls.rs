//! TLS to PostgreSQL, on the workspace's one TLS stack (rustls on ring), with libpq's words for
//! it in the connection string: `sslmode` = `disable`, `prefer` (the default), `require`,
//! `verify-ca` or `verify-full`, and `sslrootcert` (a PEM file, or `system` for the system's
//! roots, which verify-ca and verify-full also use when it is not given). As in libpq: `prefer`
//! and `require` encrypt without checking the certificate, `require` with `sslrootcert` checks
//! it as `verify-ca` does, `verify-ca` checks that a trusted CA signed it, and `verify-full`
//! also that it names the host connected to.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, the values this server supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not supported: use disable, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }
}

/// The TLS settings taken out of a connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of CA certificates; None for the system's roots.
    pub root_cert: Option<PathBuf>,
}

/// Splits `sslmode` and `sslrootcert` off a connection string (a `postgres://` URL or libpq's
/// `key=value` form); the rest is for tokio-postgres, which knows neither `verify-*` nor
/// `sslrootcert`.
pub fn split(conn: &str) -> Result<(String, PgTls), String> {
    let (mut mode, mut root) = (None, None);
    let mut take = |key: &str, value: String| match key {
        "sslmode" => mode = Some(value),
        _ => root = Some(value),
    };
    let rest = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let (base, query) = conn.split_once('?').unwrap_or((conn, ""));
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match url::form_urlencoded::parse(pair.as_bytes()).next() {
                Some((k, v)) if k == "sslmode" || k == "sslrootcert" => take(&k, v.into_owned()),
                _ => kept.push(pair),
            }
        }
        if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let mut kept = Vec::new();
        for word in conn.split_whitespace() {
            match word.split_once('=') {
                Some((k @ ("sslmode" | "sslrootcert"), v)) => take(k, v.trim_matches('\'').to_string()),
                _ => kept.push(word),
            }
        }
        kept.join(" ")
    };
    let mode = mode.as_deref().map(SslMode::parse).transpose()?.unwrap_or(SslMode::Prefer);
    let root_cert = root.filter(|r| r != "system").map(PathBuf::from);
    Ok((rest, PgTls { mode, root_cert }))
}

impl PgTls {
    /// The mode tokio-postgres negotiates with: whether TLS is off, tried, or required.
    pub fn wire_mode(&self) -> WireMode {
        match self.mode {
            SslMode::Disable => WireMode::Disable,
            SslMode::Prefer => WireMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
        }
    }

    /// The connector for tokio-postgres, checking the server's certificate as the mode says.
    pub fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = edge_agent_base::tls::provider();
        let check = match (self.mode, &self.root_cert) {
            (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => Check::None,
            (SslMode::Require | SslMode::VerifyCa, _) => Check::Ca,
            (SslMode::VerifyFull, _) => Check::Full,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match check {
            Check::None => Arc::new(EncryptOnly(provider.clone())),
            Check::Ca => Arc::new(AnyName(self.webpki(&provider)?)),
            Check::Full => self.webpki(&provider)?,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }

    /// The standard verifier over `sslrootcert` (or the system's roots).
    fn webpki(&self, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, String> {
        let file = self.root_cert.as_deref();
        let roots = edge_agent_base::tls::roots(file.is_none(), file).map_err(|e| format!("sslrootcert: {e}"))?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().map_err(|e| {
            format!("sslrootcert {}: {e}", file.map_or_else(|| "system".into(), |f| f.display().to_string()))
        })
    }
}

/// What is checked of the server's certificate.
enum Check {
    None,
    Ca,
    Full,
}

/// `verify-ca`: the chain must lead to a trusted CA; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain is checked before the name: a name error means the chain held.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without `sslrootcert`: encrypted, the certificate not checked (the
/// handshake's signatures still are).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_come_off_both_forms_of_connection_string() {
        let (rest, tls) = split(
            "postgres://u:p@db.internal:5432/edge?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db.internal:5432/edge?connect_timeout=5");
        assert_eq!(tls, PgTls { mode: SslMode::VerifyFull, root_cert: Some("/etc/ca.pem".into()) });
        let (rest, tls) = split("host=db user=u sslmode=require sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            (rest.as_str(), tls.mode, tls.root_cert),
            ("host=db user=u", SslMode::Require, Some("/ca.pem".into()))
        );
        let (rest, tls) = split("postgres://db/edge").unwrap();
        assert_eq!((rest.as_str(), tls.mode, tls.root_cert), ("postgres://db/edge", SslMode::Prefer, None));
        assert_eq!(split("postgres://db/e?sslrootcert=system&sslmode=verify-ca").unwrap().1.root_cert, None);
        let err = split("postgres://db/e?sslmode=allow").unwrap_err();
        assert!(err.contains("sslmode=allow is not supported: use disable, prefer"), "{err}");
    }

    #[test]
    fn a_missing_root_certificate_file_is_named() {
        let tls = PgTls { mode: SslMode::VerifyFull, root_cert: Some("/nonexistent/ca.pem".into()) };
        let err = tls.connector().err().unwrap();
        assert!(err.starts_with("sslrootcert: cannot read CA file /nonexistent/ca.pem"), "{err}");
    }
}
