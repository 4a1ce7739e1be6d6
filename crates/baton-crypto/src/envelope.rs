//! Envelope primitives (layouts in the crate docs).

use baton_proto::Sealed;
use hkdf::Hkdf;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::{CryptoError, Result};

/// Version byte of an envelope sealed under a symmetric key.
const V_SYMMETRIC: u8 = 0x01;
/// Version byte of an envelope sealed to an X25519 public key.
const V_TO_PUBLIC_KEY: u8 = 0x02;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const PK_LEN: usize = 32;
const SEAL_TO_INFO: &[u8] = b"baton/seal-to/v1";
const TOO_SHORT: CryptoError = CryptoError::Format("envelope is too short");

/// Seals `plaintext` under a 32-byte key with `ad` bound (random 96-bit nonce).
///
/// # Panics
/// If the OS random number generator fails, or `plaintext` exceeds AES-GCM's 64 GiB limit.
pub fn seal(key: &[u8; 32], ad: &[u8], plaintext: &[u8]) -> Sealed {
    seal_with_nonce(key, &random(), ad, plaintext)
}

/// Seals with a caller-chosen nonce: deterministic, for test vectors only, never for production
/// data (a repeated nonce under one key reveals plaintext and the authentication key).
///
/// # Panics
/// If `plaintext` exceeds AES-GCM's 64 GiB limit.
pub fn seal_with_nonce(key: &[u8; 32], nonce: &[u8; 12], ad: &[u8], plaintext: &[u8]) -> Sealed {
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.push(V_SYMMETRIC);
    encrypt_into(&mut out, key, nonce, ad, plaintext);
    Sealed(out)
}

/// Appends the envelope [`seal`] makes to `out` (random nonce), so a caller can seal straight
/// into a larger buffer such as a transfer frame.
///
/// # Panics
/// If the OS random number generator fails, or `plaintext` exceeds AES-GCM's 64 GiB limit.
pub(crate) fn seal_append(out: &mut Vec<u8>, key: &[u8; 32], ad: &[u8], plaintext: &[u8]) {
    out.reserve(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.push(V_SYMMETRIC);
    encrypt_into(out, key, &random(), ad, plaintext);
}

/// Opens [`seal`]'s output.
pub fn open(key: &[u8; 32], ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    let body = strip_version(sealed, V_SYMMETRIC)?;
    decrypt(key, ad, body)
}

/// Opens [`seal`]'s output where it lies, without a copy: the plaintext is returned as the part
/// of `sealed` it was decrypted into (the rest of `sealed` is then garbage).
pub(crate) fn open_in_place<'a>(
    key: &[u8; 32],
    ad: &[u8],
    sealed: &'a mut [u8],
) -> Result<&'a [u8]> {
    strip_version(sealed, V_SYMMETRIC)?;
    let (nonce, rest) = sealed[1..]
        .split_first_chunk_mut::<NONCE_LEN>()
        .ok_or(TOO_SHORT)?;
    let len = open_detached(key, nonce, ad, rest)?;
    Ok(&rest[..len])
}

