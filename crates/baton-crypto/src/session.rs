//! Typed sealing of a session's records with its data key. Each record kind has its own domain
//! tag and binds its identity as associated data, so a ciphertext cannot be moved to another
//! session, seq, epoch, input or handoff.

use std::fmt;

use baton_proto::handoff::{SealedHandoffOptions, WorkspaceOutcome};
use baton_proto::workspace::PlanSummary;
use baton_proto::ws::ProviderBundle;
use baton_proto::{
    EntryBody, HandoffId, InputId, InputRecord, PermissionAnswer, Sealed, SealedEntry, SessionId,
    SessionMeta,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::error::Category;
use zeroize::Zeroizing;

use crate::{CryptoError, DataKey, Result, TransferCipher};

const ENTRY_TAG: &[u8] = b"baton.entry.v1";
const META_TAG: &[u8] = b"baton.meta.v1";
const INPUT_TAG: &[u8] = b"baton.input.v1";
const OPTIONS_TAG: &[u8] = b"baton.handoff-options.v1";
const BUNDLE_TAG: &[u8] = b"baton.bundle.v1";
const DIRECT_TAG: &[u8] = b"baton.direct-transcript.v1";
const ANSWER_TAG: &[u8] = b"baton.permission-answer.v1";
const WORKSPACE_TAG: &[u8] = b"baton.workspace-outcome.v1";
const PLAN_TAG: &[u8] = b"baton.workspace-plan.v1";

/// Seals and opens one session's records.
#[derive(Clone)]
pub struct SessionCipher {
    key: DataKey,
    session: SessionId,
}

impl SessionCipher {
    /// A cipher for `session` with its data key.
    pub fn new(key: DataKey, session: SessionId) -> Self {
        Self { key, session }
    }
    /// The session this cipher is bound to.
    pub fn session_id(&self) -> SessionId {
        self.session
    }
    /// The cipher of one workspace transfer of this session, keyed apart from every other
    /// record kind (see [`TransferCipher`]).
    pub fn transfer(&self, transfer: HandoffId) -> TransferCipher {
        TransferCipher::derive(&self.key, self.session, transfer)
    }
    /// AD = "baton.entry.v1" ‖ session ‖ seq(u64 BE) ‖ epoch(u64 BE).
    pub fn seal_entry(&self, seq: u64, epoch: u64, body: &EntryBody) -> Sealed {
        self.seal_json(&self.entry_ad(seq, epoch), body)
    }
    /// Opens an entry, checking it belongs at its (seq, epoch) in this session.
    pub fn open_entry(&self, entry: &SealedEntry) -> Result<EntryBody> {
        self.open_json(&self.entry_ad(entry.seq, entry.epoch), &entry.sealed.0)
    }
    /// AD = "baton.meta.v1" ‖ session.
    pub fn seal_meta(&self, meta: &SessionMeta) -> Sealed {
        self.seal_json(&self.ad(META_TAG, &[]), meta)
    }
    /// Opens metadata.
    pub fn open_meta(&self, sealed: &Sealed) -> Result<SessionMeta> {
        self.open_json(&self.ad(META_TAG, &[]), &sealed.0)
    }
    /// AD = "baton.input.v1" ‖ session ‖ input id; plaintext is the UTF-8 text.
    pub fn seal_input(&self, input: InputId, text: &str) -> Sealed {
        crate::seal(
            self.key.as_bytes(),
            &self.ad(INPUT_TAG, input.as_bytes()),
            text.as_bytes(),
        )
    }
    /// Opens an input's text.
    ///
    /// The AD uses this cipher's session, so a record claiming another session fails to open.
    pub fn open_input(&self, input: &InputRecord) -> Result<String> {
        let bytes = crate::open(
            self.key.as_bytes(),
            &self.ad(INPUT_TAG, input.id.as_bytes()),
            &input.sealed.0,
        )?;
        String::from_utf8(bytes).map_err(|e| {
            let msg = format!("input text is not UTF-8: {}", e.utf8_error());
            // The rejected bytes are plaintext; don't leave them in freed memory.
            drop(Zeroizing::new(e.into_bytes()));
            CryptoError::Decode(msg)
        })
    }
    /// AD = "baton.handoff-options.v1" ‖ session ‖ handoff.
    pub fn seal_options(&self, handoff: HandoffId, options: &SealedHandoffOptions) -> Sealed {
        self.seal_json(&self.ad(OPTIONS_TAG, handoff.as_bytes()), options)
    }
    /// Opens handoff options.
    pub fn open_options(
        &self,
        handoff: HandoffId,
        sealed: &Sealed,
    ) -> Result<SealedHandoffOptions> {
        self.open_json(&self.ad(OPTIONS_TAG, handoff.as_bytes()), &sealed.0)
    }
    /// Seals what a handoff's workspace transfer did; AD = tag ‖ session ‖ handoff.
    pub fn seal_workspace(&self, handoff: HandoffId, outcome: &WorkspaceOutcome) -> Sealed {
        self.seal_json(&self.ad(WORKSPACE_TAG, handoff.as_bytes()), outcome)
    }
    /// Seals what a handoff's workspace transfer will do; AD = tag ‖ session ‖ handoff.
    pub fn seal_plan(&self, handoff: HandoffId, plan: &PlanSummary) -> Sealed {
        self.seal_json(&self.ad(PLAN_TAG, handoff.as_bytes()), plan)
    }
    /// Opens what a handoff's workspace transfer will do.
    pub fn open_plan(&self, handoff: HandoffId, sealed: &Sealed) -> Result<PlanSummary> {
        self.open_json(&self.ad(PLAN_TAG, handoff.as_bytes()), &sealed.0)
    }
    /// Opens what a handoff's workspace transfer did.
    pub fn open_workspace(&self, handoff: HandoffId, sealed: &Sealed) -> Result<WorkspaceOutcome> {
        self.open_json(&self.ad(WORKSPACE_TAG, handoff.as_bytes()), &sealed.0)
    }
    /// AD = "baton.bundle.v1" ‖ session ‖ handoff.
    pub fn seal_bundle(&self, handoff: HandoffId, bundle: &ProviderBundle) -> Sealed {
        self.seal_json(&self.ad(BUNDLE_TAG, handoff.as_bytes()), bundle)
    }
    /// Opens a provider-state bundle.
    pub fn open_bundle(&self, handoff: HandoffId, sealed: &[u8]) -> Result<ProviderBundle> {
        self.open_json(&self.ad(BUNDLE_TAG, handoff.as_bytes()), sealed)
    }

    /// AD = "baton.direct-transcript.v1" ‖ session ‖ request: a Direct session's transcript as
    /// its owner read it from the provider's files, for one request.
    pub fn seal_transcript(&self, request: &[u8], entries: &[EntryBody]) -> Sealed {
        self.seal_json(&self.ad(DIRECT_TAG, request), &entries)
    }
    /// Opens a transcript sealed by [`SessionCipher::seal_transcript`] for the same request.
    pub fn open_transcript(&self, request: &[u8], sealed: &Sealed) -> Result<Vec<EntryBody>> {
        self.open_json(&self.ad(DIRECT_TAG, request), &sealed.0)
    }

    /// AD = "baton.permission-answer.v1" ‖ session ‖ request seq (u64 BE): a person's answer
    /// to one tool approval request.
    pub fn seal_answer(&self, request: u64, answer: &PermissionAnswer) -> Sealed {
        self.seal_json(&self.ad(ANSWER_TAG, &request.to_be_bytes()), answer)
    }
    /// Opens an answer sealed by [`SessionCipher::seal_answer`] for the same request.
    pub fn open_answer(&self, request: u64, sealed: &Sealed) -> Result<PermissionAnswer> {
        self.open_json(&self.ad(ANSWER_TAG, &request.to_be_bytes()), &sealed.0)
    }

    /// `tag ‖ session ‖ rest`; the tags differ within their first seven bytes, so no two record
    /// kinds can produce the same AD.
    fn ad(&self, tag: &[u8], rest: &[u8]) -> Vec<u8> {
        [tag, self.session.as_bytes(), rest].concat()
    }
    fn entry_ad(&self, seq: u64, epoch: u64) -> Vec<u8> {
        let mut rest = [0u8; 16];
        rest[..8].copy_from_slice(&seq.to_be_bytes());
        rest[8..].copy_from_slice(&epoch.to_be_bytes());
        self.ad(ENTRY_TAG, &rest)
    }
    fn seal_json<T: Serialize>(&self, ad: &[u8], value: &T) -> Sealed {
        let json = Zeroizing::new(
            serde_json::to_vec(value)
                .expect("record types serialise to JSON: string keys, no failing Serialize impls"),
        );
        crate::seal(self.key.as_bytes(), ad, &json)
    }
    fn open_json<T: DeserializeOwned>(&self, ad: &[u8], sealed: &[u8]) -> Result<T> {
        let json = Zeroizing::new(crate::open(self.key.as_bytes(), ad, sealed)?);
        serde_json::from_slice(&json).map_err(|e| {
            // serde_json's own message can quote the offending value, which is plaintext; keep
            // only the kind and position so the error is safe to log.
            let kind = match e.classify() {
                Category::Io => "I/O",
                Category::Syntax => "syntax",
                Category::Data => "data",
                Category::Eof => "truncated",
            };
            CryptoError::Decode(format!(
                "expected {}: JSON {kind} error at line {} column {}",
                short_type_name::<T>(),
                e.line(),
                e.column()
            ))
        })
    }
}

/// `EntryBody` rather than `baton_proto::session::EntryBody`.
fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

impl fmt::Debug for SessionCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCipher")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use baton_proto::ws::BundleFile;
    use baton_proto::{Bytes, EntryRole};

    use super::*;

    fn cipher() -> SessionCipher {
        SessionCipher::new(DataKey::generate(), SessionId::new())
    }

    fn entry(c: &SessionCipher, seq: u64, epoch: u64, body: &EntryBody) -> SealedEntry {
        SealedEntry {
            seq,
            epoch,
            input_id: None,
            sealed: c.seal_entry(seq, epoch, body),
            created_at: 0,
        }
    }

    fn body() -> EntryBody {
        let mut body = EntryBody::new(EntryRole::Assistant, "done: 3 files changed");
        body.turn_end = true;
        body.data = Some(serde_json::json!({"usage": {"output_tokens": 42}}));
        body
    }

    fn bundle() -> ProviderBundle {
        ProviderBundle {
            format: 1,
            provider: "claude".into(),
            provider_ref: "abc".into(),
            provider_version: Some("2.1.0".into()),
            source_workspace: "/home/ada/project".into(),
            source_home: "/home/ada".into(),
            files: vec![BundleFile {
                path: "projects/x/abc.jsonl".into(),
                mode: 0o600,
                data: Bytes(vec![0, 1, 2, 255]),
            }],
        }
    }

    fn input(c: &SessionCipher, id: InputId, text: &str) -> InputRecord {
        InputRecord {
            id,
            session_id: c.session_id(),
            order: 1,
            sealed: c.seal_input(id, text),
            consumed: false,
            consumed_seq: None,
            created_at: 0,
        }
    }

    fn is_open_err<T>(r: Result<T>) -> bool {
        matches!(r, Err(CryptoError::Open))
    }

    #[test]
    fn session_id_is_kept() {
        let session = SessionId::new();
        assert_eq!(
            SessionCipher::new(DataKey::generate(), session).session_id(),
            session
        );
    }

    #[test]
    fn entry_round_trip() {
        let c = cipher();
        assert_eq!(c.open_entry(&entry(&c, 5, 2, &body())).unwrap(), body());
    }

    #[test]
    fn entry_bound_to_seq_epoch_and_session() {
        let c = cipher();
        let e = entry(&c, 5, 2, &body());
        assert!(is_open_err(c.open_entry(&SealedEntry {
            seq: 6,
            ..e.clone()
        })));
        assert!(is_open_err(c.open_entry(&SealedEntry {
            epoch: 3,
            ..e.clone()
        })));
        // Same data key, other session: the AD differs.
        let other = SessionCipher::new(c.key.clone(), SessionId::new());
        assert!(is_open_err(other.open_entry(&e)));
        // Other key, same session.
        let wrong_key = SessionCipher::new(DataKey::generate(), c.session_id());
        assert!(is_open_err(wrong_key.open_entry(&e)));
    }

    #[test]
    fn meta_round_trip_and_binding() {
        let c = cipher();
        let meta = SessionMeta {
            workspace: "/home/ada/project".into(),
            provider_ref: Some("abc".into()),
            title: Some("fix the build".into()),
            fork_of: None,
        };
        let sealed = c.seal_meta(&meta);
        assert_eq!(c.open_meta(&sealed).unwrap(), meta);
        let other = SessionCipher::new(c.key.clone(), SessionId::new());
        assert!(is_open_err(other.open_meta(&sealed)));
    }

    #[test]
    fn input_round_trip_and_binding() {
        let c = cipher();
        let id = InputId::new();
        let record = input(&c, id, "please run the tests ✓");
        assert_eq!(c.open_input(&record).unwrap(), "please run the tests ✓");
        assert!(is_open_err(c.open_input(&InputRecord {
            id: InputId::new(),
            ..record.clone()
        })));
        let other = SessionCipher::new(c.key.clone(), SessionId::new());
        assert!(is_open_err(other.open_input(&record)));
    }

    #[test]
    fn input_that_is_not_utf8_is_a_decode_error() {
        let c = cipher();
        let id = InputId::new();
        let mut record = input(&c, id, "");
        record.sealed = crate::seal(
            c.key.as_bytes(),
            &c.ad(INPUT_TAG, id.as_bytes()),
            &[0xff, 0xfe],
        );
        assert!(matches!(c.open_input(&record), Err(CryptoError::Decode(_))));
    }

    #[test]
    fn options_round_trip_and_binding() {
        let c = cipher();
        let handoff = HandoffId::new();
        let options = SealedHandoffOptions {
            target_path: Some("/srv/project".into()),
            ignored: baton_proto::workspace::IgnoredFiles::Globs(vec![".env".into()]),
        };
        let sealed = c.seal_options(handoff, &options);
        assert_eq!(c.open_options(handoff, &sealed).unwrap(), options);
        assert!(is_open_err(c.open_options(HandoffId::new(), &sealed)));
        let other = SessionCipher::new(c.key.clone(), SessionId::new());
        assert!(is_open_err(other.open_options(handoff, &sealed)));
    }

    #[test]
    fn bundle_round_trip_and_binding() {
        let c = cipher();
        let handoff = HandoffId::new();
        let sealed = c.seal_bundle(handoff, &bundle());
        assert_eq!(c.open_bundle(handoff, &sealed.0).unwrap(), bundle());
        assert!(is_open_err(c.open_bundle(HandoffId::new(), &sealed.0)));
        let other = SessionCipher::new(c.key.clone(), SessionId::new());
        assert!(is_open_err(other.open_bundle(handoff, &sealed.0)));
    }

    #[test]
    fn answer_round_trip_and_binding() {
        let c = cipher();
        let yes = PermissionAnswer { allow: true };
        let sealed = c.seal_answer(7, &yes);
        assert_eq!(c.open_answer(7, &sealed).unwrap(), yes);
        assert!(
            is_open_err(c.open_answer(8, &sealed)),
            "bound to the request"
        );
        let other = SessionCipher::new(c.key.clone(), SessionId::new());
        assert!(
            is_open_err(other.open_answer(7, &sealed)),
            "bound to the session"
        );
    }

    #[test]
    fn record_kinds_cannot_be_swapped() {
        let c = cipher();
        let handoff = HandoffId::new();
        // Options and bundle share (session, handoff); only the domain tag tells them apart.
        let options = c.seal_options(handoff, &SealedHandoffOptions::default());
        assert!(is_open_err(c.open_bundle(handoff, &options.0)));
        let bundle = c.seal_bundle(handoff, &bundle());
        assert!(is_open_err(c.open_options(handoff, &bundle)));
        let meta = c.seal_meta(&SessionMeta {
            workspace: "/w".into(),
            provider_ref: None,
            title: None,
            fork_of: None,
        });
        let as_entry = SealedEntry {
            seq: 1,
            epoch: 1,
            input_id: None,
            sealed: meta,
            created_at: 0,
        };
        assert!(is_open_err(c.open_entry(&as_entry)));
    }

    #[test]
    fn wrong_shape_is_a_decode_error_without_plaintext() {
        let c = cipher();
        // A record sealed with the right AD whose JSON is not an EntryBody.
        let sealed = crate::seal(
            c.key.as_bytes(),
            &c.entry_ad(1, 1),
            br#"{"role":"top secret value","text":"x"}"#,
        );
        let e = SealedEntry {
            seq: 1,
            epoch: 1,
            input_id: None,
            sealed,
            created_at: 0,
        };
        match c.open_entry(&e) {
            Err(CryptoError::Decode(msg)) => {
                assert!(msg.contains("EntryBody"), "{msg}");
                assert!(!msg.contains("top secret"), "{msg}");
            }
            other => panic!("expected Decode, got {other:?}"),
        }
    }

    #[test]
    fn entry_ad_layout() {
        let session: SessionId = "0196a3c2-7d4e-7f00-8a1b-2c3d4e5f6071".parse().unwrap();
        let c = SessionCipher::new(DataKey::generate(), session);
        let ad = c.entry_ad(0x0102, 0x0304);
        let expected = [
            &b"baton.entry.v1"[..],
            session.as_bytes(),
            &[0, 0, 0, 0, 0, 0, 1, 2],
            &[0, 0, 0, 0, 0, 0, 3, 4],
        ]
        .concat();
        assert_eq!(ad, expected);
    }

    #[test]
    fn debug_shows_only_the_session() {
        let c = cipher();
        let shown = format!("{c:?}");
        assert!(shown.contains(&c.session_id().to_string()));
        assert!(!shown.contains(&crate::hex(c.key.as_bytes())));
    }
}
