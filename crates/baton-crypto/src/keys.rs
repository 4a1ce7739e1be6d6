//! Long-lived keys: the account secret, session data keys, machine identities.

use std::fmt;

use baton_proto::{Sealed, SessionId};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::envelope::{hkdf32, random};
use crate::{CryptoError, Result};

const SESSION_KEY_WRAP_INFO: &[u8] = b"baton/session-key-wrap/v1";
const SESSION_KEY_AD: &[u8] = b"baton.session-key.v1";
const ACCOUNT_RECORD_INFO: &[u8] = b"baton/account-record/v1";
const ACCOUNT_RECORD_AD: &[u8] = b"baton.account-record.v1";

/// The account's 32-byte secret; every enrolled machine and browser holds it. Zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct AccountSecret(/* private */ [u8; 32]);

impl AccountSecret {
    /// A new random secret (OS randomness).
    pub fn generate() -> Self {
        Self(random())
    }
    /// From stored bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
    /// The bytes, for the 0600 key file only.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }
    /// The key that wraps session data keys, separate from the secret itself so the secret is
    /// never used directly as an AES key.
    fn session_wrap_key(&self) -> Zeroizing<[u8; 32]> {
        hkdf32(&self.0, &[SESSION_KEY_WRAP_INFO])
    }
    /// The raw bytes, for sealing the secret itself (pairing, enrollment).
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// Seals an account-level record (connected service, provider-session listing):
    /// key = HKDF-SHA256(account secret, "baton/account-record/v1"),
    /// AD = "baton.account-record.v1" ‖ kind ‖ 0x00 ‖ id, so a record cannot be replayed as
    /// another kind or under another id.
    pub fn seal_record<T: serde::Serialize>(&self, kind: &str, id: &str, value: &T) -> Sealed {
        let json = Zeroizing::new(
            serde_json::to_vec(value)
                .expect("record types serialise to JSON: string keys, no failing Serialize impls"),
        );
        crate::seal(&self.record_key(), &record_ad(kind, id), &json)
    }
    /// Opens a record sealed by [`AccountSecret::seal_record`] with the same kind and id.
    pub fn open_record<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        id: &str,
        sealed: &Sealed,
    ) -> Result<T> {
        let json = Zeroizing::new(crate::open(
            &self.record_key(),
            &record_ad(kind, id),
            &sealed.0,
        )?);
        // serde_json's message may quote plaintext; keep only the position.
        serde_json::from_slice(&json).map_err(|e| {
            CryptoError::Decode(format!(
                "account record {kind}: invalid JSON at line {} column {}",
                e.line(),
                e.column()
            ))
        })
    }
    fn record_key(&self) -> Zeroizing<[u8; 32]> {
        hkdf32(&self.0, &[ACCOUNT_RECORD_INFO])
    }
}

fn record_ad(kind: &str, id: &str) -> Vec<u8> {
    [ACCOUNT_RECORD_AD, kind.as_bytes(), &[0], id.as_bytes()].concat()
}

impl fmt::Debug for AccountSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountSecret(..)")
    }
}

/// A session's 32-byte data key (AES-256-GCM). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey(/* private */ [u8; 32]);

impl DataKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self(random())
    }
    /// Seals this key under the account secret: key = HKDF-SHA256(ikm = account secret,
    /// info = "baton/session-key-wrap/v1"), AD = "baton.session-key.v1" ‖ session id bytes.
    pub fn seal_under(&self, account: &AccountSecret, session: SessionId) -> Sealed {
        crate::seal(
            &account.session_wrap_key(),
            &session_key_ad(session),
            &self.0,
        )
    }
    /// Opens a key sealed by [`DataKey::seal_under`] for the same session.
    pub fn open_under(
        account: &AccountSecret,
        session: SessionId,
        sealed: &Sealed,
    ) -> Result<Self> {
        let bytes = Zeroizing::new(crate::open(
            &account.session_wrap_key(),
            &session_key_ad(session),
            &sealed.0,
        )?);
        let key: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Key("sealed data key is not 32 bytes"))?;
        Ok(Self(*key))
    }
    /// The raw key, for the session cipher.
    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

fn session_key_ad(session: SessionId) -> Vec<u8> {
    [SESSION_KEY_AD, session.as_bytes()].concat()
}

/// A machine's (or browser's) identity: Ed25519 signing key + X25519 box key. Zeroized on drop.
pub struct MachineKeys {
    // Both dalek types zeroize themselves on drop (their `zeroize` features are on).
    sign: SigningKey,
    boxed: StaticSecret,
}

impl ZeroizeOnDrop for MachineKeys {}

