//! Ed25519 signatures with NATS nkeys on the instructions that change production: the
//! Conductor signs each ApplyRequest, and Forge verifies it before anything else, so a leaked
//! bus credential alone cannot make Forge apply.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use nkeys::KeyPair;

/// A key that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not an nkey seed (it starts with S and comes from `crew keys`): {0}")]
    Seed(String),
    #[error("not an nkey public key (it starts with U and comes from `crew keys`): {0}")]
    PublicKey(String),
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("it is not signed")]
    Missing,
    #[error("its signature is not base64url: {0}")]
    Malformed(String),
    #[error("its signature was not made by the trusted key {public_key}")]
    Mismatch { public_key: String },
}

/// Signs with a secret key.
pub struct Signer(KeyPair);

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the seed.
        write!(f, "Signer({})", self.0.public_key())
    }
}

impl Signer {
    /// The signer of an nkey seed (`SU…`).
    pub fn from_seed(seed: &str) -> Result<Self, KeyError> {
        KeyPair::from_seed(seed.trim())
            .map(Self)
            .map_err(|error| KeyError::Seed(error.to_string()))
    }

    /// A new random key, with its seed to keep secret.
    pub fn generate() -> (Self, String) {
        let pair = KeyPair::new_user();
        let seed = pair.seed().unwrap_or_default();
        (Self(pair), seed)
    }

    /// The public key (`U…`) verifiers are given.
    pub fn public_key(&self) -> String {
        self.0.public_key()
    }

    /// The base64url signature of `payload`.
    pub fn sign(&self, payload: &[u8]) -> String {
        // Signing fails only for a key without its seed, which a Signer never is.
        let signature = self.0.sign(payload).unwrap_or_default();
        URL_SAFE_NO_PAD.encode(signature)
    }
}

/// Checks signatures against one public key.
#[derive(Debug)]
pub struct Verifier(KeyPair);

impl Verifier {
    pub fn from_public_key(public_key: &str) -> Result<Self, KeyError> {
        KeyPair::from_public_key(public_key.trim())
            .map(Self)
            .map_err(|error| KeyError::PublicKey(error.to_string()))
    }

    pub fn public_key(&self) -> String {
        self.0.public_key()
    }

    /// Whether `signature` (base64url) is this key's signature of `payload`.
    pub fn verify(&self, payload: &[u8], signature: &str) -> Result<(), SignatureError> {
        if signature.is_empty() {
            return Err(SignatureError::Missing);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|error| SignatureError::Malformed(error.to_string()))?;
        self.0
            .verify(payload, &bytes)
            .map_err(|_| SignatureError::Mismatch {
                public_key: self.public_key(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_payload_and_its_key() {
        let (signer, seed) = Signer::generate();
        assert!(seed.starts_with("SU"));
        let verifier = Verifier::from_public_key(&signer.public_key()).unwrap();
        let signature = signer.sign(b"plan 1");
        assert_eq!(verifier.verify(b"plan 1", &signature), Ok(()));
        assert!(matches!(
            verifier.verify(b"plan 2", &signature),
            Err(SignatureError::Mismatch { .. })
        ));
        let (other, _) = Signer::generate();
        assert!(verifier.verify(b"plan 1", &other.sign(b"plan 1")).is_err());
        assert_eq!(verifier.verify(b"plan 1", ""), Err(SignatureError::Missing));
        assert!(matches!(
            verifier.verify(b"plan 1", "not base64!"),
            Err(SignatureError::Malformed(_))
        ));
        assert_eq!(
            Signer::from_seed(&seed).unwrap().public_key(),
            signer.public_key()
        );
        assert!(Signer::from_seed("SUnot-a-seed").is_err());
        assert!(
            Verifier::from_public_key(&seed).is_err(),
            "a seed is not a public key"
        );
    }
}
