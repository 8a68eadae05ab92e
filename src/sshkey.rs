//! Per-VM SSH keys: RSA-2048, the private half as PKCS#1 PEM in OpenSSL's legacy
//! encryption (AES-256-CBC, `DEK-Info`), which the travis worker decrypts with Go's
//! `x509.DecryptPEMBlock`; the public half in OpenSSH format for the VM's `ssh-keys` metadata.
//!
//! Key generation takes ~0.1–0.3 s of CPU: [`generate`] runs it on the blocking pool.

use std::fmt;

use anyhow::Context as _;
use openssl::rsa::Rsa;
use openssl::symm::Cipher;

use crate::config::Secret;

/// A fresh key pair. `Debug` never shows the private key.
pub struct KeyPair {
    /// Encrypted PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`, `Proc-Type: 4,ENCRYPTED`).
    pub private_pem: String,
    /// `ssh-rsa AAAA…`
    pub public_openssh: String,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("private_pem", &"[redacted]")
            .field("public_openssh", &self.public_openssh)
            .finish()
    }
}

/// Key pairs generated ahead of need, so a boot does not wait ~0.1–0.3 s of CPU for its key: a
/// thread keeps `capacity` pairs ready and refills as they are taken.
pub struct KeyStock {
    ready: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<KeyPair>>,
    passphrase: Secret,
}

impl KeyStock {
    /// Starts generating; the thread stops when the stock is dropped.
    pub fn new(passphrase: Secret, capacity: usize) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let pass = passphrase.clone();
        let spawned = std::thread::Builder::new()
            .name("warmer-keygen".into())
            .spawn(move || {
                loop {
                    match generate_blocking(&pass) {
                        Ok(keys) => {
                            if tx.blocking_send(keys).is_err() {
                                return; // the stock is gone
                            }
                        }
                        Err(error) => {
                            tracing::error!(error = %crate::telemetry::report(&error), "key generation failed");
                            return;
                        }
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "no key generation thread: keys are generated on demand");
        }
        Self {
            ready: tokio::sync::Mutex::new(rx),
            passphrase,
        }
    }

    /// A ready key pair, or a freshly generated one if the stock is exhausted.
    pub async fn take(&self) -> anyhow::Result<KeyPair> {
        if let Ok(keys) = self.ready.lock().await.try_recv() {
            return Ok(keys);
        }
        generate(&self.passphrase).await
    }
}

/// Generates a key pair encrypted with `passphrase`, off the async runtime.
pub async fn generate(passphrase: &Secret) -> anyhow::Result<KeyPair> {
    let passphrase = passphrase.clone();
    tokio::task::spawn_blocking(move || generate_blocking(&passphrase))
        .await
        .context("key generation task")?
}

/// Generates a key pair on the current thread.
pub fn generate_blocking(passphrase: &Secret) -> anyhow::Result<KeyPair> {
    let rsa = Rsa::generate(2048).context("generating an RSA key")?;
    let pem = rsa
        .private_key_to_pem_passphrase(Cipher::aes_256_cbc(), passphrase.expose().as_bytes())
        .context("encrypting the private key")?;
    let public_openssh = openssh_public(&rsa.e().to_vec(), &rsa.n().to_vec());
    Ok(KeyPair {
        private_pem: String::from_utf8(pem).context("PEM is ASCII")?,
        public_openssh,
    })
}

/// RFC 4253 `ssh-rsa` public key: string "ssh-rsa", mpint e, mpint n, base64-encoded.
fn openssh_public(e: &[u8], n: &[u8]) -> String {
    fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    fn put_mpint(out: &mut Vec<u8>, bytes: &[u8]) {
        let trimmed: &[u8] = {
            let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
            &bytes[start..]
        };
        if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
            let mut padded = Vec::with_capacity(trimmed.len() + 1);
            padded.push(0);
            padded.extend_from_slice(trimmed);
            put_string(out, &padded);
        } else {
            put_string(out, trimmed);
        }
    }
    let mut blob = Vec::new();
    put_string(&mut blob, b"ssh-rsa");
    put_mpint(&mut blob, e);
    put_mpint(&mut blob, n);
    format!("ssh-rsa {}", openssl::base64::encode_block(&blob))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_private_key_is_legacy_encrypted_pkcs1_and_matches_the_public_key() {
        let pass = Secret::new("correct horse");
        let keys = generate_blocking(&pass).unwrap();
        assert!(keys.private_pem.starts_with(
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,"
        ));
        let rsa =
            Rsa::private_key_from_pem_passphrase(keys.private_pem.as_bytes(), b"correct horse")
                .unwrap();
        assert_eq!(rsa.size(), 256);
        assert_eq!(
            openssh_public(&rsa.e().to_vec(), &rsa.n().to_vec()),
            keys.public_openssh
        );
        assert!(
            Rsa::private_key_from_pem_passphrase(keys.private_pem.as_bytes(), b"wrong").is_err()
        );
        assert!(!format!("{keys:?}").contains("PRIVATE"));
    }
}
