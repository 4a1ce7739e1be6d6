//! The cases, written against `dyn Store` only, so both backends must give the same answers.

use std::collections::BTreeSet;
use std::sync::Arc;

use baton_proto::api::NewEntry;
use baton_proto::{
    AccountId, ApiError, AuthState, DirectTarget, ErrorCode, HandoffId, HandoffOptions,
    HandoffPhase, HandoffRecord, HandoffResult, HandoffSupport, InputId, MachineId, MachineKind,
    PhaseRecord, ProviderInfo, Sealed, ServiceRecord, SessionId, SessionMode, SessionRecord,
    SessionStatus, VersionCheck,
};
use baton_store::{
    AbortHandoff, AppendEntries, CommitHandoff, MachineRow, PairingRow, SettingRecord, Store,
    StoreError, TokenRow,
};

// ---- fixtures ----

/// An account with two machines, `laptop` (owner of new sessions) and `desktop`.
pub struct World {
    pub store: Arc<dyn Store>,
    pub account: AccountId,
    pub laptop: MachineId,
    pub desktop: MachineId,
}

fn machine_row(account: AccountId, name: &str) -> MachineRow {
    MachineRow {
        id: MachineId::new(),
        account_id: account,
        name: name.to_string(),
        sign_pk: vec![1; 32],
        box_pk: vec![2; 32],
        providers: Vec::new(),
        last_seen: None,
        kind: MachineKind::Daemon,
        created_at: 1_000,
    }
}

/// A fresh account with a laptop and a desktop.
pub async fn world(store: Arc<dyn Store>) -> World {
    let account = AccountId::new();
    let laptop = machine_row(account, "laptop");
    let desktop = machine_row(account, "desktop");
    store
        .create_account(account, &laptop)
        .await
        .expect("create account");
    store.add_machine(&desktop).await.expect("add desktop");
    World {
        store,
        account,
        laptop: laptop.id,
        desktop: desktop.id,
    }
}

fn sealed(s: &str) -> Sealed {
    Sealed(s.as_bytes().to_vec())
}

fn session_record(owner: MachineId, created_at: i64) -> SessionRecord {
    SessionRecord {
        id: SessionId::new(),
        provider: "scripted".into(),
        mode: SessionMode::Synced,
        owner,
        epoch: 1,
        status: SessionStatus::Idle,
        last_seq: 0,
        active_handoff: None,
        sealed_meta: sealed("meta-on-laptop"),
        sealed_key: sealed("key"),
        created_at,
        updated_at: created_at,
    }
}

/// A new session owned by the laptop.
pub async fn new_session(w: &World) -> SessionRecord {
    let s = session_record(w.laptop, 2_000);
    w.store
        .create_session(w.account, &s)
        .await
        .expect("create session");
    s
}

fn entry(seq: u64, input: Option<InputId>) -> NewEntry {
    NewEntry {
        seq,
        input_id: input,
        sealed: sealed(&format!("entry-{seq}")),
    }
}

fn append(
    w: &World,
    s: &SessionRecord,
    machine: MachineId,
    epoch: u64,
    entries: Vec<NewEntry>,
    status: Option<SessionStatus>,
) -> AppendEntries {
    AppendEntries {
        account: w.account,
        session_id: s.id,
        machine_id: machine,
        epoch,
        entries,
        status,
        now: 5_000,
    }
}

fn handoff_record(s: &SessionRecord, from: MachineId, to: MachineId, epoch: u64) -> HandoffRecord {
    HandoffRecord {
        id: HandoffId::new(),
        session_id: s.id,
        from,
        to,
        from_epoch: epoch,
        phase: HandoffPhase::Requested,
        result: HandoffResult::Active,
        phases: vec![phase(HandoffPhase::Requested, true)],
        error: None,
        options: HandoffOptions {
            workspace: true,
            ..HandoffOptions::default()
        },
        sealed_options: Some(sealed("opts")),
        bytes: 0,
        workspace: None,
        plan: None,
        created_at: 3_000,
        updated_at: 3_000,
    }
}

fn phase(p: HandoffPhase, ok: bool) -> PhaseRecord {
    PhaseRecord {
        phase: p,
        started_at: 3_000,
        ended_at: Some(3_001),
        ok,
    }
}

fn commit_of(h: &HandoffRecord) -> CommitHandoff {
    CommitHandoff {
        handoff_id: h.id,
        sealed_meta: sealed("meta-on-desktop"),
        phases: vec![
            phase(HandoffPhase::Requested, true),
            phase(HandoffPhase::Commit, true),
        ],
        bytes: 4_242,
        mode: SessionMode::Synced,
        now: 6_000,
    }
}

fn abort_of(h: &HandoffRecord) -> AbortHandoff {
    AbortHandoff {
        handoff_id: h.id,
        error: ApiError::new(ErrorCode::TransferFailed, "Transfer broke."),
        phases: vec![
            phase(HandoffPhase::Requested, true),
            phase(HandoffPhase::Transfer, false),
        ],
        now: 7_000,
    }
}

async fn session_of(w: &World, id: SessionId) -> SessionRecord {
    w.store
        .session(w.account, id)
        .await
        .expect("read session")
        .expect("session exists")
}

async fn handoff_of(w: &World, id: HandoffId) -> HandoffRecord {
    w.store
        .handoff(w.account, id)
        .await
        .expect("read handoff")
        .expect("handoff exists")
}

/// Begins a handoff laptop → desktop at the session's epoch and quiesces the source.
async fn started_handoff(w: &World, s: &SessionRecord) -> HandoffRecord {
    let cur = session_of(w, s.id).await;
    let h = handoff_record(s, cur.owner, w.desktop, cur.epoch);
    w.store.begin_handoff(&h).await.expect("begin handoff");
    w.store
        .begin_quiesce(s.id, cur.epoch, 4_000)
        .await
        .expect("quiesce");
    h
}

// ---- accounts, machines, auth ----