impl MachineKeys {
    /// New random keys.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 64]);
        bytes[..32].copy_from_slice(&random::<32>());
        bytes[32..].copy_from_slice(&random::<32>());
        Self::from_array(&bytes)
    }
    /// 64 bytes: Ed25519 seed ‖ X25519 secret, for the 0600 key file.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(self.sign.as_bytes());
        out[32..].copy_from_slice(self.boxed.as_bytes());
        out
    }
    /// From [`MachineKeys::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bytes: &[u8; 64] = bytes
            .try_into()
            .map_err(|_| CryptoError::Key("machine keys must be 64 bytes"))?;
        Ok(Self::from_array(bytes))
    }
    fn from_array(bytes: &[u8; 64]) -> Self {
        let (seed, box_secret) = bytes.split_at(32);
        let seed: &[u8; 32] = seed.try_into().expect("split_at(32) of 64 bytes");
        let box_secret: [u8; 32] = box_secret.try_into().expect("split_at(32) of 64 bytes");
        Self {
            sign: SigningKey::from_bytes(seed),
            boxed: StaticSecret::from(box_secret),
        }
    }
    /// Ed25519 public key.
    pub fn sign_pk(&self) -> [u8; 32] {
        self.sign.verifying_key().to_bytes()
    }
    /// X25519 public key.
    pub fn box_pk(&self) -> [u8; 32] {
        PublicKey::from(&self.boxed).to_bytes()
    }
    /// Ed25519 signature of `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.sign.sign(msg).to_bytes()
    }
    /// Opens an envelope sealed to this machine's X25519 key with [`crate::seal_to`].
    pub fn open_sealed(&self, ad: &[u8], sealed: &Sealed) -> Result<Vec<u8>> {
        crate::open_from(&self.boxed, ad, &sealed.0)
    }
}

impl fmt::Debug for MachineKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public keys identify the machine in logs; the secrets never appear.
        f.debug_struct("MachineKeys")
            .field("sign_pk", &crate::hex(&self.sign_pk()))
            .field("box_pk", &crate::hex(&self.box_pk()))
            .finish_non_exhaustive()
    }
}

