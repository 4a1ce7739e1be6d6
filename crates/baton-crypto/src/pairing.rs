//! One-time pairing codes. The code's secret never reaches the server: the server sees only an id
//! derived from it and the account secret sealed to an X25519 key derived from it.

use std::fmt;

use baton_proto::Sealed;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::envelope::{hkdf_n, hkdf32, random};
use crate::{AccountSecret, CryptoError, Result};

const ID_INFO: &[u8] = b"baton/pairing/id/v1";
const BOX_INFO: &[u8] = b"baton/pairing/box/v1";
const AD_TAG: &[u8] = b"baton.pairing.v1";

/// Crockford's base32 alphabet: no I, L, O or U, so a code survives being read aloud.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 128 bits in 5-bit symbols.
const SYMBOLS: usize = 26;
const GROUP: usize = 4;

/// A one-time pairing code: 16 random bytes shown as Crockford base32 in dash-separated groups
/// (e.g. `7JEN-X3R1-MATC-DP70-Y4HM-ASW9-18`); parsing ignores case, dashes and spaces.
///
/// The bits are read most significant first; the last symbol carries two padding bits, written as
/// zero and ignored when parsing.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct PairingCode(/* private */ [u8; 16]);

impl PairingCode {
    /// A new random code.
    pub fn generate() -> Self {
        Self(random())
    }
    /// Parses a code typed by a person.
    ///
    /// Besides ignoring case, dashes and whitespace, it reads `I` and `L` as `1` and `O` as `0`,
    /// as Crockford's base32 prescribes for codes copied by hand.
    pub fn parse(s: &str) -> Result<Self> {
        let mut bytes = [0u8; 16];
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut count = 0usize;
        let mut filled = 0usize;
        for c in s.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            let v = symbol_value(c).ok_or(CryptoError::PairingCode(
                "unexpected character (use 0-9 and A-Z without U)",
            ))?;
            count += 1;
            if count > SYMBOLS {
                return Err(WRONG_LENGTH);
            }
            acc = (acc << 5) | u32::from(v);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                // 26 symbols (checked above) are 130 bits: exactly 16 bytes and 2 padding bits.
                bytes[filled] = (acc >> bits) as u8;
                filled += 1;
                acc &= (1 << bits) - 1;
            }
        }
        if count != SYMBOLS {
            return Err(WRONG_LENGTH);
        }
        // The 2 padding bits left in `acc` are ignored: rejecting them would only refuse a
        // spelling of the same 16 bytes, and any other typo is caught by the pairing id lookup.
        Ok(Self(bytes))
    }
    /// The code as shown to a person.
    pub fn display(&self) -> String {
        let mut symbols = Vec::with_capacity(SYMBOLS);
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        for &b in &self.0 {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                symbols.push(ALPHABET[((acc >> bits) & 31) as usize]);
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            symbols.push(ALPHABET[((acc << (5 - bits)) & 31) as usize]);
        }
        let groups: Vec<&str> = symbols
            .chunks(GROUP)
            .map(|g| std::str::from_utf8(g).expect("the alphabet is ASCII"))
            .collect();
        groups.join("-")
    }
    /// Id the server stores: hex of HKDF-SHA256(ikm = code, info = "baton/pairing/id/v1"), 16 bytes.
    pub fn pairing_id(&self) -> String {
        crate::hex(self.id_bytes().as_ref())
    }
    /// Seals the account secret to the X25519 key derived from the code
    /// (secret = HKDF-SHA256(ikm = code, info = "baton/pairing/box/v1")), AD = "baton.pairing.v1" ‖ id.
    ///
    /// The id in the AD is its 16 raw bytes, not the hex string.
    pub fn seal_secret(&self, secret: &AccountSecret) -> Sealed {
        let pk = PublicKey::from(&self.box_secret()).to_bytes();
        crate::seal_to(&pk, &self.ad(), secret.as_bytes())
    }
    /// Opens what [`PairingCode::seal_secret`] sealed.
    pub fn open_secret(&self, sealed: &Sealed) -> Result<AccountSecret> {
        let bytes = Zeroizing::new(crate::open_from(&self.box_secret(), &self.ad(), &sealed.0)?);
        let secret: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Key("sealed account secret is not 32 bytes"))?;
        Ok(AccountSecret::from_bytes(*secret))
    }

    fn id_bytes(&self) -> Zeroizing<[u8; 16]> {
        hkdf_n(&self.0, &[ID_INFO])
    }
    fn box_secret(&self) -> StaticSecret {
        StaticSecret::from(*hkdf32(&self.0, &[BOX_INFO]))
    }
    fn ad(&self) -> Vec<u8> {
        [AD_TAG, self.id_bytes().as_ref()].concat()
    }
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingCode(..)")
    }
}

const WRONG_LENGTH: CryptoError =
    CryptoError::PairingCode("a pairing code has 26 characters (letters and digits)");

