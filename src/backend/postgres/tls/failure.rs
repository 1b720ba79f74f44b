//! A failed TLS connection attempt as one line that says what failed and
//! against which file: the driver's own text is "error performing TLS
//! handshake" and a rustls error name.

use std::error::Error as StdError;
use std::io;

use rustls::{AlertDescription, CertificateError};

use super::TlsSettings;
use super::names::NameMismatch;

/// tokio-postgres's words when the server answers an SSLRequest with 'N'
/// under `Require`; no error kind says it.
const SERVER_WITHOUT_TLS: &str = "server does not support TLS";

/// Why `err` failed, when TLS is why; `None` for any other failure.
pub(in super::super) fn explain(err: &tokio_postgres::Error, tls: &TlsSettings) -> Option<String> {
    if let Some(rustls_error) = find_rustls_error(err) {
        return Some(describe(rustls_error, tls));
    }
    let declined =
        StdError::source(err).is_some_and(|cause| cause.to_string() == SERVER_WITHOUT_TLS);
    declined.then(|| {
        format!(
            "the server does not accept TLS connections, and sslmode={} requires TLS",
            tls.mode.as_str()
        )
    })
}

/// The rustls error in `err`'s causes: tokio-rustls hands it over inside
/// an `io::Error`, whose own `source` skips it.
fn find_rustls_error(err: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn StdError + 'static)> = StdError::source(err);
    while let Some(current) = cause {
        if let Some(found) = current.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(found) = current
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(found);
        }
        cause = current.source();
    }
    None
}

fn describe(err: &rustls::Error, tls: &TlsSettings) -> String {
    match err {
        rustls::Error::InvalidCertificate(cert) => describe_certificate(cert, tls),
        rustls::Error::AlertReceived(alert) if is_client_certificate_alert(*alert) => {
            match tls.cert_label() {
                Some(cert) => format!(
                    "the server refused the client certificate {cert} (TLS alert: {alert:?})"
                ),
                None => format!(
                    "the server wants a client certificate (TLS alert: {alert:?}); give one with sslcert and sslkey"
                ),
            }
        }
        err => format!("the TLS handshake with the server failed: {err}"),
    }
}

fn describe_certificate(err: &CertificateError, tls: &TlsSettings) -> String {
    let crl = || {
        tls.crl_file().map_or("no CRL file".to_owned(), |path| {
            format!("certificate revocation list file \"{}\"", path.display())
        })
    };
    match err {
        CertificateError::UnknownIssuer => format!(
            "the server certificate is not signed by a trusted CA ({}); sslmode={}",
            tls.roots_label(),
            tls.mode.as_str()
        ),
        CertificateError::Other(other) => match other.0.downcast_ref::<NameMismatch>() {
            Some(mismatch) => format!("{mismatch} (sslmode=verify-full)"),
            None => format!("the server certificate does not verify: {other}"),
        },
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server certificate has expired".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server certificate is not valid yet (is this machine's clock right?)".to_owned()
        }
        CertificateError::Revoked => {
            format!("the server certificate is revoked ({})", crl())
        }
        CertificateError::UnknownRevocationStatus => format!(
            "the revocation status of the server certificate is unknown: {} has no list from its issuer",
            crl()
        ),
        other => format!("the server certificate does not verify: {other:?}"),
    }
}

/// Alerts a server sends when it does not accept the client certificate,
/// or wants one.
fn is_client_certificate_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
    )
}