/// Seals `plaintext` to an X25519 public key with an ephemeral key.
///
/// A low-order `recipient_pk` would make the shared secret public; rather than seal under a key
/// anyone can compute, the envelope is then sealed under a random key nobody holds, so it fails
/// closed. Use [`check_box_pk`] to reject such keys up front with an error.
///
/// # Panics
/// If the OS random number generator fails, or `plaintext` exceeds AES-GCM's 64 GiB limit.
pub fn seal_to(recipient_pk: &[u8; 32], ad: &[u8], plaintext: &[u8]) -> Sealed {
    let eph_secret = Zeroizing::new(random::<32>());
    let (eph_pk, key) = match seal_to_key(&eph_secret, recipient_pk) {
        Some(derived) => derived,
        None => (
            PublicKey::from(&StaticSecret::from(*eph_secret)).to_bytes(),
            Zeroizing::new(random()),
        ),
    };
    let mut out = Vec::with_capacity(1 + PK_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.push(V_TO_PUBLIC_KEY);
    out.extend_from_slice(&eph_pk);
    encrypt_into(&mut out, &key, &random(), ad, plaintext);
    Sealed(out)
}

/// Opens [`seal_to`]'s output with the recipient's secret.
pub fn open_from(recipient: &StaticSecret, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
    let body = strip_version(sealed, V_TO_PUBLIC_KEY)?;
    // Checked before the X25519 work so a short envelope is a format error, not an open failure.
    if body.len() < PK_LEN + NONCE_LEN + TAG_LEN {
        return Err(TOO_SHORT);
    }
    let (eph_pk, rest) = body.split_first_chunk::<PK_LEN>().ok_or(TOO_SHORT)?;
    let recipient_pk = PublicKey::from(recipient).to_bytes();
    let shared = recipient.diffie_hellman(&PublicKey::from(*eph_pk));
    // An all-zero shared secret means a low-order ephemeral key: anyone could have made it.
    if !shared.was_contributory() {
        return Err(CryptoError::Open);
    }
    let key = hkdf32(shared.as_bytes(), &[SEAL_TO_INFO, eph_pk, &recipient_pk]);
    decrypt(&key, ad, rest)
}

/// Rejects an X25519 public key of low order, for which the shared secret is known to anyone.
pub fn check_box_pk(pk: &[u8; 32]) -> Result<()> {
    let probe = StaticSecret::from(*Zeroizing::new(random::<32>()));
    if probe
        .diffie_hellman(&PublicKey::from(*pk))
        .was_contributory()
    {
        Ok(())
    } else {
        Err(CryptoError::Key("X25519 public key has low order"))
    }
}

/// The AES key [`seal_to`] derives from an ephemeral secret and a recipient key, exposed so the
/// derivation can be checked against an independent implementation. Not for production use.
///
/// # Panics
/// If `recipient_pk` has low order (see [`check_box_pk`]).
#[doc(hidden)]
pub fn derive_seal_to_key(eph_secret: &[u8; 32], recipient_pk: &[u8; 32]) -> [u8; 32] {
    let (_, key) = seal_to_key(eph_secret, recipient_pk)
        .expect("derive_seal_to_key is only called with a valid recipient key");
    *key
}

/// The ephemeral public key and the derived AES key, or `None` for a low-order recipient key.
fn seal_to_key(
    eph_secret: &[u8; 32],
    recipient_pk: &[u8; 32],
) -> Option<([u8; 32], Zeroizing<[u8; 32]>)> {
    let eph = StaticSecret::from(*eph_secret);
    let eph_pk = PublicKey::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&PublicKey::from(*recipient_pk));
    if !shared.was_contributory() {
        return None;
    }
    let key = hkdf32(shared.as_bytes(), &[SEAL_TO_INFO, &eph_pk, recipient_pk]);
    Some((eph_pk, key))
}

/// HKDF-SHA256 with an empty salt; `info` is the concatenation of its parts.
pub(crate) fn hkdf32(ikm: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    hkdf_n(ikm, info)
}

/// HKDF-SHA256 with an empty salt and `N` bytes of output.
pub(crate) fn hkdf_n<const N: usize>(ikm: &[u8], info: &[&[u8]]) -> Zeroizing<[u8; N]> {
    let mut okm = Zeroizing::new([0u8; N]);
    Hkdf::<Sha256>::new(None, ikm)
        .expand_multi_info(info, okm.as_mut())
        .expect("HKDF-SHA256 can expand up to 8160 bytes; callers ask for at most 32");
    okm
}

/// `N` bytes from the OS random number generator.
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    bytes
}

/// Checks the version byte and returns what follows it.
fn strip_version(sealed: &[u8], expected: u8) -> Result<&[u8]> {
    match sealed.split_first() {
        None => Err(CryptoError::Format("envelope is empty")),
        Some((&v, body)) if v == expected => Ok(body),
        Some((&V_SYMMETRIC | &V_TO_PUBLIC_KEY, _)) => Err(CryptoError::Format(
            "envelope is of the other kind (symmetric vs. sealed to a public key)",
        )),
        Some(_) => Err(CryptoError::Format("unknown envelope version")),
    }
}

/// AES-256-GCM under `key`. ring's implementation is used for its speed (VAES/AVX2 where the
/// CPU has it: several times the throughput of a portable one), which is what transfers of
/// whole workspaces are bound by.
fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM takes a 32-byte key"))
}

