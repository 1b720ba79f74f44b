//! TLS to the server with libpq's meaning of every setting: `sslmode`,
//! `sslrootcert` (a file, or `system`), `sslcert` + `sslkey`, `sslcrl`,
//! `sslsni`, and libpq's default files under `~/.postgresql/`.
//!
//! The stack is rustls with the ring provider (see Cargo.toml for why).

mod connector;
mod failure;
mod files;
mod names;
mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;

pub(super) use self::connector::{Connector, Handshake};
pub(super) use self::failure::explain;
use self::verify::{Check, ServerVerifier};
use super::params::Params;
use crate::error::{Error, Result};

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first; TLS if the server refuses the plain connection.
    Allow,
    /// TLS when the server offers it, else plain (the default).
    Prefer,
    /// TLS or nothing; the certificate is checked only against a root
    /// certificate file that exists, as under `VerifyCa`.
    Require,
    /// TLS with a certificate signed by a trusted CA.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// A certificate, key or CRL file: one a setting names must exist; one of
/// libpq's defaults is used only if it exists.
#[derive(Clone, Debug)]
pub(super) struct SslFile {
    pub path: PathBuf,
    pub named: bool,
}

impl SslFile {
    /// The file of `key` in `params`, else `default` under
    /// `~/.postgresql/`.
    fn from(params: &Params, key: &str, home: Option<&Path>, default: &str) -> Option<SslFile> {
        match params.get(key).filter(|value| !value.is_empty()) {
            Some(path) => Some(SslFile {
                path: PathBuf::from(path),
                named: true,
            }),
            None => home.map(|home| SslFile {
                path: home.join(".postgresql").join(default),
                named: false,
            }),
        }
    }

    /// Whether to use it: a named file always (so that a missing one is an
    /// error), a default one only if it is there.
    fn wanted(&self) -> bool {
        self.named || self.path.exists()
    }
}

/// Where the trusted CAs come from.
#[derive(Clone, Debug)]
pub(super) enum Roots {
    File(SslFile),
    /// `sslrootcert=system`: the platform's store.
    System,
}

/// The TLS settings of a target, read from its parameters.
#[derive(Clone, Debug)]
pub(super) struct TlsSettings {
    pub mode: SslMode,
    roots: Option<Roots>,
    cert: Option<SslFile>,
    key: Option<SslFile>,
    crl: Option<SslFile>,
    sni: bool,
}

impl TlsSettings {
    /// Takes the `ssl*` settings out of `params`; `home` locates libpq's
    /// default files.
    ///
    /// # Errors
    ///
    /// A usage error for an unknown `sslmode` or `sslsni`, or for a mode
    /// weaker than verify-full with `sslrootcert=system` (as libpq 16+).
    pub fn take(params: &mut Params, home: Option<&Path>) -> Result<TlsSettings> {
        let system = params.get("sslrootcert") == Some("system");
        let mode = match params.get("sslmode") {
            None if system => SslMode::VerifyFull,
            None => SslMode::Prefer,
            Some(value) => SslMode::parse(value).ok_or_else(|| {
                Error::usage(format!(
                    "invalid sslmode \"{value}\": it is one of disable, allow, prefer, require, verify-ca, verify-full"
                ))
            })?,
        };
        if system && mode != SslMode::VerifyFull {
            return Err(Error::usage(format!(
                "sslmode \"{}\" is too weak for sslrootcert=system, which trusts every public CA: use sslmode=verify-full",
                mode.as_str()
            )));
        }
        let sni = match params.get("sslsni").unwrap_or("1") {
            "1" => true,
            "0" => false,
            other => {
                return Err(Error::usage(format!(
                    "invalid sslsni \"{other}\": it is 1 or 0"
                )));
            }
        };
        let roots = if system {
            Some(Roots::System)
        } else {
            SslFile::from(params, "sslrootcert", home, "root.crt").map(Roots::File)
        };
        let settings = TlsSettings {
            mode,
            roots,
            cert: SslFile::from(params, "sslcert", home, "postgresql.crt"),
            key: SslFile::from(params, "sslkey", home, "postgresql.key"),
            crl: SslFile::from(params, "sslcrl", home, "root.crl"),
            sni,
        };
        for key in [
            "sslmode",
            "sslrootcert",
            "sslcert",
            "sslkey",
            "sslcrl",
            "sslsni",
        ] {
            params.remove(key);
        }
        Ok(settings)
    }

