//! Certificates made at test time (rcgen) for a TLS test cluster: a CA, a
//! server certificate for `localhost` signed by it (and one without a
//! subjectAltName, for MySQL's VERIFY_CA), client certificates for
//! the role `certuser` (one signed by the CA, one by a second, unrelated CA
//! that the server does not trust), and a revocation list that revokes the
//! server's certificate. Files live in a temp dir removed on drop.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
    date_time_ymd,
};

/// The role the client certificates are for.
pub const CERT_USER: &str = "certuser";

/// The server certificate's serial number, which the CRL revokes.
const SERVER_SERIAL: u64 = 1001;

/// A test PKI on disk.
pub struct TestCerts {
    dir: tempfile::TempDir,
    /// PEM text for the server: its certificate and key, and the CA whose
    /// client certificates it accepts.
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub ca_pem: String,
    /// A second server certificate signed by the CA, with the Common Name
    /// `localhost` but no subjectAltName, and its key.
    pub no_san_cert_pem: String,
    pub no_san_key_pem: String,
}

impl TestCerts {
    pub fn generate() -> TestCerts {
        let dir = tempfile::Builder::new()
            .prefix("onlyone-certs-")
            .tempdir()
            .expect("create the certificates' temp dir");
        let (ca, ca_issuer) = certificate_authority("onlyone test CA");
        let (other_ca, other_issuer) = certificate_authority("unrelated test CA");

        let server_key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.serial_number = Some(SerialNumber::from(SERVER_SERIAL));
        let server_cert = server.signed_by(&server_key, &ca_issuer).unwrap();
        let no_san_key = KeyPair::generate().unwrap();
        let mut no_san = CertificateParams::new(Vec::<String>::new()).unwrap();
        no_san
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let no_san_cert = no_san.signed_by(&no_san_key, &ca_issuer).unwrap();

        let certs = TestCerts {
            dir,
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            ca_pem: ca.clone(),
            no_san_cert_pem: no_san_cert.pem(),
            no_san_key_pem: no_san_key.serialize_pem(),
        };
        certs.write("ca.crt", &ca, 0o644);
        certs.write("other-ca.crt", &other_ca, 0o644);
        certs.write_client("client", &ca_issuer);
        certs.write_client("wrong-client", &other_issuer);
        let crl = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(SERVER_SERIAL),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca_issuer)
        .unwrap();
        certs.write("revoked.crl", &crl.pem().unwrap(), 0o644);
        certs
    }

    /// A file of the PKI: `ca.crt`, `other-ca.crt`, `client.crt`,
    /// `client.key` (mode 0600), `wrong-client.crt`, `wrong-client.key`,
    /// `revoked.crl`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What the server presents and trusts.
    pub fn server_tls(&self) -> super::pg_cluster::ServerTls {
        super::pg_cluster::ServerTls {
            cert_pem: self.server_cert_pem.clone(),
            key_pem: self.server_key_pem.clone(),
            client_ca_pem: self.ca_pem.clone(),
        }
    }

    /// The directory, for files a test adds.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn write_client(&self, name: &str, issuer: &Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, CERT_USER);
        let cert = params.signed_by(&key, issuer).unwrap();
        self.write(&format!("{name}.crt"), &cert.pem(), 0o644);
        self.write(&format!("{name}.key"), &key.serialize_pem(), 0o600);
    }

    fn write(&self, name: &str, text: &str, mode: u32) {
        let path = self.path(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// A self-signed CA: its certificate (PEM) and what signs with it.
fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}
