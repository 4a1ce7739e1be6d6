//! Sealing of one workspace transfer: its chunks and its manifest blob (DESIGN §5, §6).
//!
//! Each transfer has its own key, derived from the session's data key:
//! key = HKDF-SHA256(ikm = data key, salt = empty, info = `"baton/transfer/v1" ‖ session ‖ transfer`).
//! A chunk is sealed with AD = `"baton.chunk.v1" ‖ transfer ‖ hash`, so it opens only in this
//! transfer and only under the name it was sent with; the blob with
//! AD = `"baton.transfer-blob.v1" ‖ transfer`. Envelopes are the symmetric layout of the crate
//! docs, with a fresh random nonce each.
//!
//! Opening a chunk also checks that BLAKE3 of its plaintext is its name: what comes out of
//! [`TransferCipher::open_chunk`] is exactly the content the manifest lists.

use std::fmt;

use baton_proto::transfer::{ChunksFrame, FrameError};
use baton_proto::workspace::ContentHash;
use baton_proto::{HandoffId, SessionId};
use zeroize::Zeroizing;

use crate::envelope::{hkdf32, seal_append};
use crate::{CryptoError, DataKey, Result};

const KEY_INFO: &[u8] = b"baton/transfer/v1";
const CHUNK_TAG: &[u8] = b"baton.chunk.v1";
const BLOB_TAG: &[u8] = b"baton.transfer-blob.v1";

/// Seals and opens the chunks and the blob of one transfer.
#[derive(Clone)]
pub struct TransferCipher {
    key: Zeroizing<[u8; 32]>,
    transfer: HandoffId,
}

/// A sealed chunk, as it travels.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedChunk(Vec<u8>);

impl SealedChunk {
    /// The envelope's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SealedChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedChunk({} bytes)", self.0.len())
    }
}

/// A sealed blob (the transfer's manifest), as it travels.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBlob(Vec<u8>);

impl SealedBlob {
    /// The envelope's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    /// The envelope, owned.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for SealedBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedBlob({} bytes)", self.0.len())
    }
}

/// An opened chunk whose content was checked against its name.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedChunk {
    hash: ContentHash,
    data: Vec<u8>,
}

impl VerifiedChunk {
    /// Its name: BLAKE3 of [`VerifiedChunk::data`].
    pub fn hash(&self) -> ContentHash {
        self.hash
    }
    /// The plaintext.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
    /// The plaintext, owned.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }
}

impl fmt::Debug for VerifiedChunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VerifiedChunk({:?}, {} bytes)",
            self.hash,
            self.data.len()
        )
    }
}

impl TransferCipher {
    /// The cipher of transfer `transfer` of `session`, whose data key is `key`.
    pub(crate) fn derive(key: &DataKey, session: SessionId, transfer: HandoffId) -> Self {
        Self {
            key: hkdf32(
                key.as_bytes(),
                &[KEY_INFO, session.as_bytes(), transfer.as_bytes()],
            ),
            transfer,
        }
    }

    /// The transfer this cipher is bound to.
    pub fn transfer_id(&self) -> HandoffId {
        self.transfer
    }

    fn chunk_ad(&self, hash: &ContentHash) -> [u8; 14 + 16 + 32] {
        let mut ad = [0u8; 14 + 16 + 32];
        ad[..14].copy_from_slice(CHUNK_TAG);
        ad[14..30].copy_from_slice(self.transfer.as_bytes());
        ad[30..].copy_from_slice(hash.as_bytes());
        ad
    }

    fn blob_ad(&self, seq: u32) -> Vec<u8> {
        [BLOB_TAG, self.transfer.as_bytes(), &seq.to_be_bytes()].concat()
    }

    /// Seals `plain`, the chunk named `hash`.
    pub fn seal_chunk(&self, hash: &ContentHash, plain: &[u8]) -> SealedChunk {
        let mut out = Vec::new();
        seal_append(&mut out, &self.key, &self.chunk_ad(hash), plain);
        SealedChunk(out)
    }

    /// Seals `plain` straight into `frame` (no intermediate copy). Refused when the chunk would
    /// break the frame's limits; the frame is then unchanged.
    pub fn seal_chunk_to(
        &self,
        hash: &ContentHash,
        plain: &[u8],
        frame: &mut ChunksFrame,
    ) -> std::result::Result<(), FrameError> {
        let ad = self.chunk_ad(hash);
        frame.push_with(hash, |buf| seal_append(buf, &self.key, &ad, plain))
    }