    /// The rustls configuration for this target, its files read now; `None`
    /// under `sslmode=disable`.
    ///
    /// # Errors
    ///
    /// Unavailable: a file that is missing, unreadable or malformed (its
    /// path said), a key that others may read, an encrypted key, a
    /// certificate that does not match its key.
    pub fn client_config(&self) -> Result<Option<Arc<ClientConfig>>> {
        if self.mode == SslMode::Disable {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = ServerVerifier::new(
            self.check(),
            self.trusted_roots()?,
            self.crl_file().map(files::crls).transpose()?,
            provider.clone(),
        )?;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| Error::unavailable(format!("cannot set up TLS: {err}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match self.client_files() {
            Some((cert, key)) => files::with_client_certificate(builder, cert, key)?,
            None => builder.with_no_client_auth(),
        };
        config.enable_sni = self.sni;
        Ok(Some(Arc::new(config)))
    }

    /// What is checked of the server's certificate: libpq checks the
    /// chain whenever a root certificate file exists, whatever the mode.
    fn check(&self) -> Check {
        match self.mode {
            SslMode::VerifyFull => Check::ChainAndName,
            SslMode::VerifyCa => Check::Chain,
            _ if self.root_file().is_some() => Check::Chain,
            _ => Check::Nothing,
        }
    }

    /// The root certificate file in use, if any.
    fn root_file(&self) -> Option<&SslFile> {
        match &self.roots {
            Some(Roots::File(file)) if file.wanted() => Some(file),
            _ => None,
        }
    }

    fn trusted_roots(&self) -> Result<Option<Arc<rustls::RootCertStore>>> {
        match &self.roots {
            Some(Roots::System) => files::system_roots().map(Some),
            _ => match self.root_file() {
                Some(file) => files::roots(&file.path).map(Some),
                None if self.mode.verifies() => Err(self.missing_root_error()),
                None => Ok(None),
            },
        }
    }

    fn missing_root_error(&self) -> Error {
        match &self.roots {
            Some(Roots::File(file)) => Error::unavailable(format!(
                "root certificate file \"{}\" does not exist; sslmode={} needs the CA that signed the server's certificate (sslrootcert=FILE, or sslrootcert=system for the platform's CAs)",
                file.path.display(),
                self.mode.as_str()
            )),
            _ => Error::unavailable(format!(
                "no root certificate file: sslmode={} needs one (sslrootcert=FILE, or sslrootcert=system), and there is no home directory for ~/.postgresql/root.crt",
                self.mode.as_str()
            )),
        }
    }

    fn crl_file(&self) -> Option<&Path> {
        self.crl
            .as_ref()
            .filter(|file| file.wanted())
            .map(|file| file.path.as_path())
    }

    /// The client certificate and key, when a certificate is to be sent.
    fn client_files(&self) -> Option<(&SslFile, Option<&SslFile>)> {
        let cert = self.cert.as_ref().filter(|cert| cert.wanted())?;
        Some((cert, self.key.as_ref()))
    }

    /// How the trusted CAs are named in messages.
    fn roots_label(&self) -> String {
        match (&self.roots, self.root_file()) {
            (Some(Roots::System), _) => "the platform's CAs (sslrootcert=system)".to_owned(),
            (_, Some(file)) => format!("root certificate file \"{}\"", file.path.display()),
            _ => "no root certificate".to_owned(),
        }
    }

    /// The client certificate file, when one is sent.
    fn cert_label(&self) -> Option<String> {
        self.client_files()
            .map(|(cert, _)| format!("\"{}\"", cert.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<TlsSettings> {
        let mut params = Params::parse(text).unwrap();
        let settings = TlsSettings::take(&mut params, Some(Path::new("/home/u")));
        if settings.is_ok() {
            assert!(params.keys().all(|k| !k.starts_with("ssl")), "{params:?}");
        }
        settings
    }

    #[test]
    fn defaults_as_libpq() {
        let s = settings("host=db1").unwrap();
        assert_eq!(s.mode, SslMode::Prefer);
        assert!(s.sni);
        let Some(Roots::File(root)) = &s.roots else {
            panic!("{s:?}")
        };
        assert_eq!(root.path, Path::new("/home/u/.postgresql/root.crt"));
        assert!(!root.named);
        assert_eq!(
            s.key.as_ref().unwrap().path,
            Path::new("/home/u/.postgresql/postgresql.key")
        );
        // Nothing there: nothing is checked under prefer.
        assert!(matches!(s.check(), Check::Nothing));
    }

    #[test]
    fn a_named_root_file_means_verify_ca_under_require() {
        let s = settings("sslmode=require sslrootcert=/etc/ca.pem").unwrap();
        assert!(matches!(s.check(), Check::Chain));
        let s = settings("sslmode=verify-full sslrootcert=/etc/ca.pem").unwrap();
        assert!(matches!(s.check(), Check::ChainAndName));
    }

    #[test]
    fn system_roots_mean_verify_full() {
        let s = settings("sslrootcert=system").unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        let err = settings("sslrootcert=system sslmode=require").unwrap_err();
        assert!(err.is_usage());
        assert!(err.to_string().contains("too weak"), "{err}");
    }

    #[test]
    fn refuses_unknown_values() {
        assert!(settings("sslmode=sometimes").unwrap_err().is_usage());
        assert!(settings("sslsni=yes").unwrap_err().is_usage());
        assert!(!settings("sslsni=0").unwrap().sni);
    }

    #[test]
    fn verify_modes_need_a_root_file() {
        let s = settings("sslmode=verify-ca sslrootcert=/nonexistent/ca.pem").unwrap();
        let err = s.client_config().unwrap_err();
        assert!(!err.is_usage());
        assert!(
            err.to_string()
                .contains("root certificate file \"/nonexistent/ca.pem\" does not exist"),
            "{err}"
        );
        assert!(
            settings("sslmode=disable")
                .unwrap()
                .client_config()
                .unwrap()
                .is_none()
        );
    }
}
