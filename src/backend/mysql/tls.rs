//! TLS to the server with the `mysql` client's meaning of `ssl-mode`,
//! `ssl-ca`, `ssl-cert` and `ssl-key` (see [`Tls`] for how they combine),
//! on mysql_async's rustls support (the ring provider, as the PostgreSQL
//! backend).
//!
//! What mysql_async does not do the client's way is done here:
//! - PREFERRED: mysql_async fails when the server offers no TLS; the
//!   session then connects again without it.
//! - VERIFY_CA: mysql_async's switch to skip the name check does not work
//!   with rustls 0.23 (blackbeam/mysql_async#404), so the name check is made
//!   to pass instead: a certificate that chains to the CA but does not name
//!   the host is met again with one of the names it presents (rustls checks
//!   the chain before the name, so only a certificate the CA signed gets
//!   that far). A certificate that presents no name (no subjectAltName:
//!   rustls ignores the Common Name) cannot be met so, and is refused,
//!   saying why, though the CA signed it: the mysql client would accept it.

use std::error::Error as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use mysql_async::{ClientIdentity, DriverError, SslOpts};
use rustls::{AlertDescription, CertificateError};

use super::target::{SslMode, Tls};
use crate::error::{Error, Result};

/// mysql_async's TLS options for `tls`; `name` replaces the host in the
/// certificate's name check (VERIFY_CA's second attempt).
pub(super) fn ssl_opts(tls: &Tls, name: Option<&str>) -> Result<SslOpts> {
    let mut opts = SslOpts::default();
    if tls.mode.verifies() {
        let ca = tls.ca.as_deref().expect("a verifying mode has ssl-ca");
        opts = opts
            .with_root_certs(vec![read(ca, "ssl-ca")?.into()])
            .with_disable_built_in_roots(true);
    } else {
        // Encrypted, the certificate not checked. (The built-in roots stay:
        // mysql_async builds its unused verifier from them.)
        opts = opts.with_danger_accept_invalid_certs(true);
    }
    if let Some((cert, key)) = &tls.identity {
        check_key_permissions(key)?;
        opts = opts.with_client_identity(Some(ClientIdentity::new(
            read(cert, "ssl-cert")?.into(),
            read(key, "ssl-key")?.into(),
        )));
    }
    if let Some(name) = name {
        opts = opts.with_danger_tls_hostname_override(Some(name.to_owned()));
    }
    Ok(opts)
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    fs::read(path).map_err(|err| {
        Error::unavailable(format!(
            "cannot read the {what} file \"{}\": {err}",
            path.display()
        ))
    })
}