    /// Opens the chunk named `hash` and checks that its content hashes to that name.
    pub fn open_chunk(&self, hash: &ContentHash, sealed: &[u8]) -> Result<VerifiedChunk> {
        let data = crate::open(&self.key, &self.chunk_ad(hash), sealed)?;
        if blake3::hash(&data).as_bytes() != hash.as_bytes() {
            // Only a holder of the key can seal, so this is a broken source, not tampering.
            return Err(CryptoError::Decode(format!(
                "chunk {hash:?} does not hash to its name"
            )));
        }
        Ok(VerifiedChunk { hash: *hash, data })
    }

    /// [`TransferCipher::open_chunk`] where the sealed chunk lies (a received frame), without
    /// copying it: returns the plaintext, decrypted over `sealed`.
    pub fn open_chunk_in_place<'a>(
        &self,
        hash: &ContentHash,
        sealed: &'a mut [u8],
    ) -> Result<&'a [u8]> {
        let data = crate::envelope::open_in_place(&self.key, &self.chunk_ad(hash), sealed)?;
        if blake3::hash(data).as_bytes() != hash.as_bytes() {
            return Err(CryptoError::Decode(format!(
                "chunk {hash:?} does not hash to its name"
            )));
        }
        Ok(data)
    }

    /// Seals blob `seq` of the transfer (a part of its manifest); the number is bound in, so
    /// the relay cannot reorder or swap parts.
    pub fn seal_blob(&self, seq: u32, plain: &[u8]) -> SealedBlob {
        let mut out = Vec::new();
        seal_append(&mut out, &self.key, &self.blob_ad(seq), plain);
        SealedBlob(out)
    }

    /// Opens blob `seq` of the transfer.
    pub fn open_blob(&self, seq: u32, sealed: &[u8]) -> Result<Vec<u8>> {
        crate::open(&self.key, &self.blob_ad(seq), sealed)
    }
}

