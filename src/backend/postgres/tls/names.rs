//! The names a server certificate is for, libpq's Common Name fallback for
//! a certificate without DNS names, and the error that says both sides of a
//! host-name mismatch.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::ServerCertVerified;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, OtherError};
use x509_cert::Certificate;
use x509_cert::der::{Decode, oid::db::rfc4519::CN, oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME};
use x509_cert::ext::pkix::{SubjectAltName, name::GeneralName};

/// The server certificate does not name the host connected to.
#[derive(Debug)]
pub(super) struct NameMismatch {
    pub host: String,
    /// The certificate's DNS and IP names, else its Common Names.
    pub names: Vec<String>,
}

impl fmt::Display for NameMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .names
            .iter()
            .map(|name| format!("\"{name}\""))
            .collect();
        let names = if names.is_empty() {
            "no name".to_owned()
        } else {
            names.join(", ")
        };
        write!(
            f,
            "server certificate for {names} does not match host name \"{}\"",
            self.host
        )
    }
}

impl std::error::Error for NameMismatch {}

/// The subject names of a certificate.
#[derive(Debug, Default)]
struct Names {
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    common: Vec<String>,
}

/// After webpki found no subjectAltName for the host: libpq accepts the
/// Common Name instead when the certificate has no DNS name at all
/// (RFC 6125). Otherwise the error names the host and the certificate's
/// names.
pub(super) fn check_common_name(
    end_entity: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
) -> Result<ServerCertVerified, rustls::Error> {
    let host = server_name.to_str().into_owned();
    let names = Names::of(end_entity);
    if names.dns.is_empty() && names.common.iter().any(|cn| matches_host(cn, &host)) {
        return Ok(ServerCertVerified::assertion());
    }
    let shown = if names.dns.is_empty() && names.ips.is_empty() {
        names.common
    } else {
        names
            .dns
            .into_iter()
            .chain(names.ips.iter().map(IpAddr::to_string))
            .collect()
    };
    Err(rustls::Error::InvalidCertificate(CertificateError::Other(
        OtherError(Arc::new(NameMismatch { host, names: shown })),
    )))
}

impl Names {
    /// What can be read of `cert`; nothing when it does not parse (webpki
    /// has parsed it already, so that does not happen).
    fn of(cert: &CertificateDer<'_>) -> Names {
        let Ok(cert) = Certificate::from_der(cert.as_ref()) else {
            return Names::default();
        };
        let mut names = Names::default();
        for rdn in cert.tbs_certificate.subject.0.iter() {
            for attribute in rdn.0.iter().filter(|a| a.oid == CN) {
                if let Ok(text) = std::str::from_utf8(attribute.value.value()) {
                    names.common.push(text.to_owned());
                }
            }
        }
        let alt_names = cert
            .tbs_certificate
            .extensions
            .iter()
            .flatten()
            .filter(|ext| ext.extn_id == ID_CE_SUBJECT_ALT_NAME)
            .filter_map(|ext| SubjectAltName::from_der(ext.extn_value.as_bytes()).ok())
            .flat_map(|san| san.0);
        for name in alt_names {
            match name {
                GeneralName::DnsName(dns) => names.dns.push(dns.as_str().to_owned()),
                GeneralName::IpAddress(ip) => {
                    let bytes = ip.as_bytes();
                    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
                        names.ips.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
                        names.ips.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
        names
    }
}

/// libpq's match of a certificate name against the host: equal ignoring
/// case, or a leading `*.` that stands for exactly one label.
fn matches_host(pattern: &str, host: &str) -> bool {
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = pattern.strip_prefix('*') else {
        return false;
    };
    if !suffix.starts_with('.') || host.len() <= suffix.len() || host.parse::<IpAddr>().is_ok() {
        return false;
    }
    let (label, host_suffix) = host.split_at(host.len() - suffix.len());
    host_suffix.eq_ignore_ascii_case(suffix) && !label.contains('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_names_as_libpq() {
        assert!(matches_host("db.example.com", "DB.example.com"));
        assert!(matches_host("*.example.com", "db.example.com"));
        assert!(!matches_host("*.example.com", "a.db.example.com"));
        assert!(!matches_host("*.example.com", "example.com"));
        assert!(!matches_host("*.0.0.1", "127.0.0.1"));
        assert!(!matches_host("localhost", "127.0.0.1"));
    }

    #[test]
    fn a_mismatch_names_both_sides() {
        let err = NameMismatch {
            host: "127.0.0.1".into(),
            names: vec!["localhost".into(), "db1".into()],
        };
        assert_eq!(
            err.to_string(),
            "server certificate for \"localhost\", \"db1\" does not match host name \"127.0.0.1\""
        );
    }
}
