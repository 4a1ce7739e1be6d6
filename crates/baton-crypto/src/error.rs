//! The crypto error type.

/// Errors of crypto operations. None of them says anything about key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Authentication failed: wrong key, wrong associated data, or tampered ciphertext.
    #[error("cannot open sealed data: wrong key or tampered ciphertext")]
    Open,
    /// The envelope is too short or has an unknown version byte.
    #[error("malformed envelope: {0}")]
    Format(&'static str),
    /// A key or signature has the wrong length or is invalid.
    #[error("invalid key or signature: {0}")]
    Key(&'static str),
    /// A pairing code is malformed.
    #[error("malformed pairing code: {0}")]
    PairingCode(&'static str),
    /// The plaintext did not decode as the expected JSON type.
    #[error("sealed record has an unexpected shape: {0}")]
    Decode(String),
}

impl CryptoError {
    /// A stable, machine-readable code for logs and error output.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Open => "crypto_open_failed",
            Self::Format(_) => "crypto_malformed_envelope",
            Self::Key(_) => "crypto_invalid_key",
            Self::PairingCode(_) => "malformed_pairing_code",
            Self::Decode(_) => "crypto_unexpected_shape",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let all = [
            CryptoError::Open,
            CryptoError::Format("x"),
            CryptoError::Key("x"),
            CryptoError::PairingCode("x"),
            CryptoError::Decode("x".into()),
        ];
        let mut codes: Vec<&str> = all.iter().map(CryptoError::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
