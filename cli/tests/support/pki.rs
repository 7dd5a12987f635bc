//! Certificates the tests make: an authority, and a server certificate it
//! issued, as PEM files (rcgen).

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd};

/// A certificate authority, and a server certificate it issued, as PEM
/// files in a folder of their own.
pub struct Pki {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new authority, and a certificate for `names` (host names or IP
    /// addresses), valid now unless `expired`.
    pub fn new(names: &[&str], expired: bool) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "tokenizer-auth test authority");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Pki {
            ca: write("ca.pem", &ca.pem()),
            cert: write("cert.pem", &cert.pem()),
            key: write("key.pem", &key.serialize_pem()),
            _dir: dir,
        }
    }

    /// A certificate for this machine, by name and by address.
    pub fn local() -> Pki {
        Pki::new(&["localhost", "127.0.0.1"], false)
    }

    /// The server's environment for this certificate and key.
    pub fn env(&self) -> [(&'static str, &str); 2] {
        [
            ("TOKENIZER_AUTH_TLS_CERT", self.cert.to_str().unwrap()),
            ("TOKENIZER_AUTH_TLS_KEY", self.key.to_str().unwrap()),
        ]
    }

    /// Puts this pair where `other`'s files are (for a reload).
    pub fn install_over(&self, other: &Pki) {
        std::fs::copy(&self.cert, &other.cert).unwrap();
        std::fs::copy(&self.key, &other.key).unwrap();
    }
}
