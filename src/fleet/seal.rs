//! Private keys are sealed on the device before they reach etcd: AES-256-GCM
//! with the fleet key (32 random bytes, `fleet.secret_file`, distributed out
//! of band), a fresh 96-bit nonce per seal, and the etcd key plus the record's
//! version as associated data — so a ciphertext cannot be moved to another
//! key or replayed as another version, and `etcdctl get --prefix` or an etcd
//! snapshot shows nothing secret.
//!
//! A sealed value is text: `sa-gcm1:` and base64url(nonce ‖ ciphertext ‖ tag).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64U;
use base64::Engine as _;
use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const PREFIX: &str = "sa-gcm1:";
const NONCE: usize = 12;
const TAG: usize = 16;

/// What is wrong with the fleet key or a sealed value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The key file cannot be used.
    #[error("fleet.secret_file {path}: {why}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// A sealed value that is not ours, was made with another fleet key, or
    /// was moved from another etcd key or version.
    #[error("the sealed value of {key} cannot be opened with this device's fleet key (another fleet key, or moved from another record)")]
    Open {
        /// The etcd key it was read from.
        key: String,
    },
    /// The crypto library failed.
    #[error("sealing failed: {0}")]
    Crypto(String),
}

/// The fleet key. Its bytes are never printed.
#[derive(Clone)]
pub struct FleetKey([u8; 32]);

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(..)")
    }
}

impl FleetKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(b: [u8; 32]) -> FleetKey {
        FleetKey(b)
    }

    /// Read the key file: a regular file of exactly 32 bytes, owned by the
    /// user running site-admin, that no other user can read or write.
    pub fn load(path: &Path) -> Result<FleetKey, SealError> {
        let bad = |why: String| SealError::KeyFile { path: path.display().to_string(), why };
        let f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let m = f.metadata().map_err(|e| bad(e.to_string()))?;
        if !m.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if m.uid() != rustix::process::geteuid().as_raw() {
            return Err(bad(format!(
                "owned by uid {}, not by the user running site-admin",
                m.uid()
            )));
        }
        if m.mode() & 0o077 != 0 {
            return Err(bad(format!(
                "mode {:04o}: other users can read or change it (chmod 600)",
                m.mode() & 0o7777
            )));
        }
        let mut b = Vec::with_capacity(33);
        f.take(33).read_to_end(&mut b).map_err(|e| bad(e.to_string()))?;
        let key: [u8; 32] = b.as_slice().try_into().map_err(|_| {
            bad(format!("{} bytes; the fleet key is exactly 32 (head -c 32 /dev/urandom)", b.len()))
        })?;
        Ok(FleetKey(key))
    }

    fn aad(etcd_key: &str, version: u64) -> Vec<u8> {
        format!("site-admin fleet seal v1\0{etcd_key}\0{version}").into_bytes()
    }

    /// Seal `plain` for the record at `etcd_key`, version `version`.
    pub fn seal(&self, etcd_key: &str, version: u64, plain: &[u8]) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE];
        openssl::rand::rand_bytes(&mut nonce).map_err(|e| SealError::Crypto(e.to_string()))?;
        let mut tag = [0u8; TAG];
        let ct = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.0,
            Some(&nonce),
            &Self::aad(etcd_key, version),
            plain,
            &mut tag,
        )
        .map_err(|e| SealError::Crypto(e.to_string()))?;
        let mut out = nonce.to_vec();
        out.extend(ct);
        out.extend(tag);
        Ok(format!("{PREFIX}{}", B64U.encode(out)))
    }

    /// Open what [`FleetKey::seal`] made for the same `etcd_key` and `version`.
    pub fn open(&self, etcd_key: &str, version: u64, sealed: &str) -> Result<Vec<u8>, SealError> {
        let fail = || SealError::Open { key: etcd_key.to_string() };
        let raw = sealed.strip_prefix(PREFIX).and_then(|b| B64U.decode(b).ok()).ok_or_else(fail)?;
        if raw.len() < NONCE + TAG {
            return Err(fail());
        }
        let (nonce, rest) = raw.split_at(NONCE);
        let (ct, tag) = rest.split_at(rest.len() - TAG);
        decrypt_aead(
            Cipher::aes_256_gcm(),
            &self.0,
            Some(nonce),
            &Self::aad(etcd_key, version),
            ct,
            tag,
        )
        .map_err(|_| fail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn sealed_values_open_only_with_the_same_key_record_and_version() {
        let k = FleetKey::from_bytes([7; 32]);
        let s = k.seal("/f/lineages/a.example", 3, b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!s.contains("PRIVATE"), "{s}");
        assert_eq!(k.open("/f/lineages/a.example", 3, &s).unwrap(), b"-----BEGIN PRIVATE KEY-----");
        assert!(k.open("/f/lineages/b.example", 3, &s).is_err(), "moved to another key");
        assert!(k.open("/f/lineages/a.example", 4, &s).is_err(), "replayed as another version");
        assert!(
            FleetKey::from_bytes([8; 32]).open("/f/lineages/a.example", 3, &s).is_err(),
            "another fleet key"
        );
        assert!(k.open("/f/lineages/a.example", 3, "sa-gcm1:AAAA").is_err());
        assert!(k.open("/f/lineages/a.example", 3, "plain").is_err());
        assert_ne!(
            s,
            k.seal("/f/lineages/a.example", 3, b"-----BEGIN PRIVATE KEY-----").unwrap(),
            "a fresh nonce each time"
        );
    }

    #[test]
    fn the_key_file_is_32_private_bytes() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("fleet.key");
        std::fs::write(&p, [1u8; 32]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(FleetKey::load(&p).is_ok());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = FleetKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("fleet.secret_file") && e.contains("0640"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&p, [1u8; 33]).unwrap();
        let e = FleetKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("exactly 32"), "{e}");
        assert!(!format!("{:?}", FleetKey::from_bytes([9; 32])).contains('9'));
    }
}
