//! Reading the PEM files of a TLS connection: root certificates, the
//! client's certificate and key (refused when others may read the key, as
//! libpq does), and certificate revocation lists.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, TryLockError};

use rustls::client::WantsClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::{ClientConfig, ConfigBuilder, RootCertStore};

use super::SslFile;
use crate::error::{Error, Result};

/// The certificates of a root certificate file.
pub(super) fn roots(path: &Path) -> Result<Arc<RootCertStore>> {
    let certs = certificates(path, "root certificate")?;
    let mut store = RootCertStore::empty();
    let (_, unusable) = store.add_parsable_certificates(certs);
    if store.is_empty() {
        return Err(Error::unavailable(format!(
            "root certificate file \"{}\" has no usable certificate ({unusable} could not be parsed)",
            path.display()
        )));
    }
    Ok(Arc::new(store))
}

/// The platform's trusted CAs, read once per process.
///
/// Not a `OnceLock`, nor a blocking mutex around the reading: a child
/// forked while another thread of its parent read them (tens of
/// milliseconds) inherited the lock taken, with no thread left to free it,
/// and its own acquisition waited forever. The reading is done outside the
/// cache's mutex, which is only ever tried: a process that finds it taken
/// (by a thread it does not have, or a thread storing its result just
/// now) reads the CAs itself.
pub(super) fn system_roots() -> Result<Arc<RootCertStore>> {
    type Found = std::result::Result<Arc<RootCertStore>, String>;
    static SYSTEM: Mutex<Option<Found>> = Mutex::new(None);
    let tried = |use_it: &mut dyn FnMut(&mut Option<Found>)| match SYSTEM.try_lock() {
        Ok(mut cache) => use_it(&mut cache),
        Err(TryLockError::Poisoned(poisoned)) => use_it(&mut poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => {}
    };
    let mut found = None;
    tried(&mut |cache| found = cache.clone());
    let found = match found {
        Some(found) => found,
        None => {
            let read = read_system_roots();
            tried(&mut |cache| {
                cache.get_or_insert_with(|| read.clone());
            });
            read
        }
    };
    found.map_err(Error::unavailable)
}

fn read_system_roots() -> std::result::Result<Arc<RootCertStore>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        let why: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "sslrootcert=system: no trusted CA found in the platform's store{}",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            }
        ));
    }
    Ok(Arc::new(store))
}

/// The revocation lists of a CRL file.
pub(super) fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>> {
    let text = read(path, "certificate revocation list")?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&text)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| malformed(path, "certificate revocation list", &err))?;
    if crls.is_empty() {
        return Err(Error::unavailable(format!(
            "certificate revocation list file \"{}\" has no PEM \"X509 CRL\" section",
            path.display()
        )));
    }
    Ok(crls)
}

/// Adds the client certificate (`cert`, which may hold a chain) and its
/// private key to the configuration.
pub(super) fn with_client_certificate(
    builder: ConfigBuilder<ClientConfig, WantsClientCert>,
    cert: &SslFile,
    key: Option<&SslFile>,
) -> Result<ClientConfig> {
    let chain = certificates(&cert.path, "certificate")?;
    let Some(key) = key.filter(|key| key.path.exists()) else {
        let shown = key.map_or("~/.postgresql/postgresql.key".into(), |key| {
            key.path.display().to_string()
        });
        return Err(Error::unavailable(format!(
            "certificate file \"{}\" is given, but the private key file \"{shown}\" does not exist",
            cert.path.display()
        )));
    };
    let private_key = private_key(&key.path)?;
    builder
        .with_client_auth_cert(chain, private_key)
        .map_err(|err| match err {
            rustls::Error::InconsistentKeys(_) => Error::unavailable(format!(
                "certificate file \"{}\" does not match private key file \"{}\"",
                cert.path.display(),
                key.path.display()
            )),
            err => Error::unavailable(format!(
                "cannot use private key file \"{}\": {err}",
                key.path.display()
            )),
        })
}

/// The certificates of a PEM file, at least one.
fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let text = read(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| malformed(path, what, &err))?;
    if certs.is_empty() {
        return Err(Error::unavailable(format!(
            "{what} file \"{}\" has no PEM \"CERTIFICATE\" section",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC), after
/// libpq's permission check.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    check_key_permissions(path)?;
    let text = read(path, "private key")?;
    if is_encrypted(&text) {
        return Err(Error::unavailable(format!(
            "private key file \"{}\" is encrypted, which onlyone does not support; store it decrypted with mode 0600 (openssl pkey -in KEY -out NEW)",
            path.display()
        )));
    }
    PrivateKeyDer::from_pem_slice(&text).map_err(|err| match err {
        rustls::pki_types::pem::Error::NoItemsFound => Error::unavailable(format!(
            "private key file \"{}\" has no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            path.display()
        )),
        err => malformed(path, "private key", &err),
    })
}

/// libpq's rule: a key owned by root may be mode 0640 or less (so that a
/// group can share a system-wide key), any other key 0600 or less.
fn check_key_permissions(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|err| unreadable(path, "private key", &err))?;
    if !meta.is_file() {
        return Err(Error::unavailable(format!(
            "private key file \"{}\" is not a regular file",
            path.display()
        )));
    }
    if !key_mode_allowed(meta.uid(), meta.mode()) {
        return Err(Error::unavailable(format!(
            "private key file \"{}\" has group or world access (mode {:04o}); it must be mode 0600 or less if owned by the current user, or 0640 or less if owned by root",
            path.display(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

fn key_mode_allowed(owner: u32, mode: u32) -> bool {
    let forbidden = if owner == 0 { 0o037 } else { 0o077 };
    mode & forbidden == 0
}

/// An encrypted PKCS#8 key, or a traditional one with a `Proc-Type`
/// header.
fn is_encrypted(pem: &[u8]) -> bool {
    let text = String::from_utf8_lossy(pem);
    text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || text.contains("Proc-Type: 4,ENCRYPTED")
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|err| unreadable(path, what, &err))
}

fn unreadable(path: &Path, what: &str, err: &io::Error) -> Error {
    if err.kind() == io::ErrorKind::NotFound {
        Error::unavailable(format!("{what} file \"{}\" does not exist", path.display()))
    } else {
        Error::unavailable(format!(
            "cannot read {what} file \"{}\": {err}",
            path.display()
        ))
    }
}

fn malformed(path: &Path, what: &str, err: &rustls::pki_types::pem::Error) -> Error {
    Error::unavailable(format!(
        "{what} file \"{}\" is not valid PEM: {err}",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_permissions_follow_libpq() {
        assert!(key_mode_allowed(1000, 0o100600));
        assert!(key_mode_allowed(1000, 0o100400));
        assert!(!key_mode_allowed(1000, 0o100640));
        assert!(!key_mode_allowed(1000, 0o100644));
        assert!(key_mode_allowed(0, 0o100640));
        assert!(!key_mode_allowed(0, 0o100660));
        assert!(!key_mode_allowed(0, 0o100644));
    }

    #[test]
    fn encrypted_keys_are_recognised() {
        assert!(is_encrypted(
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
        ));
        assert!(is_encrypted(
            b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n"
        ));
        assert!(!is_encrypted(b"-----BEGIN PRIVATE KEY-----\nMIIB\n"));
    }
}
