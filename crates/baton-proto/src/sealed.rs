//! Ciphertext as it travels and rests. The server only ever handles this type, never plaintext.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An opaque sealed envelope (see `baton-crypto` for its layout). Base64 in JSON.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed(pub Vec<u8>);

impl Sealed {
    /// Size of the envelope in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the envelope holds no bytes (never valid ciphertext).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

/// Plain bytes that are not secret (public keys, nonces, signatures, bundle file contents inside a
/// sealed bundle). Base64 in JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

macro_rules! base64_serde {
    ($t:ident) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&STANDARD.encode(&self.0))
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                STANDARD
                    .decode(s.as_bytes())
                    .map($t)
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}

base64_serde!(Sealed);
base64_serde!(Bytes);
