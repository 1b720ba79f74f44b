//! Checking the server's certificate as the sslmode asks: nothing, the
//! chain to a trusted CA (verify-ca), or the chain and the host name
//! (verify-full).

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::names;
use crate::error::{Error, Result};

/// What is checked of the server's certificate.
#[derive(Clone, Copy, Debug)]
pub(super) enum Check {
    /// Nothing (libpq's allow, prefer and require without a root file):
    /// the connection is encrypted, but the server is not authenticated.
    Nothing,
    /// The chain to a trusted CA, not the name.
    Chain,
    /// The chain and the host name.
    ChainAndName,
}

/// The server certificate verifier for one sslmode. The handshake's
/// signatures are always checked, against the certificate presented.
#[derive(Debug)]
pub(super) struct ServerVerifier {
    check: Check,
    /// webpki's verifier, which checks the chain and then the name; absent
    /// when nothing is checked.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerVerifier {
    /// A verifier for `check`, trusting `roots` (required unless nothing is
    /// checked) and refusing what `crls` revoke.
    pub fn new(
        check: Check,
        roots: Option<Arc<RootCertStore>>,
        crls: Option<Vec<CertificateRevocationListDer<'static>>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<ServerVerifier> {
        let algorithms = provider.signature_verification_algorithms;
        let webpki = match (check, roots) {
            (Check::Nothing, _) => None,
            (_, Some(roots)) => Some(
                WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .with_crls(crls.unwrap_or_default())
                    .build()
                    .map_err(|err| Error::unavailable(format!("cannot set up TLS: {err}")))?,
            ),
            // Never verify against nothing: that would accept anyone.
            (_, None) => {
                return Err(Error::unavailable(
                    "cannot verify the server's certificate: no trusted CA",
                ));
            }
        };
        Ok(ServerVerifier {
            check,
            webpki,
            algorithms,
        })
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(webpki) = &self.webpki else {
            return Ok(ServerCertVerified::assertion());
        };
        match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // webpki checks the name last: this error means the chain is
            // good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => match self.check {
                Check::ChainAndName => names::check_common_name(end_entity, server_name),
                Check::Chain | Check::Nothing => Ok(ServerCertVerified::assertion()),
            },
            verified => verified,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