pub async fn accounts_and_machines(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let machines = store.machines(w.account).await.expect("machines");
    let names: Vec<_> = machines.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["desktop", "laptop"], "ordered by name");

    let dup = machine_row(w.account, "laptop");
    let err = store.add_machine(&dup).await.expect_err("name taken");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    // The same name in another account is fine, and lists stay apart.
    let other = world(store.clone()).await;
    assert_eq!(store.machines(other.account).await.expect("m").len(), 2);
    assert_eq!(store.machines(w.account).await.expect("m").len(), 2);

    // Creating an account twice is a conflict.
    let again = machine_row(w.account, "third");
    let err = store
        .create_account(w.account, &again)
        .await
        .expect_err("dup");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    // A browser is kept as one, beside the machines.
    let mut browser = machine_row(w.account, "browser-1");
    browser.kind = MachineKind::Browser;
    store.add_machine(&browser).await.expect("add browser");
    let read = store.machine(browser.id).await.expect("m").expect("exists");
    assert_eq!(read.kind, MachineKind::Browser);
    let kinds: Vec<_> = store
        .machines(w.account)
        .await
        .expect("m")
        .iter()
        .map(|m| (m.name.clone(), m.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("browser-1".to_string(), MachineKind::Browser),
            ("desktop".to_string(), MachineKind::Daemon),
            ("laptop".to_string(), MachineKind::Daemon),
        ]
    );

    // A machine for an account that does not exist.
    let orphan = machine_row(AccountId::new(), "orphan");
    let err = store.add_machine(&orphan).await.expect_err("no account");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");

    let providers = vec![ProviderInfo {
        name: "scripted".into(),
        installed: true,
        version: Some("1.0".into()),
        auth: AuthState::MachineLocal,
        handoff: HandoffSupport::Supported,
        version_check: VersionCheck::Untested,
    }];
    store
        .set_providers(w.laptop, &providers, 9_000)
        .await
        .expect("set providers");
    let laptop = store.machine(w.laptop).await.expect("m").expect("exists");
    assert_eq!(laptop.providers, providers);
    assert_eq!(laptop.last_seen, Some(9_000));
    assert_eq!(laptop.sign_pk, vec![1; 32]);
    assert_eq!(laptop.account_id, w.account);

    store.touch_machine(w.laptop, 9_500).await.expect("touch");
    let laptop = store.machine(w.laptop).await.expect("m").expect("exists");
    assert_eq!(laptop.last_seen, Some(9_500));
    assert_eq!(laptop.providers, providers, "touch keeps providers");

    let ghost = MachineId::new();
    assert!(store.machine(ghost).await.expect("m").is_none());
    let err = store.touch_machine(ghost, 1).await.expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    let err = store
        .set_providers(ghost, &[], 1)
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

pub async fn challenge_is_single_use(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    store
        .put_challenge(b"nonce-1", w.laptop, 10_000)
        .await
        .expect("put");
    assert_eq!(
        store.take_challenge(b"nonce-1", 9_999).await.expect("take"),
        Some(w.laptop)
    );
    assert_eq!(
        store.take_challenge(b"nonce-1", 9_999).await.expect("take"),
        None,
        "a nonce works once"
    );

    store
        .put_challenge(b"nonce-2", w.laptop, 10_000)
        .await
        .expect("put");
    assert_eq!(
        store
            .take_challenge(b"nonce-2", 10_000)
            .await
            .expect("take"),
        None,
        "expired at expires_at"
    );
    assert_eq!(
        store.take_challenge(b"unknown", 0).await.expect("take"),
        None
    );
}