impl fmt::Debug for TransferCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransferCipher")
            .field("transfer", &self.transfer)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use baton_proto::transfer::{Frame, decode};
    use proptest::prelude::*;

    use super::*;
    use crate::SessionCipher;

    fn named(data: &[u8]) -> ContentHash {
        ContentHash(*blake3::hash(data).as_bytes())
    }

    fn session() -> SessionCipher {
        SessionCipher::new(DataKey::generate(), SessionId::new())
    }

    #[test]
    fn chunk_round_trip() {
        let c = session().transfer(HandoffId::new());
        let data = b"fn main() {}\n".to_vec();
        let hash = named(&data);
        let sealed = c.seal_chunk(&hash, &data);
        assert_eq!(sealed.as_bytes().len(), data.len() + 29);
        let opened = c.open_chunk(&hash, sealed.as_bytes()).unwrap();
        assert_eq!(opened.hash(), hash);
        assert_eq!(opened.data(), &data[..]);
        assert_eq!(opened.into_data(), data);
    }

    #[test]
    fn empty_chunk_round_trip() {
        let c = session().transfer(HandoffId::new());
        let hash = named(b"");
        let sealed = c.seal_chunk(&hash, b"");
        assert!(
            c.open_chunk(&hash, sealed.as_bytes())
                .unwrap()
                .data()
                .is_empty()
        );
    }

    #[test]
    fn chunk_is_bound_to_transfer_name_and_session() {
        let key = DataKey::generate();
        let s = SessionCipher::new(key.clone(), SessionId::new());
        let id = HandoffId::new();
        let c = s.transfer(id);
        let data = b"secret source code";
        let hash = named(data);
        let sealed = c.seal_chunk(&hash, data);
        // Another transfer of the same session.
        assert!(matches!(
            s.transfer(HandoffId::new())
                .open_chunk(&hash, sealed.as_bytes()),
            Err(CryptoError::Open)
        ));
        // Under another name.
        assert!(matches!(
            c.open_chunk(&named(b"other"), sealed.as_bytes()),
            Err(CryptoError::Open)
        ));
        // Same data key and transfer id, other session: the key differs.
        let other = SessionCipher::new(key, SessionId::new()).transfer(id);
        assert!(matches!(
            other.open_chunk(&hash, sealed.as_bytes()),
            Err(CryptoError::Open)
        ));
        // The same transfer derived again opens it.
        assert!(s.transfer(id).open_chunk(&hash, sealed.as_bytes()).is_ok());
    }

    #[test]
    fn tampered_chunk_fails() {
        let c = session().transfer(HandoffId::new());
        let data = vec![7u8; 1000];
        let hash = named(&data);
        let sealed = c.seal_chunk(&hash, &data);
        for at in [1, 13, 500, sealed.as_bytes().len() - 1] {
            let mut bad = sealed.as_bytes().to_vec();
            bad[at] ^= 1;
            assert!(matches!(c.open_chunk(&hash, &bad), Err(CryptoError::Open)));
        }
        assert!(c.open_chunk(&hash, &sealed.as_bytes()[..20]).is_err());
        assert!(c.open_chunk(&hash, &[]).is_err());
    }

    #[test]
    fn opening_in_place_gives_what_opening_gives_and_refuses_what_it_refuses() {
        let c = session().transfer(HandoffId::new());
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let hash = named(&data);
        let sealed = c.seal_chunk(&hash, &data);
        let mut buf = sealed.as_bytes().to_vec();
        assert_eq!(c.open_chunk_in_place(&hash, &mut buf).unwrap(), &data[..]);
        for at in [0, 1, 13, 500, sealed.as_bytes().len() - 1] {
            let mut bad = sealed.as_bytes().to_vec();
            bad[at] ^= 1;
            assert!(
                c.open_chunk_in_place(&hash, &mut bad).is_err(),
                "flipped byte {at}"
            );
        }
        let mut short = sealed.as_bytes()[..20].to_vec();
        assert!(c.open_chunk_in_place(&hash, &mut short).is_err());
        assert!(c.open_chunk_in_place(&hash, &mut []).is_err());
        let liar = named(b"what the manifest says");
        let mut lie = c.seal_chunk(&liar, b"something else").as_bytes().to_vec();
        assert!(matches!(
            c.open_chunk_in_place(&liar, &mut lie),
            Err(CryptoError::Decode(_))
        ));
    }

    #[test]
    fn content_that_does_not_match_its_name_is_refused() {
        let c = session().transfer(HandoffId::new());
        let liar = named(b"what the manifest says");
        let sealed = c.seal_chunk(&liar, b"something else");
        match c.open_chunk(&liar, sealed.as_bytes()) {
            Err(CryptoError::Decode(msg)) => assert!(msg.contains("does not hash")),
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn sealing_into_a_frame_matches_sealing_alone() {
        let c = session().transfer(HandoffId::new());
        let mut frame = ChunksFrame::new(0, 0);
        let parts: Vec<Vec<u8>> = vec![b"a".to_vec(), vec![9; 70_000], Vec::new()];
        for p in &parts {
            c.seal_chunk_to(&named(p), p, &mut frame).unwrap();
        }
        let bytes = frame.finish();
        let Frame::Chunks { chunks, .. } = decode(&bytes).unwrap() else {
            panic!("not chunks")
        };
        let opened: Vec<Vec<u8>> = chunks
            .iter()
            .map(|e| c.open_chunk(&e.hash, e.sealed).unwrap().into_data())
            .collect();
        assert_eq!(opened, parts);
    }

    #[test]
    fn blob_round_trip_and_binding() {
        let s = session();
        let id = HandoffId::new();
        let c = s.transfer(id);
        let sealed = c.seal_blob(3, b"{\"entries\":[]}");
        assert_eq!(
            c.open_blob(3, sealed.as_bytes()).unwrap(),
            b"{\"entries\":[]}"
        );
        assert!(
            s.transfer(HandoffId::new())
                .open_blob(3, sealed.as_bytes())
                .is_err()
        );
        // A part cannot pass for another part of the same transfer.
        assert!(c.open_blob(2, sealed.as_bytes()).is_err());
        // A chunk cannot pass for the blob or the other way round.
        let hash = named(b"x");
        let chunk = c.seal_chunk(&hash, b"x");
        assert!(c.open_blob(0, chunk.as_bytes()).is_err());
        assert!(c.open_chunk(&hash, sealed.as_bytes()).is_err());
        assert_eq!(sealed.clone().into_vec(), sealed.as_bytes());
    }

    #[test]
    fn debug_shows_no_key_or_content() {
        let c = session().transfer(HandoffId::new());
        let shown = format!("{c:?}");
        assert!(shown.contains(&c.transfer_id().to_string()));
        assert!(!shown.contains(&crate::hex(&c.key[..])));
        let hash = named(b"top secret");
        let chunk = c.open_chunk(&hash, c.seal_chunk(&hash, b"top secret").as_bytes());
        assert!(!format!("{chunk:?}").contains("top secret"));
    }

    proptest! {
        #[test]
        fn any_chunk_round_trips(data in prop::collection::vec(any::<u8>(), 0..5000)) {
            let c = session().transfer(HandoffId::new());
            let hash = named(&data);
            let sealed = c.seal_chunk(&hash, &data);
            prop_assert_eq!(c.open_chunk(&hash, sealed.as_bytes()).unwrap().into_data(), data);
        }

        #[test]
        fn garbage_never_opens(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let c = session().transfer(HandoffId::new());
            prop_assert!(c.open_chunk(&named(&bytes), &bytes).is_err());
            prop_assert!(c.open_blob(0, &bytes).is_err());
        }
    }
}