/// Verifies an Ed25519 signature (`pk` 32 bytes, `sig` 64 bytes); `Key` error if invalid.
///
/// Uses strict verification (rejects weak public keys and malleable signatures), which every
/// honestly made signature passes.
pub fn verify_signature(pk: &[u8], msg: &[u8], sig: &[u8]) -> Result<()> {
    let pk: &[u8; 32] = pk
        .try_into()
        .map_err(|_| CryptoError::Key("Ed25519 public key must be 32 bytes"))?;
    let sig: &[u8; 64] = sig
        .try_into()
        .map_err(|_| CryptoError::Key("Ed25519 signature must be 64 bytes"))?;
    let pk = VerifyingKey::from_bytes(pk)
        .map_err(|_| CryptoError::Key("not a valid Ed25519 public key"))?;
    pk.verify_strict(msg, &Signature::from_bytes(sig))
        .map_err(|_| CryptoError::Key("signature does not verify"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{field, unhex, unhex_n, vector};

    #[test]
    fn account_secret_bytes_round_trip() {
        let a = AccountSecret::generate();
        let b = AccountSecret::from_bytes(a.to_bytes());
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_ne!(a.to_bytes(), AccountSecret::generate().to_bytes());
    }

    #[test]
    fn data_key_seal_under_open_under() {
        let account = AccountSecret::generate();
        let session = SessionId::new();
        let key = DataKey::generate();
        let sealed = key.seal_under(&account, session);
        let opened = DataKey::open_under(&account, session, &sealed).unwrap();
        assert_eq!(opened.as_bytes(), key.as_bytes());
    }

    #[test]
    fn data_key_needs_the_right_account_and_session() {
        let account = AccountSecret::generate();
        let session = SessionId::new();
        let sealed = DataKey::generate().seal_under(&account, session);
        let other_account = AccountSecret::generate();
        assert!(matches!(
            DataKey::open_under(&other_account, session, &sealed),
            Err(CryptoError::Open)
        ));
        assert!(matches!(
            DataKey::open_under(&account, SessionId::new(), &sealed),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn data_key_of_wrong_length_is_rejected() {
        let account = AccountSecret::generate();
        let session = SessionId::new();
        let sealed = crate::seal(
            &account.session_wrap_key(),
            &session_key_ad(session),
            &[1; 31],
        );
        assert!(matches!(
            DataKey::open_under(&account, session, &sealed),
            Err(CryptoError::Key(_))
        ));
    }

    #[test]
    fn session_key_wrap_vector_matches_python_cryptography() {
        let v = vector("session_key_wrap.json");
        let account = AccountSecret::from_bytes(unhex_n(field(&v, "account_secret")));
        assert_eq!(
            crate::hex(account.session_wrap_key().as_ref()),
            field(&v, "wrap_key")
        );
        let session: SessionId = field(&v, "session_id").parse().unwrap();
        let sealed = Sealed(unhex(field(&v, "sealed")));
        let key = DataKey::open_under(&account, session, &sealed).unwrap();
        assert_eq!(crate::hex(key.as_bytes()), field(&v, "data_key"));
    }

    #[test]
    fn machine_keys_bytes_round_trip() {
        let keys = MachineKeys::generate();
        let again = MachineKeys::from_bytes(&keys.to_bytes()).unwrap();
        assert_eq!(keys.sign_pk(), again.sign_pk());
        assert_eq!(keys.box_pk(), again.box_pk());
        assert_eq!(keys.to_bytes(), again.to_bytes());
        assert_ne!(keys.sign_pk(), MachineKeys::generate().sign_pk());
    }

    #[test]
    fn machine_keys_from_wrong_length_fails() {
        for len in [0, 32, 63, 65] {
            assert!(matches!(
                MachineKeys::from_bytes(&vec![0; len]),
                Err(CryptoError::Key(_))
            ));
        }
    }

    #[test]
    fn signatures_verify() {
        let keys = MachineKeys::generate();
        let sig = keys.sign(b"challenge");
        verify_signature(&keys.sign_pk(), b"challenge", &sig).unwrap();
    }

    #[test]
    fn forged_signatures_are_rejected() {
        let keys = MachineKeys::generate();
        let sig = keys.sign(b"challenge");
        let other = MachineKeys::generate();
        let reject = |pk: &[u8], msg: &[u8], sig: &[u8]| {
            assert!(matches!(
                verify_signature(pk, msg, sig),
                Err(CryptoError::Key(_))
            ));
        };
        reject(&keys.sign_pk(), b"challengE", &sig);
        reject(&other.sign_pk(), b"challenge", &sig);
        reject(&keys.sign_pk(), b"challenge", &other.sign(b"challenge"));
        for i in 0..64 {
            let mut bad = sig;
            bad[i] ^= 0x01;
            reject(&keys.sign_pk(), b"challenge", &bad);
        }
        reject(&keys.sign_pk(), b"challenge", &[0; 64]);
        reject(&keys.sign_pk(), b"challenge", &sig[..63]);
        reject(&keys.sign_pk()[..31], b"challenge", &sig);
        // The identity point is a weak key that would accept a forged signature if not refused.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut forged = [0u8; 64];
        forged[0] = 1;
        reject(&identity, b"anything", &forged);
    }

    #[test]
    fn rfc8032_test_vector_verifies() {
        // RFC 8032 §7.1, TEST 2: an independent check that signing is standard Ed25519.
        let seed =
            unhex_n::<32>("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb");
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&seed);
        let keys = MachineKeys::from_bytes(&bytes).unwrap();
        assert_eq!(
            crate::hex(&keys.sign_pk()),
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"
        );
        let sig = keys.sign(&[0x72]);
        assert_eq!(
            crate::hex(&sig),
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
             085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
        );
        verify_signature(&keys.sign_pk(), &[0x72], &sig).unwrap();
    }

    #[test]
    fn open_sealed_uses_the_box_key() {
        let keys = MachineKeys::generate();
        let sealed = crate::seal_to(&keys.box_pk(), b"enroll", b"account secret");
        assert_eq!(
            keys.open_sealed(b"enroll", &sealed).unwrap(),
            b"account secret"
        );
        let other = MachineKeys::generate();
        assert!(matches!(
            other.open_sealed(b"enroll", &sealed),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let account = AccountSecret::from_bytes([0xab; 32]);
        assert_eq!(format!("{account:?}"), "AccountSecret(..)");
        let key = DataKey::generate();
        assert_eq!(format!("{key:?}"), "DataKey(..)");
        let keys = MachineKeys::generate();
        let shown = format!("{keys:?}");
        let bytes = keys.to_bytes();
        assert!(!shown.contains(&crate::hex(&bytes[..32])));
        assert!(!shown.contains(&crate::hex(&bytes[32..])));
        assert!(shown.contains(&crate::hex(&keys.sign_pk())));
    }

    #[test]
    fn zeroize_clears_key_bytes() {
        let mut account = AccountSecret::from_bytes([0xab; 32]);
        account.zeroize();
        assert_eq!(account.to_bytes(), [0; 32]);
        let mut key = DataKey::generate();
        key.zeroize();
        assert_eq!(key.as_bytes(), &[0; 32]);
    }
}
