//! imgproxy-compatible URL signatures: base64url(HMAC-SHA256(key, salt ‖ path)), truncated to
//! `signature_size` bytes.
//!
//! Several key/salt pairs may be configured for rotation: the first signs, every pair verifies.
//! Verification is constant-time per pair and tries every pair, so timing does not reveal which
//! pair (if any) nearly matched. It is pure CPU and runs before any I/O.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::config::types::{ConfigError, positive, require, within};

/// Seconds since the Unix epoch (the unit of `exp:`); 0 if the clock is before 1970.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies transform paths.
#[derive(Clone)]
pub struct Signer {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    size: usize,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Signer")
            .field("pairs", &self.pairs.len())
            .field("size", &self.size)
            .finish()
    }
}

impl Signer {
    /// Builds a signer from hex keys and salts (validated by config, re-checked here).
    pub fn from_hex(keys: &[String], salts: &[String], size: usize) -> Result<Signer, String> {
        if keys.is_empty() || keys.len() != salts.len() {
            return Err("keys and salts must be non-empty and pair by position".into());
        }
        if !(1..=32).contains(&size) {
            return Err("signature size must be 1..=32".into());
        }
        let pairs = keys
            .iter()
            .zip(salts)
            .map(|(k, s)| {
                let k = hex::decode(k).map_err(|_| "signing key is not hex".to_owned())?;
                let s = hex::decode(s).map_err(|_| "signing salt is not hex".to_owned())?;
                Ok((k, s))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Signer { pairs, size })
    }

    fn mac(key: &[u8], salt: &[u8], path: &str, size: usize) -> Vec<u8> {
        // HMAC accepts keys of any length; new_from_slice cannot fail for HMAC.
        let mut mac = match HmacSha256::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => return Vec::new(),
        };
        mac.update(salt);
        mac.update(path.as_bytes());
        let mut out = mac.finalize().into_bytes().to_vec();
        out.truncate(size);
        out
    }

    /// Signature of `path` (which starts with `/`) with the first (current) pair.
    pub fn sign(&self, path: &str) -> String {
        let (k, s) = &self.pairs[0];
        URL_SAFE_NO_PAD.encode(Self::mac(k, s, path, self.size))
    }

    /// Whether `signature` is valid for `path` under any configured pair.
    ///
    /// Only the canonical form is accepted: unpadded base64url with zero trailing bits (what
    /// [`Signer::sign`] and imgproxy's `RawURLEncoding` produce). Padding or non-canonical
    /// trailing bits would give one image unlimited distinct URLs, each a CDN miss.
    pub fn verify(&self, signature: &str, path: &str) -> bool {
        let Ok(given) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        if given.len() != self.size {
            return false;
        }
        let mut ok = subtle::Choice::from(0u8);
        for (k, s) in &self.pairs {
            ok |= Self::mac(k, s, path, self.size).ct_eq(&given);
        }
        ok.into()
    }
}

/// `[signing]`: the key/salt pairs of signed URLs and the lifetimes `POST …/url` grants.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SigningConfig {
    /// Hex keys, paired by position with `salts`; the first pair signs, every pair verifies.
    pub keys: Vec<String>,
    pub salts: Vec<String>,
    pub signature_size: u64,
    /// Longest lifetime `POST /v1/images/{id}/url` grants, and its default.
    pub max_url_ttl_secs: u64,
    pub default_url_ttl_secs: u64,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            keys: Vec::new(),
            salts: Vec::new(),
            signature_size: 32,
            max_url_ttl_secs: 7 * 86_400,
            default_url_ttl_secs: 3_600,
        }
    }
}

