//! Identifiers: image ids (128 random bits as 32 lowercase hex characters), and the storage
//! form of user ids.
//!
//! The id is the only thing a URL may name, so the strict syntax doubles as an input filter:
//! anything else is refused before storage is touched, and an id is always a safe object-key
//! segment. Ids are never reused, which is what lets caches key on them alone.

use std::fmt;

/// A validated image id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(String);

impl ImageId {
    pub const LEN: usize = 32;

    /// A fresh random id.
    pub fn generate() -> std::io::Result<ImageId> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(ImageId(hex::encode(b)))
    }

    /// Accepts exactly 32 lowercase hex characters.
    pub fn parse(s: &str) -> Option<ImageId> {
        let ok = s.len() == Self::LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| ImageId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The object-key segment for a user: SHA-256 of the user id, hex. User ids come from identity
/// providers and may hold any character; the hash is always a safe key segment, one per user.
pub fn user_segment(user_id: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(user_id.as_bytes()))
}

/// `n` random bytes as lowercase hex (ids of API keys and the like).
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = ImageId::generate().unwrap();
        let b = ImageId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(ImageId::parse(a.as_str()), Some(a));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789ABCDEF0123456789abcdef",
            "../../../../etc/passwd0000000000",
            "0123456789abcdef0123456789abcde/",
        ] {
            assert!(ImageId::parse(bad).is_none(), "{bad}");
        }
    }
}
