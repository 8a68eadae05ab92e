//! Certificates for servers of a test's own that speak TLS: a certificate authority, and a
//! server certificate it signs for a host name.

use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};

/// PEM files in a directory of the test's: `ca.pem`, `server.pem`, `server.key`.
pub struct Certificates {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn key() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

fn certificate(
    subject: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    names: &[&str],
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", subject).unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    builder
        .set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    builder.set_subject_name(&name).unwrap();
    builder
        .set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    builder.set_pubkey(key).unwrap();
    match issuer {
        None => {
            builder.set_issuer_name(&name).unwrap();
            let ca = BasicConstraints::new().critical().ca().build().unwrap();
            builder.append_extension(ca).unwrap();
            builder.sign(key, MessageDigest::sha256()).unwrap();
        }
        Some((ca, ca_key)) => {
            builder.set_issuer_name(ca.subject_name()).unwrap();
            let mut san = SubjectAlternativeName::new();
            for name in names {
                if name.parse::<std::net::IpAddr>().is_ok() {
                    san.ip(name);
                } else {
                    san.dns(name);
                }
            }
            let san = san.build(&builder.x509v3_context(Some(ca), None)).unwrap();
            builder.append_extension(san).unwrap();
            builder.sign(ca_key, MessageDigest::sha256()).unwrap();
        }
    }
    builder.build()
}

impl Certificates {
    /// A new authority and a server certificate for `names` (host names or IP addresses), in
    /// `dir`.
    pub fn generate(dir: &Path, names: &[&str]) -> Certificates {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = key();
        let ca = certificate("warmer test CA", &ca_key, None, &[]);
        let server_key = key();
        let server = certificate(names[0], &server_key, Some((&ca, &ca_key)), names);
        let files = Certificates {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&files.ca, ca.to_pem().unwrap()).unwrap();
        std::fs::write(&files.cert, server.to_pem().unwrap()).unwrap();
        std::fs::write(&files.key, server_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        files
    }
}