impl SigningConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        require(
            self.keys.is_empty(),
            "signing.keys",
            "at least one hex key is required",
        )?;
        if self.keys.len() != self.salts.len() {
            return Err(ConfigError::new(
                "signing.salts",
                format!(
                    "{} salts for {} keys: keys and salts pair by position",
                    self.salts.len(),
                    self.keys.len()
                ),
            ));
        }
        for (key, list) in [("signing.keys", &self.keys), ("signing.salts", &self.salts)] {
            for (i, v) in list.iter().enumerate() {
                // Secrets: the error names the position only.
                if !hex::decode(v).is_ok_and(|b| !b.is_empty()) {
                    return Err(ConfigError::new(
                        key,
                        format!("entry {i} is not non-empty hex"),
                    ));
                }
            }
        }
        within("signing.signature_size", self.signature_size, 1..=32)?;
        positive("signing.max_url_ttl_secs", self.max_url_ttl_secs)?;
        positive("signing.default_url_ttl_secs", self.default_url_ttl_secs)?;
        require(
            self.default_url_ttl_secs > self.max_url_ttl_secs,
            "signing.default_url_ttl_secs",
            "must not exceed signing.max_url_ttl_secs",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_PATH: &str =
        "/rs:fill:300:400:0/g:sm/aHR0cDovL2V4YW1w/bGUuY29tL2ltYWdl/cy9jdXJpb3NpdHku/anBn.png";
    const VECTOR_SIG: &str = "oKfUtW34Dvo2BGQehJFR4Nr0_rIjOtdtzJ3QFsUcXH8";

    fn signer(size: usize) -> Signer {
        Signer::from_hex(&["736563726574".into()], &["68656C6C6F".into()], size).unwrap()
    }

    #[test]
    fn imgproxy_published_vector() {
        let s = signer(32);
        assert_eq!(s.sign(VECTOR_PATH), VECTOR_SIG);
        assert!(s.verify(VECTOR_SIG, VECTOR_PATH));
    }

    #[test]
    fn tampering_fails() {
        let s = signer(32);
        assert!(!s.verify(VECTOR_SIG, &VECTOR_PATH.replace("300", "301")));
        let mut sig = VECTOR_SIG.to_owned();
        sig.replace_range(0..1, "p");
        assert!(!s.verify(&sig, VECTOR_PATH));
        assert!(!s.verify("", VECTOR_PATH));
        assert!(!s.verify("not base64 !", VECTOR_PATH));
        assert!(!s.verify(&VECTOR_SIG[..20], VECTOR_PATH));
    }

    #[test]
    fn only_the_canonical_unpadded_form_verifies() {
        let s = signer(32);
        for padding in ["=", "==", "===", &"=".repeat(100)] {
            assert!(!s.verify(&format!("{VECTOR_SIG}{padding}"), VECTOR_PATH));
        }
        // 32 bytes = 43 characters whose last carries 2 unused bits; setting them is another
        // spelling of the same bytes and must fail too.
        assert!(VECTOR_SIG.ends_with('8'));
        let alias = format!("{}9", &VECTOR_SIG[..VECTOR_SIG.len() - 1]);
        assert!(!s.verify(&alias, VECTOR_PATH));
        // An 8-byte signature (11 characters, 2 unused bits) likewise.
        let short = signer(8);
        let sig = short.sign(VECTOR_PATH);
        assert!(!short.verify(&format!("{sig}="), VECTOR_PATH));
    }

    #[test]
    fn truncated_signature_size() {
        let s = signer(8);
        let sig = s.sign(VECTOR_PATH);
        // 8 bytes → 11 base64url characters, a prefix of the full signature's bytes.
        assert_eq!(sig.len(), 11);
        let full = URL_SAFE_NO_PAD.decode(VECTOR_SIG).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(&sig).unwrap(), full[..8]);
        assert!(s.verify(&sig, VECTOR_PATH));
        assert!(!signer(32).verify(&sig, VECTOR_PATH));
    }

    #[test]
    fn rotation_verifies_every_pair_and_signs_with_the_first() {
        let old = signer(32);
        let rotated = Signer::from_hex(
            &["6e6577".into(), "736563726574".into()],
            &["73616c74".into(), "68656C6C6F".into()],
            32,
        )
        .unwrap();
        assert!(rotated.verify(&old.sign(VECTOR_PATH), VECTOR_PATH));
        assert_ne!(rotated.sign(VECTOR_PATH), VECTOR_SIG);
        assert!(rotated.verify(&rotated.sign(VECTOR_PATH), VECTOR_PATH));
    }

    #[test]
    fn debug_hides_keys() {
        assert!(!format!("{:?}", signer(32)).contains("736563726574"));
    }

    #[test]
    fn signing_config_validates_pairs_hex_and_lifetimes() {
        let ok = SigningConfig {
            keys: vec!["aa".into()],
            salts: vec!["bb".into()],
            ..SigningConfig::default()
        };
        assert!(ok.validate().is_ok());
        let bad = |f: fn(&mut SigningConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().unwrap_err().key
        };
        assert_eq!(bad(|c| c.keys.clear()), "signing.keys");
        assert_eq!(bad(|c| c.salts.push("cc".into())), "signing.salts");
        assert_eq!(bad(|c| c.keys[0] = "zz".into()), "signing.keys");
        assert_eq!(bad(|c| c.signature_size = 33), "signing.signature_size");
        assert_eq!(
            bad(|c| c.default_url_ttl_secs = c.max_url_ttl_secs + 1),
            "signing.default_url_ttl_secs"
        );
        // A malformed secret is named by position, never echoed.
        let mut secret = ok.clone();
        secret.keys[0] = "not-hex-sekrit".into();
        assert!(
            !secret
                .validate()
                .unwrap_err()
                .to_string()
                .contains("sekrit")
        );
    }
}
