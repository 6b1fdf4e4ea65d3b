//! Keyed pseudonyms for participant identifiers (SPEC §2): HMAC-SHA-256 under a secret key,
//! applied before an event reaches the log, so the platform's identifier is never stored.
//! The same identifier always gives the same pseudonym under the same key, which keeps
//! distinct counts exact.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The keyed pseudonymizer.
#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
}

impl Pseudonymizer {
    /// Creates a pseudonymizer from the secret key's bytes.
    pub fn new(key: &[u8]) -> Self {
        Pseudonymizer { mac: Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length") }
    }

    /// Returns the pseudonym of a participant identifier: 64 lower-case hex digits.
    pub fn pseudonym(&self, participant_id: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(participant_id.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_rfc_4231_test_vector() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let p = Pseudonymizer::new(b"Jefe");
        assert_eq!(p.pseudonym("what do ya want for nothing?"), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn depends_on_the_key() {
        assert_ne!(Pseudonymizer::new(b"a").pseudonym("p1"), Pseudonymizer::new(b"b").pseudonym("p1"));
    }
}
