//! Baton's key material and sealed envelopes.
//!
//! One scheme everywhere, chosen so the browser's WebCrypto can speak it too: Ed25519 identities
//! for signed login challenges, X25519 + HKDF-SHA256 to wrap secrets to a public key, and
//! AES-256-GCM with the record's identity bound as associated data.
//!
//! Envelope layouts (all integers big-endian):
//! - symmetric: `0x01 ‖ nonce(12) ‖ ciphertext ‖ tag(16)`
//! - to a public key: `0x02 ‖ ephemeral X25519 pk(32) ‖ nonce(12) ‖ ciphertext ‖ tag(16)`, key =
//!   HKDF-SHA256(ikm = X25519(eph, recipient), salt = empty,
//!   info = `"baton/seal-to/v1" ‖ eph_pk ‖ recipient_pk`)
//!
//! The AES-GCM associated data is exactly the caller's `ad` (the version byte and ephemeral key are
//! not part of it; the ephemeral key is bound through the HKDF info instead).
//!
//! This crate never logs, prints or serialises a secret except through the explicit
//! `to_bytes`/`from_bytes` used to store keys in the 0600 key file.

#![warn(missing_docs)]

mod envelope;
mod error;
mod keys;
mod pairing;
mod session;
mod transfer;

#[doc(hidden)]
pub use envelope::derive_seal_to_key;
pub use envelope::{check_box_pk, open, open_from, seal, seal_to, seal_with_nonce};
pub use error::CryptoError;
pub use keys::{AccountSecret, DataKey, MachineKeys, verify_signature};
pub use pairing::PairingCode;
pub use session::SessionCipher;
pub use transfer::{SealedBlob, SealedChunk, TransferCipher, VerifiedChunk};

/// Result type of crypto operations.
pub type Result<T> = std::result::Result<T, CryptoError>;

/// Lowercase hex, for ids and public keys in logs.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Helpers shared by the unit tests: hex decoding and the vectors in `tests/vectors/`.

    /// Decodes lowercase or uppercase hex; panics on bad input (test data only).
    pub fn unhex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "odd-length hex: {s}");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test vector is hex"))
            .collect()
    }

    /// `unhex` into a fixed-size array.
    pub fn unhex_n<const N: usize>(s: &str) -> [u8; N] {
        unhex(s)
            .try_into()
            .expect("test vector has the right length")
    }

    /// One of the JSON vector files.
    pub fn vector(name: &str) -> serde_json::Value {
        let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("test vector file exists");
        serde_json::from_str(&text).expect("test vector file is JSON")
    }

    /// A string field of a vector.
    pub fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
        v[key].as_str().expect("vector field is a string")
    }

    #[test]
    fn hex_round_trips() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(unhex(&crate::hex(&bytes)), bytes);
        assert_eq!(crate::hex(&[0x0f, 0xa0]), "0fa0");
    }
}