pub async fn token_expires(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let row = TokenRow {
        machine_id: w.laptop,
        account_id: w.account,
        expires_at: 10_000,
    };
    store.put_token(b"hash-1", &row).await.expect("put");
    assert_eq!(
        store.token(b"hash-1", 9_999).await.expect("t"),
        Some(row.clone())
    );
    assert_eq!(store.token(b"hash-1", 10_000).await.expect("t"), None);
    assert_eq!(store.token(b"hash-2", 0).await.expect("t"), None);

    // A token can only name a machine of its own account.
    let other = world(store.clone()).await;
    let forged = TokenRow {
        machine_id: other.laptop,
        account_id: w.account,
        expires_at: 10_000,
    };
    let err = store.put_token(b"hash-3", &forged).await.expect_err("bad");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

pub async fn purge_removes_only_expired_credentials(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let token = |expires_at| TokenRow {
        machine_id: w.laptop,
        account_id: w.account,
        expires_at,
    };
    store.put_token(b"old", &token(1_000)).await.expect("put");
    store.put_token(b"new", &token(50_000)).await.expect("put");
    store
        .put_challenge(b"old-nonce", w.laptop, 1_000)
        .await
        .expect("put");
    store
        .put_challenge(b"new-nonce", w.laptop, 50_000)
        .await
        .expect("put");
    for (id, expires_at) in [("pair-old", 1_000), ("pair-new", 50_000)] {
        store
            .put_pairing(&PairingRow {
                id: id.into(),
                account_id: w.account,
                sealed_secret: Sealed(vec![1, 2, 3]),
                expires_at,
            })
            .await
            .expect("put");
    }
    // Everything that expired at or before `now` goes, nothing else.
    assert_eq!(store.purge_expired(1_000).await.expect("purge"), 3);
    assert_eq!(store.purge_expired(1_000).await.expect("purge"), 0);
    assert!(store.token(b"new", 2_000).await.expect("t").is_some());
    assert_eq!(
        store.take_challenge(b"new-nonce", 2_000).await.expect("c"),
        Some(w.laptop)
    );
    assert!(store.claim_pairing("pair-new", 2_000).await.is_ok());
    assert!(matches!(
        store.claim_pairing("pair-old", 0).await,
        Err(StoreError::PairingInvalid)
    ));
}

pub async fn pairing_is_single_use_and_expires(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let row = PairingRow {
        id: "pair-1".into(),
        account_id: w.account,
        sealed_secret: sealed("secret"),
        expires_at: 10_000,
    };
    store.put_pairing(&row).await.expect("put");
    assert_eq!(
        store.claim_pairing("pair-1", 9_999).await.expect("claim"),
        row
    );
    let err = store
        .claim_pairing("pair-1", 9_999)
        .await
        .expect_err("used");
    assert!(matches!(err, StoreError::PairingInvalid), "{err:?}");

    let expired = PairingRow {
        id: "pair-2".into(),
        ..row.clone()
    };
    store.put_pairing(&expired).await.expect("put");
    let err = store
        .claim_pairing("pair-2", 10_000)
        .await
        .expect_err("expired");
    assert!(matches!(err, StoreError::PairingInvalid), "{err:?}");
    let err = store.claim_pairing("pair-2", 0).await.expect_err("gone");
    assert!(matches!(err, StoreError::PairingInvalid), "{err:?}");

    let err = store.claim_pairing("nope", 0).await.expect_err("unknown");
    assert!(matches!(err, StoreError::PairingInvalid), "{err:?}");
}

// ---- sessions ----

pub async fn sessions_are_scoped_by_account(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let other = world(store.clone()).await;
    let older = new_session(&w).await;
    let newer = session_record(w.laptop, 2_500);
    store
        .create_session(w.account, &newer)
        .await
        .expect("create");

    let listed = store.sessions(w.account).await.expect("list");
    assert_eq!(listed, vec![newer.clone(), older.clone()], "newest first");
    assert!(
        store
            .sessions(other.account)
            .await
            .expect("list")
            .is_empty()
    );

    assert_eq!(
        store.session(w.account, older.id).await.expect("s"),
        Some(older.clone())
    );
    assert_eq!(
        store.session(other.account, older.id).await.expect("s"),
        None
    );
    assert_eq!(
        store.session_any(older.id).await.expect("s"),
        Some((w.account, older.clone()))
    );
    assert_eq!(store.session_any(SessionId::new()).await.expect("s"), None);

    let err = store
        .set_status(other.account, older.id, SessionStatus::Stopped, 1)
        .await
        .expect_err("other account");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");

    let err = store
        .create_session(w.account, &older)
        .await
        .expect_err("dup");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    // A session cannot be owned by another account's machine.
    let foreign = session_record(other.laptop, 1);
    let err = store
        .create_session(w.account, &foreign)
        .await
        .expect_err("foreign owner");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");

    let h = handoff_record(&older, w.laptop, w.desktop, 1);
    store.begin_handoff(&h).await.expect("begin");
    assert_eq!(
        store.handoff(w.account, h.id).await.expect("h"),
        Some(h.clone())
    );
    assert_eq!(store.handoff(other.account, h.id).await.expect("h"), None);
}

pub async fn update_meta_and_status(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    let updated = store
        .update_meta(s.id, w.laptop, 1, &sealed("meta-2"), 8_000)
        .await
        .expect("owner updates");
    assert_eq!(updated.sealed_meta, sealed("meta-2"));
    assert_eq!(updated.updated_at, 8_000);
    assert_eq!(session_of(&w, s.id).await, updated);

    let err = store
        .update_meta(s.id, w.desktop, 1, &sealed("x"), 8_001)
        .await
        .expect_err("not owner");
    assert!(
        matches!(err, StoreError::StaleEpoch { current: 1 }),
        "{err:?}"
    );
    let err = store
        .update_meta(s.id, w.laptop, 2, &sealed("x"), 8_001)
        .await
        .expect_err("wrong epoch");
    assert!(
        matches!(err, StoreError::StaleEpoch { current: 1 }),
        "{err:?}"
    );
    let err = store
        .update_meta(SessionId::new(), w.laptop, 1, &sealed("x"), 8_001)
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert_eq!(session_of(&w, s.id).await.sealed_meta, sealed("meta-2"));

    let stopped = store
        .set_status(w.account, s.id, SessionStatus::Stopped, 8_100)
        .await
        .expect("stop");
    assert_eq!(stopped.status, SessionStatus::Stopped);
    assert_eq!(session_of(&w, s.id).await.status, SessionStatus::Stopped);
}

// ---- transcript ----

pub async fn append_keeps_seq_dense(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    let a = append(
        &w,
        &s,
        w.laptop,
        1,
        vec![entry(1, None), entry(2, None), entry(3, None)],
        Some(SessionStatus::Running),
    );
    let (after, stored) = store.append_entries(&a).await.expect("append 1..=3");
    assert_eq!(after.last_seq, 3);
    assert_eq!(after.status, SessionStatus::Running);
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|e| e.epoch == 1 && e.created_at == 5_000));
    assert_eq!(session_of(&w, s.id).await, after);

    for (bad, why) in [
        (vec![entry(5, None)], "gap"),
        (vec![entry(3, None)], "repeat"),
        (vec![entry(1, None)], "rewind"),
        (vec![entry(4, None), entry(6, None)], "gap inside the batch"),
        (
            vec![entry(4, None), entry(4, None)],
            "repeat inside the batch",
        ),
    ] {
        let err = store
            .append_entries(&append(&w, &s, w.laptop, 1, bad, Some(SessionStatus::Idle)))
            .await
            .expect_err(why);
        assert!(
            matches!(err, StoreError::SeqConflict { last_seq: 3 }),
            "{why}: {err:?}"
        );
    }
    let now = session_of(&w, s.id).await;
    assert_eq!(now.last_seq, 3, "refused batches leave nothing");
    assert_eq!(now.status, SessionStatus::Running, "nor a status change");
    assert_eq!(store.entries(s.id, 0, 100).await.expect("entries").len(), 3);

    let (after, _) = store
        .append_entries(&append(&w, &s, w.laptop, 1, vec![entry(4, None)], None))
        .await
        .expect("append 4");
    assert_eq!(after.last_seq, 4);
    assert_eq!(
        after.status,
        SessionStatus::Running,
        "no status given: unchanged"
    );

    let all = store.entries(s.id, 0, 100).await.expect("entries");
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(all[1].sealed, sealed("entry-2"));
    let page: Vec<u64> = store
        .entries(s.id, 1, 2)
        .await
        .expect("page")
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(page, [2, 3]);
    assert!(store.entries(s.id, 4, 10).await.expect("tail").is_empty());
    assert!(
        store
            .entries(s.id, u64::MAX, 10)
            .await
            .expect("far")
            .is_empty()
    );

    let err = store
        .append_entries(&AppendEntries {
            session_id: SessionId::new(),
            ..append(&w, &s, w.laptop, 1, vec![entry(1, None)], None)
        })
        .await
        .expect_err("unknown session");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");

    // Another account's machine learns nothing, not even the epoch: NotFound comes first.
    let other = world(store.clone()).await;
    let err = store
        .append_entries(&AppendEntries {
            account: other.account,
            machine_id: other.laptop,
            ..append(&w, &s, w.laptop, 1, vec![entry(1, None)], None)
        })
        .await
        .expect_err("other account");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

pub async fn append_refuses_stale_epoch(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    let err = store
        .append_entries(&append(&w, &s, w.desktop, 1, vec![entry(1, None)], None))
        .await
        .expect_err("not owner");
    assert!(
        matches!(err, StoreError::StaleEpoch { current: 1 }),
        "{err:?}"
    );
    let err = store
        .append_entries(&append(&w, &s, w.laptop, 0, vec![entry(1, None)], None))
        .await
        .expect_err("old epoch");
    assert!(
        matches!(err, StoreError::StaleEpoch { current: 1 }),
        "{err:?}"
    );
    let err = store
        .append_entries(&append(&w, &s, w.laptop, 2, vec![entry(1, None)], None))
        .await
        .expect_err("future epoch");
    assert!(
        matches!(err, StoreError::StaleEpoch { current: 1 }),
        "{err:?}"
    );
    assert_eq!(session_of(&w, s.id).await.last_seq, 0);
}

/// The refusals come in the documented order when several apply at once.
pub async fn append_check_order(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    let input = InputId::new();
    store
        .enqueue_input(s.id, input, &sealed("hi"), 1)
        .await
        .expect("enqueue");
    started_handoff(&w, &s).await;

    // Stale epoch beats handing off and seq conflict.
    let err = store
        .append_entries(&append(
            &w,
            &s,
            w.desktop,
            1,
            vec![entry(9, Some(input))],
            None,
        ))
        .await
        .expect_err("stale");
    assert!(matches!(err, StoreError::StaleEpoch { .. }), "{err:?}");
    // Handing off beats seq conflict.
    let err = store
        .append_entries(&append(
            &w,
            &s,
            w.laptop,
            1,
            vec![entry(9, Some(input))],
            None,
        ))
        .await
        .expect_err("handing off");
    assert!(matches!(err, StoreError::HandingOff), "{err:?}");
    // Seq conflict beats an unknown input (checked without the handoff in the way).
    let s2 = new_session(&w).await;
    let err = store
        .append_entries(&append(
            &w,
            &s2,
            w.laptop,
            1,
            vec![entry(2, Some(InputId::new()))],
            None,
        ))
        .await
        .expect_err("seq");
    assert!(
        matches!(err, StoreError::SeqConflict { last_seq: 0 }),
        "{err:?}"
    );
}