/// Appends `nonce ‖ ciphertext ‖ tag` to `out`, encrypting in place to avoid a second copy of
/// large plaintexts such as provider bundles.
fn encrypt_into(out: &mut Vec<u8>, key: &[u8; 32], nonce: &[u8; 12], ad: &[u8], plaintext: &[u8]) {
    out.extend_from_slice(nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let tag = aead_key(key)
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(ad),
            &mut out[start..],
        )
        .expect("plaintext and associated data stay below AES-GCM's limits (64 GiB)");
    out.extend_from_slice(tag.as_ref());
}

/// Opens `nonce ‖ ciphertext ‖ tag`.
fn decrypt(key: &[u8; 32], ad: &[u8], body: &[u8]) -> Result<Vec<u8>> {
    let (nonce, rest) = body.split_first_chunk::<NONCE_LEN>().ok_or(TOO_SHORT)?;
    let mut buf = rest.to_vec();
    let len = open_detached(key, nonce, ad, &mut buf)?;
    buf.truncate(len);
    Ok(buf)
}

/// Decrypts `ciphertext ‖ tag` in place; the plaintext's length.
fn open_detached(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    ad: &[u8],
    in_out: &mut [u8],
) -> Result<usize> {
    if in_out.len() < TAG_LEN {
        return Err(TOO_SHORT);
    }
    let plain = aead_key(key)
        .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(ad), in_out)
        .map_err(|_| CryptoError::Open)?;
    Ok(plain.len())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::test_util::{field, unhex, unhex_n, vector};

    const KEY: [u8; 32] = [7; 32];

    fn recipient() -> (StaticSecret, [u8; 32]) {
        let secret = StaticSecret::from(random::<32>());
        let pk = PublicKey::from(&secret).to_bytes();
        (secret, pk)
    }

    #[test]
    fn seal_open_round_trip() {
        let sealed = seal(&KEY, b"ad", b"hello");
        assert_eq!(sealed.0[0], V_SYMMETRIC);
        assert_eq!(sealed.len(), 1 + NONCE_LEN + 5 + TAG_LEN);
        assert_eq!(open(&KEY, b"ad", &sealed.0).unwrap(), b"hello");
    }

    #[test]
    fn seal_open_empty_plaintext() {
        let sealed = seal(&KEY, b"", b"");
        assert_eq!(open(&KEY, b"", &sealed.0).unwrap(), b"");
    }

    #[test]
    fn nonces_are_fresh() {
        let a = seal(&KEY, b"", b"same");
        let b = seal(&KEY, b"", b"same");
        assert_ne!(a.0[1..1 + NONCE_LEN], b.0[1..1 + NONCE_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn seal_to_open_from_round_trip() {
        let (secret, pk) = recipient();
        let sealed = seal_to(&pk, b"ad", b"account secret");
        assert_eq!(sealed.0[0], V_TO_PUBLIC_KEY);
        assert_eq!(sealed.len(), 1 + PK_LEN + NONCE_LEN + 14 + TAG_LEN);
        assert_eq!(
            open_from(&secret, b"ad", &sealed.0).unwrap(),
            b"account secret"
        );
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = seal(&KEY, b"ad", b"hello");
        assert!(matches!(
            open(&[8; 32], b"ad", &sealed.0),
            Err(CryptoError::Open)
        ));
        let (_, pk) = recipient();
        let (other, _) = recipient();
        let sealed = seal_to(&pk, b"ad", b"hello");
        assert!(matches!(
            open_from(&other, b"ad", &sealed.0),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn wrong_ad_fails() {
        let sealed = seal(&KEY, b"ad", b"hello");
        for ad in [&b""[..], b"ae", b"ad\0"] {
            assert!(matches!(open(&KEY, ad, &sealed.0), Err(CryptoError::Open)));
        }
        let (secret, pk) = recipient();
        let sealed = seal_to(&pk, b"ad", b"hello");
        assert!(matches!(
            open_from(&secret, b"other", &sealed.0),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn tampering_any_byte_fails() {
        let sealed = seal(&KEY, b"ad", b"some plaintext");
        for i in 1..sealed.len() {
            let mut bad = sealed.0.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(open(&KEY, b"ad", &bad), Err(CryptoError::Open)),
                "byte {i}"
            );
        }
        let (secret, pk) = recipient();
        let sealed = seal_to(&pk, b"ad", b"some plaintext");
        for i in 1..sealed.len() {
            let mut bad = sealed.0.clone();
            bad[i] ^= 0x80;
            assert!(
                matches!(open_from(&secret, b"ad", &bad), Err(CryptoError::Open)),
                "byte {i}"
            );
        }
    }

    #[test]
    fn tampered_version_byte_is_a_format_error() {
        let sealed = seal(&KEY, b"ad", b"x");
        for bit in 0..8 {
            let mut bad = sealed.0.clone();
            bad[0] ^= 1 << bit;
            assert!(matches!(
                open(&KEY, b"ad", &bad),
                Err(CryptoError::Format(_))
            ));
        }
    }

    #[test]
    fn truncated_or_extended_fails() {
        let sealed = seal(&KEY, b"ad", b"some plaintext");
        let mut longer = sealed.0.clone();
        longer.push(0);
        assert!(matches!(open(&KEY, b"ad", &longer), Err(CryptoError::Open)));
        // Dropping ciphertext bytes moves the tag window: still an authentication failure.
        let shorter = &sealed.0[..sealed.len() - 1];
        assert!(matches!(open(&KEY, b"ad", shorter), Err(CryptoError::Open)));
    }

    #[test]
    fn malformed_envelopes_are_format_errors() {
        let (secret, _) = recipient();
        let minimal_sym = [&[V_SYMMETRIC][..], &[0; NONCE_LEN + TAG_LEN - 1]].concat();
        let minimal_to = [
            &[V_TO_PUBLIC_KEY][..],
            &[0; PK_LEN + NONCE_LEN + TAG_LEN - 1],
        ]
        .concat();
        for bad in [
            &[][..],
            &[V_SYMMETRIC],
            &[V_TO_PUBLIC_KEY],
            &[0x00],
            &[0x03, 0, 0],
            &[0xff; 64],
            &minimal_sym,
            &minimal_to,
        ] {
            assert!(
                matches!(open(&KEY, b"", bad), Err(CryptoError::Format(_))),
                "open {bad:?}"
            );
            assert!(
                matches!(open_from(&secret, b"", bad), Err(CryptoError::Format(_))),
                "open_from {bad:?}"
            );
        }
    }

    #[test]
    fn envelope_kinds_are_not_interchangeable() {
        let (secret, pk) = recipient();
        let to = seal_to(&pk, b"", b"x");
        assert!(matches!(
            open(&KEY, b"", &to.0),
            Err(CryptoError::Format(_))
        ));
        let sym = seal(&KEY, b"", b"x");
        assert!(matches!(
            open_from(&secret, b"", &sym.0),
            Err(CryptoError::Format(_))
        ));
    }

    #[test]
    fn low_order_keys_are_rejected_and_never_leak() {
        // The all-zero point and the point of order 8 below are low-order X25519 public keys.
        let order8 =
            unhex_n::<32>("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800");
        let mut one = [0u8; 32];
        one[0] = 1;
        let low = [[0u8; 32], one, order8];
        for pk in low {
            assert!(matches!(check_box_pk(&pk), Err(CryptoError::Key(_))));
            // Sealing anyway must not use the publicly computable all-zero shared secret.
            let sealed = seal_to(&pk, b"", b"secret");
            let zero_key = hkdf32(&[0; 32], &[SEAL_TO_INFO, &sealed.0[1..33], &pk]);
            assert!(
                open(
                    &zero_key,
                    b"",
                    &[&[V_SYMMETRIC][..], &sealed.0[33..]].concat()
                )
                .is_err()
            );
        }
        let (_, pk) = recipient();
        check_box_pk(&pk).unwrap();

        // A low-order ephemeral key in an envelope is refused.
        let (secret, _) = recipient();
        let forged = [&[V_TO_PUBLIC_KEY][..], &[0; PK_LEN + NONCE_LEN + TAG_LEN]].concat();
        assert!(matches!(
            open_from(&secret, b"", &forged),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn aes256gcm_vectors_match_python_cryptography() {
        let doc = vector("aes256gcm.json");
        let cases = doc["cases"].as_array().expect("cases");
        assert!(!cases.is_empty());
        for case in cases {
            let key = unhex_n::<32>(field(case, "key"));
            let nonce = unhex_n::<12>(field(case, "nonce"));
            let ad = unhex(field(case, "ad"));
            let plaintext = unhex(field(case, "plaintext"));
            let expected = field(case, "sealed");
            let sealed = seal_with_nonce(&key, &nonce, &ad, &plaintext);
            assert_eq!(crate::hex(&sealed.0), expected, "{}", case["comment"]);
            assert_eq!(open(&key, &ad, &unhex(expected)).unwrap(), plaintext);
        }
    }

    #[test]
    fn seal_to_vector_matches_python_cryptography() {
        let v = vector("seal_to.json");
        let eph = unhex_n::<32>(field(&v, "eph_secret"));
        let recipient_secret = StaticSecret::from(unhex_n::<32>(field(&v, "recipient_secret")));
        let recipient_pk = PublicKey::from(&recipient_secret).to_bytes();
        assert_eq!(crate::hex(&recipient_pk), field(&v, "recipient_pk"));
        assert_eq!(
            crate::hex(&derive_seal_to_key(&eph, &recipient_pk)),
            field(&v, "key")
        );
        let (eph_pk, key) = seal_to_key(&eph, &recipient_pk).unwrap();
        assert_eq!(crate::hex(&eph_pk), field(&v, "eph_pk"));
        assert_eq!(crate::hex(key.as_ref()), field(&v, "key"));
        // A whole envelope made by Python opens here.
        let opened = open_from(
            &recipient_secret,
            &unhex(field(&v, "ad")),
            &unhex(field(&v, "sealed")),
        )
        .unwrap();
        assert_eq!(opened, unhex(field(&v, "plaintext")));
    }

    proptest! {
        #[test]
        fn prop_seal_open_round_trip(
            key in any::<[u8; 32]>(),
            ad in proptest::collection::vec(any::<u8>(), 0..64),
            plaintext in proptest::collection::vec(any::<u8>(), 0..1024),
        ) {
            let sealed = seal(&key, &ad, &plaintext);
            prop_assert_eq!(open(&key, &ad, &sealed.0).unwrap(), plaintext);
        }

        #[test]
        fn prop_seal_to_round_trip(
            ad in proptest::collection::vec(any::<u8>(), 0..64),
            plaintext in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let (secret, pk) = recipient();
            let sealed = seal_to(&pk, &ad, &plaintext);
            prop_assert_eq!(open_from(&secret, &ad, &sealed.0).unwrap(), plaintext);
        }

        #[test]
        fn prop_flipping_any_bit_fails_to_open(
            ad in proptest::collection::vec(any::<u8>(), 0..32),
            plaintext in proptest::collection::vec(any::<u8>(), 0..256),
            pick in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let sealed = seal(&KEY, &ad, &plaintext);
            // Byte 0 is the version; flipping it is a format error, tested separately.
            let i = 1 + pick.index(sealed.len() - 1);
            let mut bad = sealed.0.clone();
            bad[i] ^= 1 << bit;
            prop_assert!(matches!(open(&KEY, &ad, &bad), Err(CryptoError::Open)));
        }

        #[test]
        fn prop_flipping_any_bit_of_seal_to_fails_to_open(
            plaintext in proptest::collection::vec(any::<u8>(), 0..64),
            pick in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let (secret, pk) = recipient();
            let sealed = seal_to(&pk, b"ad", &plaintext);
            let i = 1 + pick.index(sealed.len() - 1);
            let mut bad = sealed.0.clone();
            bad[i] ^= 1 << bit;
            prop_assert!(matches!(open_from(&secret, b"ad", &bad), Err(CryptoError::Open)));
        }

        #[test]
        fn prop_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let (secret, _) = recipient();
            let _ = open(&KEY, b"", &bytes);
            let _ = open_from(&secret, b"", &bytes);
        }
    }
}