/// As for the PostgreSQL backend's `sslkey` (libpq's rule): a key owned by
/// root may be mode 0640 or less, any other key 0600 or less.
fn check_key_permissions(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(|err| {
        Error::unavailable(format!(
            "cannot read the ssl-key file \"{}\": {err}",
            path.display()
        ))
    })?;
    let forbidden = if meta.uid() == 0 { 0o037 } else { 0o077 };
    if !meta.is_file() || meta.mode() & forbidden != 0 {
        return Err(Error::unavailable(format!(
            "refusing the ssl-key file \"{}\": it is not a regular file of mode 0600 or less (0640 if owned by root); it has mode {:04o}",
            path.display(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Whether the connection failed because the server offers no TLS.
pub(super) fn server_without_tls(err: &mysql_async::Error) -> bool {
    matches!(
        err,
        mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer)
    )
}

/// For VERIFY_CA: a name the server's certificate presents, when the
/// certificate chains to the CA but does not name the host.
pub(super) fn presented_name(err: &mysql_async::Error) -> Option<String> {
    match find_rustls_error(err)? {
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            presented,
            ..
        }) => plain_names(presented).into_iter().find_map(|name| {
            // A wildcard stands for any one label.
            let name = match name.strip_prefix("*.") {
                Some(rest) => format!("onlyone-verify-ca.{rest}"),
                None => name,
            };
            rustls::pki_types::ServerName::try_from(name.as_str())
                .is_ok()
                .then_some(name)
        }),
        _ => None,
    }
}

/// The names of a certificate as rustls reports them (`DnsName("db1")`,
/// `IpAddress(10.0.0.5)`): the DNS names and addresses, as text.
fn plain_names(presented: &[String]) -> Vec<String> {
    presented
        .iter()
        .filter_map(|name| {
            name.strip_prefix("DnsName(\"")
                .and_then(|rest| rest.strip_suffix("\")"))
                .or_else(|| {
                    name.strip_prefix("IpAddress(")
                        .and_then(|rest| rest.strip_suffix(')'))
                })
                .map(str::to_owned)
        })
        .collect()
}

/// Which TLS step failed, in one line, when it was one.
pub(super) fn explain(err: &mysql_async::Error, tls: &Tls, host: &str) -> Option<String> {
    if server_without_tls(err) {
        return Some(format!(
            "the server does not offer TLS, which ssl-mode={} requires (it has no ssl_cert/ssl_key configured)",
            tls.mode.as_str()
        ));
    }
    let ca = || {
        tls.ca
            .as_deref()
            .map_or_else(String::new, |ca| format!(" \"{}\"", ca.display()))
    };
    Some(match find_rustls_error(err)? {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "TLS: the server's certificate is not trusted: it is not signed by the CA in ssl-ca{}",
                ca()
            ),
            CertificateError::NotValidForNameContext { presented, .. }
                if tls.mode == SslMode::VerifyCa && plain_names(presented).is_empty() =>
            {
                "TLS: ssl-mode=VERIFY_CA needs a server certificate with a subjectAltName (a DNS name or an IP address), and the server's has none: the driver cannot skip the host name check (mysql_async#404), so onlyone checks the certificate against a name it presents; give the certificate a subjectAltName, or use ssl-mode=REQUIRED (encrypted, not verified)"
                    .to_owned()
            }
            CertificateError::NotValidForNameContext { presented, .. } => format!(
                "TLS: host name mismatch: the server's certificate is for {}, not {host} (ssl-mode={})",
                match plain_names(presented) {
                    names if names.is_empty() => "no name (it has no subjectAltName)".to_owned(),
                    names => names.join(", "),
                },
                tls.mode.as_str()
            ),
            CertificateError::NotValidForName => format!(
                "TLS: host name mismatch: the server's certificate is not for {host} (ssl-mode={})",
                tls.mode.as_str()
            ),
            other => format!("TLS: the server's certificate is not valid: {other}"),
        },
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateUnknown),
        ) => format!("TLS: the server refused the client certificate (ssl-cert): alert {alert:?}"),
        other => format!("TLS handshake failed: {other}"),
    })
}

/// The rustls error under mysql_async's, wherever the driver put it.
fn find_rustls_error(err: &mysql_async::Error) -> Option<&rustls::Error> {
    if let mysql_async::Error::Io(mysql_async::IoError::Tls(mysql_async::TlsError::Tls(err))) = err
    {
        return Some(err);
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = err.source();
    while let Some(err) = cause {
        if let Some(found) = err.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(found) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(found);
        }
        cause = err.source();
    }
    None
}

/// How a session's connection is protected, for messages.
pub(super) fn describe(mode: SslMode, encrypted: bool) -> &'static str {
    match (encrypted, mode) {
        (false, _) => "not encrypted",
        (true, SslMode::VerifyIdentity) => "encrypted (TLS, certificate and host name verified)",
        (true, SslMode::VerifyCa) => "encrypted (TLS, certificate verified)",
        (true, _) => "encrypted (TLS, certificate not verified)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_from_what_rustls_reports() {
        let presented = [
            "DnsName(\"db1.example\")".to_owned(),
            "IpAddress(10.0.0.5)".to_owned(),
            "DirectoryName".to_owned(),
        ];
        assert_eq!(plain_names(&presented), ["db1.example", "10.0.0.5"]);
    }
}