// ---- input queue ----

pub async fn input_is_consumed_exactly_once(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    let (a, b) = (InputId::new(), InputId::new());
    store
        .enqueue_input(s.id, a, &sealed("a"), 1)
        .await
        .expect("a");
    store
        .enqueue_input(s.id, b, &sealed("b"), 2)
        .await
        .expect("b");

    store
        .append_entries(&append(
            &w,
            &s,
            w.laptop,
            1,
            vec![entry(1, Some(a)), entry(2, None)],
            None,
        ))
        .await
        .expect("consume a");
    let pending = store.pending_inputs(s.id).await.expect("pending");
    assert_eq!(pending.iter().map(|i| i.id).collect::<Vec<_>>(), [b]);
    let consumed = store.input(s.id, a).await.expect("input").expect("exists");
    assert!(consumed.consumed);
    assert_eq!(consumed.consumed_seq, Some(1));
    let stored = store.entries(s.id, 0, 10).await.expect("entries");
    assert_eq!(stored[0].input_id, Some(a));
    assert_eq!(stored[1].input_id, None);

    let err = store
        .append_entries(&append(&w, &s, w.laptop, 1, vec![entry(3, Some(a))], None))
        .await
        .expect_err("consumed twice");
    assert!(matches!(err, StoreError::DuplicateInput), "{err:?}");
    let err = store
        .append_entries(&append(
            &w,
            &s,
            w.laptop,
            1,
            vec![entry(3, Some(InputId::new()))],
            None,
        ))
        .await
        .expect_err("unknown input");
    assert!(matches!(err, StoreError::DuplicateInput), "{err:?}");
    // b twice in one batch: the whole batch is refused, b stays pending.
    let err = store
        .append_entries(&append(
            &w,
            &s,
            w.laptop,
            1,
            vec![entry(3, Some(b)), entry(4, Some(b))],
            None,
        ))
        .await
        .expect_err("twice in a batch");
    assert!(matches!(err, StoreError::DuplicateInput), "{err:?}");
    // An input of another session cannot be consumed here.
    let other = new_session(&w).await;
    let c = InputId::new();
    store
        .enqueue_input(other.id, c, &sealed("c"), 3)
        .await
        .expect("c");
    let err = store
        .append_entries(&append(&w, &s, w.laptop, 1, vec![entry(3, Some(c))], None))
        .await
        .expect_err("other session's input");
    assert!(matches!(err, StoreError::DuplicateInput), "{err:?}");

    assert_eq!(
        session_of(&w, s.id).await.last_seq,
        2,
        "refusals stored nothing"
    );
    assert_eq!(store.entries(s.id, 0, 10).await.expect("entries").len(), 2);
    let b_now = store.input(s.id, b).await.expect("input").expect("exists");
    assert!(
        !b_now.consumed && b_now.consumed_seq.is_none(),
        "rolled back"
    );
    assert_eq!(store.pending_inputs(other.id).await.expect("p").len(), 1);

    store
        .append_entries(&append(&w, &s, w.laptop, 1, vec![entry(3, Some(b))], None))
        .await
        .expect("consume b");
    assert!(
        store
            .pending_inputs(s.id)
            .await
            .expect("pending")
            .is_empty()
    );
}

pub async fn enqueue_is_idempotent_and_ordered(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    let ids: Vec<InputId> = (0..5).map(|_| InputId::new()).collect();
    let mut orders = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (rec, new) = store
            .enqueue_input(s.id, *id, &sealed(&format!("m{i}")), 100 + i as i64)
            .await
            .expect("enqueue");
        assert!(new);
        assert_eq!(rec.session_id, s.id);
        assert!(!rec.consumed);
        assert_eq!(store.input(s.id, *id).await.expect("i"), Some(rec.clone()));
        orders.push(rec.order);
    }
    assert!(orders.windows(2).all(|p| p[0] < p[1]), "{orders:?}");

    let first = store.input(s.id, ids[0]).await.expect("i").expect("exists");
    let (again, new) = store
        .enqueue_input(s.id, ids[0], &sealed("resent with other bytes"), 999)
        .await
        .expect("repeat");
    assert!(!new, "a repeat is not new");
    assert_eq!(again, first, "a repeat returns the stored record");

    let pending: Vec<InputId> = store
        .pending_inputs(s.id)
        .await
        .expect("pending")
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(pending, ids, "pending in arrival order, no duplicate");

    // After a repeat the next order still grows.
    let (late, _) = store
        .enqueue_input(s.id, InputId::new(), &sealed("late"), 200)
        .await
        .expect("late");
    assert!(late.order > orders[4]);

    let err = store
        .enqueue_input(SessionId::new(), InputId::new(), &sealed("x"), 1)
        .await
        .expect_err("unknown session");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert_eq!(store.input(s.id, InputId::new()).await.expect("i"), None);
}

pub async fn concurrent_enqueue_of_one_input(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    let (sid, id) = (s.id, InputId::new());
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .enqueue_input(sid, id, &sealed(&format!("try {i}")), i)
                .await
                .expect("enqueue")
        }));
    }
    let mut fresh = 0;
    let mut records = BTreeSet::new();
    for t in tasks {
        let (rec, new) = t.await.expect("task");
        fresh += usize::from(new);
        records.insert((rec.order, rec.sealed.0.clone()));
    }
    assert_eq!(fresh, 1, "stored exactly once");
    assert_eq!(records.len(), 1, "everyone sees the same stored record");
    assert_eq!(store.pending_inputs(s.id).await.expect("p").len(), 1);
}

// ---- handoffs ----