/// The 5-bit value of a Crockford base32 symbol, with its substitutions for look-alikes.
fn symbol_value(c: char) -> Option<u8> {
    let c = match c.to_ascii_uppercase() {
        'I' | 'L' => '1',
        'O' => '0',
        c => c,
    };
    let byte = u8::try_from(c).ok()?;
    ALPHABET.iter().position(|&a| a == byte).map(|i| i as u8)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::test_util::{field, unhex, unhex_n, vector};

    #[test]
    fn display_shape() {
        let shown = PairingCode::generate().display();
        let groups: Vec<&str> = shown.split('-').collect();
        assert_eq!(groups.len(), 7, "{shown}");
        assert!(groups[..6].iter().all(|g| g.len() == 4));
        assert_eq!(groups[6].len(), 2);
        assert!(shown.bytes().all(|b| b == b'-' || ALPHABET.contains(&b)));
    }

    #[test]
    fn display_parse_round_trip() {
        let code = PairingCode::generate();
        let parsed = PairingCode::parse(&code.display()).unwrap();
        assert_eq!(parsed.0, code.0);
        for bytes in [[0u8; 16], [0xff; 16]] {
            let code = PairingCode(bytes);
            assert_eq!(PairingCode::parse(&code.display()).unwrap().0, bytes);
        }
        assert_eq!(
            PairingCode([0; 16]).display(),
            "0000-0000-0000-0000-0000-0000-00"
        );
        assert_eq!(
            PairingCode([0xff; 16]).display(),
            "ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZW"
        );
    }

    #[test]
    fn parsing_is_tolerant() {
        let code = PairingCode(unhex_n("3c9d5e8f01a2b4c6d8e0f1234567890a"));
        let shown = code.display();
        assert_eq!(shown, "7JEN-X3R1-MATC-DP70-Y4HM-ASW9-18");
        for typed in [
            "7JEN-X3R1-MATC-DP70-Y4HM-ASW9-18",
            "7jen-x3r1-matc-dp70-y4hm-asw9-18",
            "7JENX3R1MATCDP70Y4HMASW918",
            "7JEN X3R1 MATC DP70 Y4HM ASW9 18",
            "  7JEN--X3RI-MATC-DP7O-Y4HM-ASW9-1 8\n",
            "7JEN-X3Rl-MATC-DP7o-Y4HM-ASW9-L8",
        ] {
            assert_eq!(PairingCode::parse(typed).unwrap().0, code.0, "{typed:?}");
        }
    }

    #[test]
    fn malformed_codes_are_rejected() {
        for bad in [
            "",
            "7JEN-X3R1-MATC-DP70-Y4HM-ASW9-1",
            "7JEN-X3R1-MATC-DP70-Y4HM-ASW9-188",
            "7JEN-X3R1-MATC-DP70-Y4HM-ASW9-1U",
            "7JEN-X3R1-MATC-DP70-Y4HM-ASW9-1!",
            "7JEN-X3R1-MATC-DP70-Y4HM-ASW9-1é",
            "----",
        ] {
            assert!(
                matches!(PairingCode::parse(bad), Err(CryptoError::PairingCode(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn padding_bits_are_ignored() {
        let canonical = PairingCode::parse("7JEN-X3R1-MATC-DP70-Y4HM-ASW9-18").unwrap();
        let padded = PairingCode::parse("7JEN-X3R1-MATC-DP70-Y4HM-ASW9-1B").unwrap();
        assert_eq!(padded.0, canonical.0);
        assert_eq!(padded.display(), "7JEN-X3R1-MATC-DP70-Y4HM-ASW9-18");
    }

    #[test]
    fn pairing_vector_matches_python_cryptography() {
        let v = vector("pairing.json");
        let code = PairingCode(unhex_n(field(&v, "code")));
        assert_eq!(code.display(), field(&v, "display"));
        assert_eq!(code.pairing_id(), field(&v, "pairing_id"));
        assert_eq!(
            crate::hex(&PublicKey::from(&code.box_secret()).to_bytes()),
            field(&v, "box_pk")
        );
        assert_eq!(code.ad(), unhex(field(&v, "ad")));
    }

    #[test]
    fn pairing_id_is_stable_and_distinct() {
        let code = PairingCode::generate();
        let id = code.pairing_id();
        assert_eq!(id.len(), 32);
        assert_eq!(
            id,
            PairingCode::parse(&code.display()).unwrap().pairing_id()
        );
        assert_ne!(id, PairingCode::generate().pairing_id());
    }

    #[test]
    fn seal_open_secret_with_right_code() {
        let code = PairingCode::generate();
        let secret = AccountSecret::generate();
        let sealed = code.seal_secret(&secret);
        let typed = PairingCode::parse(&code.display().to_lowercase()).unwrap();
        assert_eq!(
            typed.open_secret(&sealed).unwrap().to_bytes(),
            secret.to_bytes()
        );
    }

    #[test]
    fn open_secret_with_wrong_code_fails() {
        let sealed = PairingCode::generate().seal_secret(&AccountSecret::generate());
        assert!(matches!(
            PairingCode::generate().open_secret(&sealed),
            Err(CryptoError::Open)
        ));
    }

    #[test]
    fn debug_never_shows_the_code() {
        assert_eq!(format!("{:?}", PairingCode::generate()), "PairingCode(..)");
    }

    proptest! {
        #[test]
        fn prop_display_parse_round_trip(bytes in any::<[u8; 16]>()) {
            let shown = PairingCode(bytes).display();
            prop_assert_eq!(PairingCode::parse(&shown).unwrap().0, bytes);
            prop_assert_eq!(PairingCode::parse(&shown.to_lowercase()).unwrap().0, bytes);
        }

        #[test]
        fn prop_parse_never_panics(s in "\\PC{0,40}") {
            let _ = PairingCode::parse(&s);
        }
    }
}