pub async fn handing_off_refuses_input_entries(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    store
        .append_entries(&append(
            &w,
            &s,
            w.laptop,
            1,
            vec![],
            Some(SessionStatus::Running),
        ))
        .await
        .expect("running");
    let input = InputId::new();
    store
        .enqueue_input(s.id, input, &sealed("q"), 1)
        .await
        .expect("q");

    let h = handoff_record(&s, w.laptop, w.desktop, 1);
    store.begin_handoff(&h).await.expect("begin");
    let before = store.begin_quiesce(s.id, 1, 4_000).await.expect("quiesce");
    assert_eq!(before, SessionStatus::Running);
    let now = session_of(&w, s.id).await;
    assert_eq!(now.status, SessionStatus::HandingOff);
    assert_eq!(now.updated_at, 4_000);

    let err = store
        .append_entries(&append(
            &w,
            &s,
            w.laptop,
            1,
            vec![entry(1, Some(input))],
            None,
        ))
        .await
        .expect_err("input while handing off");
    assert!(matches!(err, StoreError::HandingOff), "{err:?}");
    assert_eq!(
        store.pending_inputs(s.id).await.expect("p").len(),
        1,
        "stays queued"
    );

    // The source flushes its last turn: entries without input are fine, and the status it
    // reports does not overwrite handing_off.
    let (after, _) = store
        .append_entries(&append(
            &w,
            &s,
            w.laptop,
            1,
            vec![entry(1, None), entry(2, None)],
            Some(SessionStatus::Idle),
        ))
        .await
        .expect("flush");
    assert_eq!(after.last_seq, 2);
    assert_eq!(after.status, SessionStatus::HandingOff);
    assert_eq!(session_of(&w, s.id).await.status, SessionStatus::HandingOff);

    let err = store.begin_quiesce(s.id, 0, 1).await.expect_err("stale");
    assert!(
        matches!(err, StoreError::StaleEpoch { current: 1 }),
        "{err:?}"
    );
    let err = store
        .begin_quiesce(SessionId::new(), 1, 1)
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

pub async fn one_active_handoff(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    let h1 = handoff_record(&s, w.laptop, w.desktop, 1);
    store.begin_handoff(&h1).await.expect("first");
    assert_eq!(session_of(&w, s.id).await.active_handoff, Some(h1.id));

    let h2 = handoff_record(&s, w.laptop, w.desktop, 1);
    let err = store.begin_handoff(&h2).await.expect_err("second");
    assert!(matches!(err, StoreError::HandoffInProgress), "{err:?}");
    assert_eq!(
        store.handoff(w.account, h2.id).await.expect("h"),
        None,
        "not recorded"
    );
    let err = store
        .set_status(w.account, s.id, SessionStatus::Stopped, 1)
        .await
        .expect_err("status during handoff");
    assert!(matches!(err, StoreError::HandoffInProgress), "{err:?}");

    // Two handoffs racing for a fresh session: exactly one wins.
    let s2 = new_session(&w).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let store = store.clone();
        let h = handoff_record(&s2, w.laptop, w.desktop, 1);
        tasks.push(tokio::spawn(async move { store.begin_handoff(&h).await }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => won += 1,
            Err(StoreError::HandoffInProgress) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(store.handoffs(s2.id).await.expect("list").len(), 1);

    store
        .abort_handoff(&abort_of(&h1), SessionStatus::Idle)
        .await
        .expect("abort");
    assert_eq!(session_of(&w, s.id).await.active_handoff, None);
    store
        .begin_handoff(&h2)
        .await
        .expect("after abort a new one may start");

    let err = store
        .begin_handoff(&handoff_record(
            &session_record(w.laptop, 1),
            w.laptop,
            w.desktop,
            1,
        ))
        .await
        .expect_err("unknown session");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

pub async fn commit_moves_owner_and_fences_old_epoch(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    store
        .append_entries(&append(&w, &s, w.laptop, 1, vec![entry(1, None)], None))
        .await
        .expect("append");
    let h = started_handoff(&w, &s).await;
    let c = commit_of(&h);
    let after = store.commit_handoff(&c).await.expect("commit");
    assert_eq!(after.owner, w.desktop);
    assert_eq!(after.epoch, 2);
    assert_eq!(after.status, SessionStatus::Idle);
    assert_eq!(after.sealed_meta, sealed("meta-on-desktop"));
    assert_eq!(after.active_handoff, Some(h.id), "set until finish");
    assert_eq!(after.last_seq, 1);
    assert_eq!(session_of(&w, s.id).await, after);

    let rec = handoff_of(&w, h.id).await;
    assert_eq!(rec.result, HandoffResult::Committed);
    assert_eq!(rec.phase, HandoffPhase::Commit);
    assert_eq!(rec.phases, c.phases);
    assert_eq!(rec.bytes, 4_242);
    assert_eq!(rec.updated_at, 6_000);

    // The old owner is fenced everywhere.
    let err = store
        .append_entries(&append(&w, &s, w.laptop, 1, vec![entry(2, None)], None))
        .await
        .expect_err("old owner");
    assert!(
        matches!(err, StoreError::StaleEpoch { current: 2 }),
        "{err:?}"
    );
    let err = store
        .update_meta(s.id, w.laptop, 1, &sealed("x"), 1)
        .await
        .expect_err("old owner meta");
    assert!(
        matches!(err, StoreError::StaleEpoch { current: 2 }),
        "{err:?}"
    );
    let (next, stored) = store
        .append_entries(&append(&w, &s, w.desktop, 2, vec![entry(2, None)], None))
        .await
        .expect("new owner appends");
    assert_eq!(next.last_seq, 2);
    assert_eq!(stored[0].epoch, 2);

    // A retried commit (answer lost) is a success that changes nothing.
    let again = store.commit_handoff(&c).await.expect("retry");
    assert_eq!(again.epoch, 2);
    assert_eq!(again.owner, w.desktop);
    // Abort cannot undo a commit.
    let err = store
        .abort_handoff(&abort_of(&h), SessionStatus::Idle)
        .await
        .expect_err("abort after commit");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(handoff_of(&w, h.id).await.result, HandoffResult::Committed);

    let phases = vec![
        phase(HandoffPhase::Activate, true),
        phase(HandoffPhase::Done, true),
    ];
    let done = store
        .finish_handoff(h.id, HandoffPhase::Done, &phases, None, 6_500)
        .await
        .expect("finish");
    assert_eq!(done.active_handoff, None);
    assert_eq!(done.status, SessionStatus::Idle);
    let rec = handoff_of(&w, h.id).await;
    assert_eq!(rec.phase, HandoffPhase::Done);
    assert_eq!(rec.phases, phases);
    assert_eq!(rec.error, None);
    assert_eq!(rec.duration_ms(), Some(6_500 - 3_000));

    let err = store
        .commit_handoff(&CommitHandoff {
            handoff_id: HandoffId::new(),
            ..c
        })
        .await
        .expect_err("unknown handoff");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

pub async fn commit_refused_when_epoch_or_owner_moved(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    let first = started_handoff(&w, &s).await;
    store
        .commit_handoff(&commit_of(&first))
        .await
        .expect("commit");
    store
        .finish_handoff(first.id, HandoffPhase::Done, &[], None, 6_100)
        .await
        .expect("finish");

    // A handoff recorded against epoch 1 (a coordinator that raced) cannot commit at epoch 2.
    let stale = handoff_record(&s, w.laptop, w.desktop, 1);
    store.begin_handoff(&stale).await.expect("begin");
    let err = store
        .commit_handoff(&commit_of(&stale))
        .await
        .expect_err("epoch moved");
    assert!(
        matches!(err, StoreError::StaleEpoch { current: 2 }),
        "{err:?}"
    );
    let now = session_of(&w, s.id).await;
    assert_eq!((now.owner, now.epoch), (w.desktop, 2), "nothing moved");
    assert_eq!(now.sealed_meta, sealed("meta-on-desktop"));
    assert_eq!(handoff_of(&w, stale.id).await.result, HandoffResult::Active);
    store
        .abort_handoff(&abort_of(&stale), SessionStatus::Idle)
        .await
        .expect("abort");
    let err = store
        .commit_handoff(&commit_of(&stale))
        .await
        .expect_err("aborted cannot commit");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    // Right epoch, wrong owner.
    let wrong_owner = handoff_record(&s, w.laptop, w.desktop, 2);
    store.begin_handoff(&wrong_owner).await.expect("begin");
    let err = store
        .commit_handoff(&commit_of(&wrong_owner))
        .await
        .expect_err("owner moved");
    assert!(
        matches!(err, StoreError::StaleEpoch { current: 2 }),
        "{err:?}"
    );
    assert_eq!(session_of(&w, s.id).await.epoch, 2);

    // Handoff to a machine of another account never commits (the owner must be in the account).
    store
        .abort_handoff(&abort_of(&wrong_owner), SessionStatus::Idle)
        .await
        .expect("abort");
    let other = world(store.clone()).await;
    let foreign = handoff_record(&s, w.desktop, other.desktop, 2);
    store.begin_handoff(&foreign).await.expect("begin");
    let err = store
        .commit_handoff(&commit_of(&foreign))
        .await
        .expect_err("foreign target");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    let now = session_of(&w, s.id).await;
    assert_eq!((now.owner, now.epoch), (w.desktop, 2));
}

pub async fn abort_after_restart_restores_the_recorded_status(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    store
        .set_status(w.account, s.id, SessionStatus::Stopped, 3_000)
        .await
        .expect("stopped");
    let h = handoff_record(&s, w.laptop, w.desktop, 1);
    store.begin_handoff(&h).await.expect("begin");
    let before = store.begin_quiesce(s.id, 1, 4_000).await.expect("quiesce");
    assert_eq!(before, SessionStatus::Stopped);
    // A restarted coordinator does not know `before` and passes a guess: the record wins.
    let after = store
        .abort_handoff(&abort_of(&h), SessionStatus::Idle)
        .await
        .expect("abort");
    assert_eq!(after.status, SessionStatus::Stopped, "the recorded status");
    assert_eq!(after.active_handoff, None);
    // A handoff that never quiesced leaves the status as it was.
    let h2 = handoff_record(&s, w.laptop, w.desktop, 1);
    store.begin_handoff(&h2).await.expect("begin");
    let after = store
        .abort_handoff(&abort_of(&h2), SessionStatus::Idle)
        .await
        .expect("abort");
    assert_eq!(
        after.status,
        SessionStatus::Stopped,
        "untouched: never handing_off"
    );
}

pub async fn abort_restores_status_and_keeps_owner(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    store
        .append_entries(&append(
            &w,
            &s,
            w.laptop,
            1,
            vec![],
            Some(SessionStatus::Running),
        ))
        .await
        .expect("running");
    let h = handoff_record(&s, w.laptop, w.desktop, 1);
    store.begin_handoff(&h).await.expect("begin");
    let before = store.begin_quiesce(s.id, 1, 4_000).await.expect("quiesce");
    assert_eq!(before, SessionStatus::Running);

    let a = abort_of(&h);
    let after = store.abort_handoff(&a, before).await.expect("abort");
    assert_eq!(after.status, SessionStatus::Running, "restored");
    assert_eq!(
        (after.owner, after.epoch),
        (w.laptop, 1),
        "owner and epoch untouched"
    );
    assert_eq!(after.active_handoff, None);
    assert_eq!(after.sealed_meta, s.sealed_meta);
    assert_eq!(session_of(&w, s.id).await, after);

    let rec = handoff_of(&w, h.id).await;
    assert_eq!(rec.result, HandoffResult::Aborted);
    assert_eq!(rec.error, Some(a.error.clone()));
    assert_eq!(rec.phases, a.phases);
    assert_eq!(rec.updated_at, 7_000);

    // A repeated abort changes nothing.
    let again = store
        .abort_handoff(&a, SessionStatus::Stopped)
        .await
        .expect("repeat");
    assert_eq!(again.status, SessionStatus::Running);

    // The source keeps writing at its epoch.
    store
        .append_entries(&append(&w, &s, w.laptop, 1, vec![entry(1, None)], None))
        .await
        .expect("source resumes");

    // An abort before quiesce leaves the status as it is.
    let h2 = handoff_record(&s, w.laptop, w.desktop, 1);
    store.begin_handoff(&h2).await.expect("begin");
    let after = store
        .abort_handoff(&abort_of(&h2), SessionStatus::Stopped)
        .await
        .expect("abort");
    assert_eq!(
        after.status,
        SessionStatus::Running,
        "not handing_off: not restored"
    );

    let err = store
        .abort_handoff(
            &AbortHandoff {
                handoff_id: HandoffId::new(),
                ..a
            },
            SessionStatus::Idle,
        )
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

pub async fn finish_with_error_stops_session(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    let h = started_handoff(&w, &s).await;

    let err = store
        .finish_handoff(h.id, HandoffPhase::Done, &[], None, 1)
        .await
        .expect_err("not committed yet");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(session_of(&w, s.id).await.active_handoff, Some(h.id));

    store.commit_handoff(&commit_of(&h)).await.expect("commit");
    let error = ApiError::new(ErrorCode::ActivateFailed, "Provider would not start.");
    let phases = vec![phase(HandoffPhase::Activate, false)];
    let after = store
        .finish_handoff(h.id, HandoffPhase::Activate, &phases, Some(&error), 6_600)
        .await
        .expect("finish with error");
    assert_eq!(after.status, SessionStatus::Stopped);
    assert_eq!(
        (after.owner, after.epoch),
        (w.desktop, 2),
        "the target keeps it"
    );
    assert_eq!(after.active_handoff, None);
    let rec = handoff_of(&w, h.id).await;
    assert_eq!(rec.error, Some(error));
    assert_eq!(rec.phase, HandoffPhase::Activate);
    assert_eq!(rec.result, HandoffResult::Committed);

    // The user resumes it; a repeated finish must not stop it again.
    store
        .set_status(w.account, s.id, SessionStatus::Idle, 6_700)
        .await
        .expect("resume");
    let err2 = ApiError::new(ErrorCode::ActivateFailed, "again");
    let again = store
        .finish_handoff(h.id, HandoffPhase::Activate, &phases, Some(&err2), 6_800)
        .await
        .expect("repeat");
    assert_eq!(again.status, SessionStatus::Idle);
}

pub async fn unfinished_handoffs_for_restart(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let other = world(store.clone()).await;
    let mine: BTreeSet<HandoffId> = store
        .unfinished_handoffs()
        .await
        .expect("list")
        .iter()
        .map(|(_, h)| h.id)
        .collect();

    let s1 = new_session(&w).await;
    let active = started_handoff(&w, &s1).await;

    let s2 = new_session(&w).await;
    let committed = started_handoff(&w, &s2).await;
    store
        .commit_handoff(&commit_of(&committed))
        .await
        .expect("commit");

    let s3 = new_session(&w).await;
    let finished = started_handoff(&w, &s3).await;
    store
        .commit_handoff(&commit_of(&finished))
        .await
        .expect("commit");
    store
        .finish_handoff(finished.id, HandoffPhase::Done, &[], None, 1)
        .await
        .expect("finish");

    let s4 = new_session(&w).await;
    let aborted = started_handoff(&w, &s4).await;
    store
        .abort_handoff(&abort_of(&aborted), SessionStatus::Idle)
        .await
        .expect("abort");

    let o1 = new_session(&other).await;
    let theirs = started_handoff(&other, &o1).await;

    let found: Vec<(AccountId, HandoffRecord)> = store
        .unfinished_handoffs()
        .await
        .expect("list")
        .into_iter()
        .filter(|(_, h)| !mine.contains(&h.id))
        .collect();
    let ids: BTreeSet<(AccountId, HandoffId)> = found.iter().map(|(a, h)| (*a, h.id)).collect();
    let want: BTreeSet<(AccountId, HandoffId)> = [
        (w.account, active.id),
        (w.account, committed.id),
        (other.account, theirs.id),
    ]
    .into();
    assert_eq!(ids, want);
    let committed_rec = found
        .iter()
        .find(|(_, h)| h.id == committed.id)
        .map(|(_, h)| h.clone())
        .expect("committed listed");
    assert_eq!(committed_rec.result, HandoffResult::Committed);
}

pub async fn handoff_records_round_trip(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    let mut h = handoff_record(&s, w.laptop, w.desktop, 1);
    h.sealed_options = None;
    h.options = HandoffOptions::default();
    store.begin_handoff(&h).await.expect("begin");
    assert_eq!(handoff_of(&w, h.id).await, h);

    h.phase = HandoffPhase::Transfer;
    h.phases.push(phase(HandoffPhase::Preflight, true));
    h.bytes = 1 << 40;
    h.updated_at = 3_500;
    store.update_handoff(&h).await.expect("update");
    assert_eq!(handoff_of(&w, h.id).await, h);
    // The workspace report is stored as the target sealed it.
    h.workspace = Some(sealed("workspace outcome"));
    h.plan = Some(sealed("workspace plan"));
    store
        .update_handoff(&h)
        .await
        .expect("update with workspace");
    assert_eq!(handoff_of(&w, h.id).await, h);

    let err = store
        .update_handoff(&HandoffRecord {
            id: HandoffId::new(),
            ..h.clone()
        })
        .await
        .expect_err("unknown");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");

    store
        .abort_handoff(&abort_of(&h), SessionStatus::Idle)
        .await
        .expect("abort");
    let mut second = handoff_record(&s, w.laptop, w.desktop, 1);
    second.created_at = 3_100;
    store.begin_handoff(&second).await.expect("second");
    let listed: Vec<HandoffId> = store
        .handoffs(s.id)
        .await
        .expect("list")
        .iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(listed, [h.id, second.id], "oldest first");
    assert!(
        store
            .handoffs(SessionId::new())
            .await
            .expect("none")
            .is_empty()
    );
}

pub async fn bundles(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    let h = handoff_record(&s, w.laptop, w.desktop, 1);
    store.begin_handoff(&h).await.expect("begin");
    assert_eq!(store.bundle(h.id).await.expect("b"), None);
    store.put_bundle(h.id, b"first").await.expect("put");
    assert_eq!(
        store.bundle(h.id).await.expect("b"),
        Some(b"first".to_vec())
    );
    let big = vec![7u8; 3 * 1024 * 1024];
    store.put_bundle(h.id, &big).await.expect("replace");
    assert_eq!(store.bundle(h.id).await.expect("b"), Some(big));
    store.delete_bundle(h.id).await.expect("delete");
    assert_eq!(store.bundle(h.id).await.expect("b"), None);
    store
        .delete_bundle(h.id)
        .await
        .expect("delete is idempotent");
    let err = store
        .put_bundle(HandoffId::new(), b"x")
        .await
        .expect_err("unknown handoff");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

/// Many writers race for the next seq; the store must serialise them so the transcript ends up
/// exactly 1..=N with every writer's entries present once.
pub async fn concurrent_appends_never_gap_or_repeat(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const EACH: usize = 10;
    let w = world(store.clone()).await;
    let s = new_session(&w).await;
    let input_ids: Vec<InputId> = (0..TASKS).map(|_| InputId::new()).collect();
    for id in &input_ids {
        store
            .enqueue_input(s.id, *id, &sealed("in"), 1)
            .await
            .expect("enqueue");
    }
    let sid = s.id;
    let mut tasks = Vec::new();
    for (t, &input) in input_ids.iter().enumerate() {
        let store = store.clone();
        let laptop = w.laptop;
        let account = w.account;
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u32;
            for i in 0..EACH {
                loop {
                    let cur = store
                        .session_any(sid)
                        .await
                        .expect("read")
                        .expect("exists")
                        .1;
                    let e = NewEntry {
                        seq: cur.last_seq + 1,
                        // Each task's first entry consumes its own input.
                        input_id: (i == 0).then_some(input),
                        sealed: sealed(&format!("t{t}-e{i}")),
                    };
                    let a = AppendEntries {
                        account,
                        session_id: sid,
                        machine_id: laptop,
                        epoch: 1,
                        entries: vec![e],
                        status: None,
                        now: 5_000,
                    };
                    match store.append_entries(&a).await {
                        Ok(_) => break,
                        Err(StoreError::SeqConflict { .. }) => {
                            conflicts += 1;
                            tokio::task::yield_now().await;
                        }
                        Err(e) => panic!("task {t}: {e:?}"),
                    }
                }
            }
            conflicts
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let n = (TASKS * EACH) as u64;
    let all = store.entries(s.id, 0, 1_000).await.expect("entries");
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
    let bodies: BTreeSet<Vec<u8>> = all.iter().map(|e| e.sealed.0.clone()).collect();
    assert_eq!(bodies.len(), TASKS * EACH, "every append stored once");
    assert_eq!(session_of(&w, s.id).await.last_seq, n);
    assert!(store.pending_inputs(s.id).await.expect("p").is_empty());
    for id in input_ids {
        let rec = store.input(s.id, id).await.expect("i").expect("exists");
        let seq = rec.consumed_seq.expect("consumed");
        assert_eq!(all[(seq - 1) as usize].input_id, Some(id));
    }
}

// ---- commit and mode ----

/// The commit sets the session's mode: a Direct session becomes synced; an equal mode stays.
pub async fn commit_sets_mode(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let direct = SessionRecord {
        mode: SessionMode::Direct,
        ..session_record(w.laptop, 2_000)
    };
    store
        .create_session(w.account, &direct)
        .await
        .expect("create direct session");
    assert_eq!(session_of(&w, direct.id).await.mode, SessionMode::Direct);
    // Asked to become synced on the target; the option round-trips.
    let h = HandoffRecord {
        options: HandoffOptions {
            direct: DirectTarget::Sync,
            ..HandoffOptions::default()
        },
        ..handoff_record(&direct, w.laptop, w.desktop, 1)
    };
    store.begin_handoff(&h).await.expect("begin handoff");
    store
        .begin_quiesce(direct.id, 1, 4_000)
        .await
        .expect("quiesce");
    assert_eq!(handoff_of(&w, h.id).await.options, h.options);
    let c = CommitHandoff {
        mode: SessionMode::Synced,
        ..commit_of(&h)
    };
    let after = store.commit_handoff(&c).await.expect("commit");
    assert_eq!(after.mode, SessionMode::Synced);
    assert_eq!(after.owner, w.desktop);
    assert_eq!(after.epoch, 2);
    assert_eq!(session_of(&w, direct.id).await, after, "mode stored");

    // A retried commit changes nothing, whatever mode it carries.
    let again = store
        .commit_handoff(&CommitHandoff {
            mode: SessionMode::Direct,
            ..c
        })
        .await
        .expect("retry");
    assert_eq!(again.mode, SessionMode::Synced);
    assert_eq!(session_of(&w, direct.id).await.mode, SessionMode::Synced);

    // A synced session committed as synced stays synced.
    let synced = new_session(&w).await;
    let h = started_handoff(&w, &synced).await;
    let after = store.commit_handoff(&commit_of(&h)).await.expect("commit");
    assert_eq!(after.mode, SessionMode::Synced);
    assert_eq!(session_of(&w, synced.id).await, after);

    // A direct session committed as direct stays direct.
    let kept = SessionRecord {
        mode: SessionMode::Direct,
        ..session_record(w.laptop, 2_100)
    };
    store
        .create_session(w.account, &kept)
        .await
        .expect("create direct session");
    let h = started_handoff(&w, &kept).await;
    let after = store
        .commit_handoff(&CommitHandoff {
            mode: SessionMode::Direct,
            ..commit_of(&h)
        })
        .await
        .expect("commit");
    assert_eq!(after.mode, SessionMode::Direct);
    assert_eq!(session_of(&w, kept.id).await, after);
}

// ---- connected services ----

fn service(provider: &str, secret: &str, updated_at: i64) -> ServiceRecord {
    ServiceRecord {
        provider: provider.to_string(),
        sealed: sealed(secret),
        updated_at,
    }
}

pub async fn services_put_list_replace_delete(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    assert!(store.services(w.account).await.expect("list").is_empty());

    let codex = service("codex", "codex-key", 1_000);
    let claude = service("claude", "claude-key", 1_100);
    store
        .put_service(w.account, &codex)
        .await
        .expect("put codex");
    store
        .put_service(w.account, &claude)
        .await
        .expect("put claude");
    assert_eq!(
        store.services(w.account).await.expect("list"),
        vec![claude.clone(), codex.clone()],
        "ordered by provider"
    );

    // A put for the same provider replaces the stored one.
    let rotated = service("claude", "claude-key-2", 2_000);
    store
        .put_service(w.account, &rotated)
        .await
        .expect("replace claude");
    assert_eq!(
        store.services(w.account).await.expect("list"),
        vec![rotated.clone(), codex.clone()]
    );

    store
        .delete_service(w.account, "claude")
        .await
        .expect("delete claude");
    assert_eq!(
        store.services(w.account).await.expect("list"),
        vec![codex.clone()]
    );
    let err = store
        .delete_service(w.account, "claude")
        .await
        .expect_err("deleted twice");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    let err = store
        .delete_service(w.account, "opencode")
        .await
        .expect_err("never stored");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");

    // An account that does not exist cannot hold services.
    let nobody = AccountId::new();
    let err = store
        .put_service(nobody, &codex)
        .await
        .expect_err("unknown account");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert!(store.services(nobody).await.expect("list").is_empty());
    let err = store
        .delete_service(nobody, "codex")
        .await
        .expect_err("unknown account");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}

pub async fn services_are_scoped_by_account(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let other = world(store.clone()).await;
    let mine = service("claude", "mine", 1_000);
    store.put_service(w.account, &mine).await.expect("put");

    assert!(
        store
            .services(other.account)
            .await
            .expect("list")
            .is_empty(),
        "another account sees none"
    );
    let err = store
        .delete_service(other.account, "claude")
        .await
        .expect_err("another account's service");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert_eq!(
        store.services(w.account).await.expect("list"),
        vec![mine.clone()],
        "still there"
    );

    // The same provider name in another account is a separate row.
    let theirs = service("claude", "theirs", 1_500);
    store
        .put_service(other.account, &theirs)
        .await
        .expect("put");
    assert_eq!(
        store.services(w.account).await.expect("list"),
        vec![mine.clone()]
    );
    assert_eq!(
        store.services(other.account).await.expect("list"),
        vec![theirs.clone()]
    );
    store
        .delete_service(other.account, "claude")
        .await
        .expect("delete theirs");
    assert_eq!(
        store.services(w.account).await.expect("list"),
        vec![mine],
        "deleting theirs keeps mine"
    );
}

pub async fn settings_are_replaced_and_scoped_by_account(store: Arc<dyn Store>) {
    let w = world(store.clone()).await;
    let other = world(store.clone()).await;
    assert_eq!(
        store.setting(w.account, "handoff").await.expect("read"),
        None
    );
    let first = SettingRecord {
        name: "handoff".into(),
        sealed: Sealed(vec![1, 2, 3]),
        updated_at: 10,
    };
    store.put_setting(w.account, &first).await.expect("put");
    assert_eq!(
        store.setting(w.account, "handoff").await.expect("read"),
        Some(first.clone())
    );
    let second = SettingRecord {
        sealed: Sealed(vec![9; 40]),
        updated_at: 20,
        ..first.clone()
    };
    store
        .put_setting(w.account, &second)
        .await
        .expect("replace");
    assert_eq!(
        store.setting(w.account, "handoff").await.expect("read"),
        Some(second)
    );
    assert_eq!(
        store.setting(other.account, "handoff").await.expect("read"),
        None,
        "another account sees nothing"
    );
    assert_eq!(store.setting(w.account, "other").await.expect("read"), None);
    let err = store
        .put_setting(AccountId::new(), &first)
        .await
        .expect_err("no such account");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
}
