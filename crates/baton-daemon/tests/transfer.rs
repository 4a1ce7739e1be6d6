//! Workspace transfer through a real server on loopback: a source and a target, each with its own
//! authenticated client, move chunks end to end encrypted; resume after dropped sockets; refusals
//! of tampered frames, outsiders and transfers over the limits; bounded relay memory.

mod transfer_world;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use baton_daemon::client::{ClientError, WsStream};
use baton_daemon::transfer::{
    BlobFeed, Progress, ReceiveStats, Receiver, SourceStats, TransferError, TransferTuning,
    serve_source,
};
use baton_proto::transfer::{
    ChunksFrame, Frame, FrameKind, TransferNotice, TransferRole, decode, encode_want, frame_kind,
    transfer_ws_path,
};
use baton_proto::workspace::ContentHash;
use baton_proto::{
    ErrorCode, HandoffId, HandoffOptions, HandoffPhase, HandoffRecord, HandoffResult, Sealed,
    SessionId, SessionMode, SessionRecord, SessionStatus, now_millis,
};
use baton_server::TransferLimits;
use baton_server::transfer::TRANSFER_QUEUE;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use transfer_world::{
    Machine, MemSink, MemSource, Meter, World, bytes, cipher, name, refs, tree, tuning,
};

const LIMIT: Duration = Duration::from_secs(120);

fn limits() -> TransferLimits {
    TransferLimits::default()
}

struct Outcome {
    source: Result<SourceStats, TransferError>,
    target: Result<(Vec<u8>, ReceiveStats), TransferError>,
    progress: Vec<Progress>,
}

/// Runs a whole transfer a → b: the target fetches the blob, then the chunks, then finishes.
async fn run(
    world: &World,
    transfer: HandoffId,
    source: Arc<MemSource>,
    sink: Arc<MemSink>,
    chunks: &[Vec<u8>],
    blob: Vec<u8>,
    (source_tuning, target_tuning): (TransferTuning, TransferTuning),
) -> Outcome {
    let c = cipher(transfer);
    let source_conn = world.conn(world.m(0), transfer, source_tuning);
    let source_cipher = c.clone();
    let cancel = CancellationToken::new();
    let source_cancel = cancel.clone();
    let source_task = tokio::spawn(async move {
        let feed = BlobFeed::single(source_cipher.clone(), &blob)?;
        serve_source(&source_conn, source_cipher, source, feed, source_cancel).await
    });
    let target_conn = world.conn(world.m(1), transfer, target_tuning);
    let mut progress = Vec::new();
    let wanted = refs(chunks);
    let target = async {
        let mut receiver = Receiver::connect(target_conn, c, cancel.clone()).await?;
        let blob = receiver.blob(0).await?;
        let mut record = |p: Progress| progress.push(p);
        receiver.chunks(sink, wanted, &mut record).await?;
        let stats = receiver.finish().await?;
        Ok((blob, stats))
    };
    let target = tokio::time::timeout(LIMIT, target)
        .await
        .expect("the target finishes in time");
    // The source ends by itself (done, or told why the transfer ended); cancelling it is a
    // last resort, so a test sees the error the source would report.
    let mut source_task = source_task;
    let source = match tokio::time::timeout(Duration::from_secs(30), &mut source_task).await {
        Ok(joined) => joined.expect("the source task does not panic"),
        Err(_) => {
            cancel.cancel();
            tokio::time::timeout(LIMIT, source_task)
                .await
                .expect("the source stops when cancelled")
                .expect("the source task does not panic")
        }
    };
    Outcome {
        source,
        target,
        progress,
    }
}

fn tree_bytes(chunks: &[Vec<u8>]) -> u64 {
    chunks.iter().map(|c| c.len() as u64).sum()
}

/// Every chunk arrived once with its content; returns the put clock of each.
fn assert_all_arrived(chunks: &[Vec<u8>], sink: &MemSink) -> HashMap<ContentHash, u64> {
    let got = sink.got.lock().unwrap();
    let puts = sink.puts.lock().unwrap();
    let mut distinct = chunks.iter().map(|c| name(c)).collect::<Vec<_>>();
    distinct.sort();
    distinct.dedup();
    assert_eq!(got.len(), distinct.len(), "every distinct chunk arrived");
    for c in chunks {
        assert_eq!(got.get(&name(c)), Some(c), "content of {:?}", name(c));
    }
    let mut at = HashMap::new();
    for (clock, hash) in puts.iter() {
        assert!(at.insert(*hash, *clock).is_none(), "{hash:?} stored twice");
    }
    at
}

/// No chunk was read by the source after the sink had stored it.
fn assert_nothing_received_was_resent(source: &MemSource, put_at: &HashMap<ContentHash, u64>) {
    for (clock, hash) in source.reads.lock().unwrap().iter() {
        if let Some(stored) = put_at.get(hash) {
            assert!(
                clock < stored,
                "{hash:?} was read again (clock {clock}) after it was stored (clock {stored})"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_of_mixed_sizes_and_the_blob_arrive_verified() {
    let world = World::start(limits()).await;
    let transfer = world.allow_a_to_b();
    let mut chunks = tree(360, 40, 1);
    // The same content twice (two identical files): asked for and stored once.
    chunks.push(chunks[3].clone());
    let meter = Arc::new(Meter::default());
    let source = Arc::new(MemSource::new(&chunks, meter.clone()));
    let sink = Arc::new(MemSink::new(meter));
    // Several parts, the last one short.
    let blob = bytes(99, 3 * 1024 * 1024 + 17);
    let out = run(
        &world,
        transfer,
        source,
        sink.clone(),
        &chunks,
        blob.clone(),
        (tuning(), tuning()),
    )
    .await;
    let (got_blob, stats) = out.target.expect("the target succeeds");
    let sent = out.source.expect("the source succeeds");
    assert_eq!(got_blob, blob, "the manifest blob arrives whole");
    assert_all_arrived(&chunks, &sink);
    let total = tree_bytes(&chunks[..chunks.len() - 1]);
    assert_eq!(stats.chunks, chunks.len() as u64 - 1);
    assert_eq!(stats.bytes, total);
    assert_eq!(stats.blob_bytes, blob.len() as u64 + 29);
    assert_eq!(sent.bytes, total, "no chunk sent twice without a reconnect");
    assert_eq!(sent.chunks, stats.chunks);
    assert_eq!(stats.reconnects, 0);
    assert_eq!(stats.duplicates, 0);
    assert!(stats.gone.is_empty());
    assert!(
        stats.wire_bytes > total,
        "sealed frames are larger than the plaintext"
    );
    assert!(
        sent.wire_bytes < total + total / 50 + 4 * 1024 * 1024,
        "framing stays small: {} for {total}",
        sent.wire_bytes
    );
    let last = out.progress.last().expect("progress was reported");
    assert_eq!(
        (last.chunks, last.bytes),
        (last.chunks_total, last.bytes_total)
    );
    assert!(out.progress.len() > 5, "progress as frames are stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_keeps_at_most_a_window_in_flight() {
    let world = World::start(limits()).await;
    let transfer = world.allow_a_to_b();
    let chunks = tree(900, 0, 8);
    let meter = Arc::new(Meter::default());
    let source = Arc::new(MemSource::new(&chunks, meter.clone()));
    let mut sink = MemSink::new(meter.clone());
    // A slow disk, so that without the window the source would fill every buffer on the way.
    sink.delay = Duration::from_millis(1);
    let sink = Arc::new(sink);
    let window = 256 * 1024;
    let frame = 64 * 1024;
    let out = run(
        &world,
        transfer,
        source,
        sink.clone(),
        &chunks,
        Vec::new(),
        (
            TransferTuning {
                frame_bytes: frame,
                ..tuning()
            },
            TransferTuning {
                window_bytes: window,
                ..tuning()
            },
        ),
    )
    .await;
    let (_, stats) = out.target.expect("the target succeeds");
    out.source.expect("the source succeeds");
    assert_all_arrived(&chunks, &sink);
    // The target's own accounting...
    assert!(
        stats.peak_outstanding_bytes <= window,
        "{}",
        stats.peak_outstanding_bytes
    );
    assert!(
        stats.peak_outstanding_bytes > window / 2,
        "the window was used"
    );
    // ...and the source's reads against the sink's writes: in flight is the window plus what
    // waits for the disk (the verifier's queue of 4 frames and the one it works on).
    let frame_max = (frame + 20 * 1024 + 64) as u64;
    let bound = window + 5 * frame_max;
    let peak = meter.peak_in_flight.load(Ordering::SeqCst);
    assert!(
        peak <= bound,
        "read ahead of the disk by {peak} bytes, bound {bound} (tree {})",
        tree_bytes(&chunks)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_busy_between_phases_keeps_its_socket() {
    // The server closes sockets silent for 1 s; the target stages its manifest for longer than
    // that between fetching the blob and asking for chunks, without reading its socket.
    let world = World::start(TransferLimits {
        idle_timeout: Duration::from_secs(1),
        ..limits()
    })
    .await;
    let transfer = world.allow_a_to_b();
    let chunks = tree(20, 2, 9);
    let meter = Arc::new(Meter::default());
    let source = Arc::new(MemSource::new(&chunks, meter.clone()));
    let sink = Arc::new(MemSink::new(meter));
    let c = cipher(transfer);
    let source_conn = world.conn(world.m(0), transfer, tuning());
    let source_cipher = c.clone();
    let c2 = c.clone();
    let serving = tokio::spawn(async move {
        serve_source(
            &source_conn,
            source_cipher,
            source,
            BlobFeed::single(c2, b"manifest").expect("feed"),
            CancellationToken::new(),
        )
        .await
    });
    let mut receiver = Receiver::connect(
        world.conn(world.m(1), transfer, tuning()),
        c,
        CancellationToken::new(),
    )
    .await
    .expect("connects");
    assert_eq!(receiver.blob(0).await.expect("blob"), b"manifest");
    tokio::time::sleep(Duration::from_secs(3)).await;
    receiver
        .chunks(sink.clone(), refs(&chunks), &mut |_| {})
        .await
        .expect("chunks");
    let stats = receiver.finish().await.expect("finish");
    assert_eq!(
        stats.reconnects, 0,
        "the socket stayed up while the target was busy"
    );
    let sent = tokio::time::timeout(LIMIT, serving)
        .await
        .expect("in time")
        .expect("no panic")
        .expect("source ok");
    assert_eq!(sent.reconnects, 0);
    assert_all_arrived(&chunks, &sink);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_socket_drop_resumes_without_resending_what_arrived() {
    let world = World::start(limits()).await;
    let transfer = world.allow_a_to_b();
    let chunks = tree(300, 40, 2);
    let total = tree_bytes(&chunks);
    let meter = Arc::new(Meter::default());
    let source = Arc::new(MemSource::new(&chunks, meter.clone()));
    let sink = Arc::new(MemSink::new(meter));
    let window = 2 * 1024 * 1024;
    let out = run(
        &world,
        transfer,
        source.clone(),
        sink.clone(),
        &chunks,
        b"manifest".to_vec(),
        (
            tuning(),
            TransferTuning {
                window_bytes: window,
                drop_after_bytes: Some(total / 3),
                ..tuning()
            },
        ),
    )
    .await;
    let (_, stats) = out.target.expect("the target succeeds after reconnecting");
    let sent = out.source.expect("the source succeeds");
    assert_eq!(
        stats.reconnects, 1,
        "the hook dropped the target's socket once"
    );
    let put_at = assert_all_arrived(&chunks, &sink);
    assert_nothing_received_was_resent(&source, &put_at);
    // Only chunks in flight when the socket dropped travel twice: what was asked and not
    // received (a window), and answers to requests the old connection left queued at the
    // relay (at most a window again), which the target drops.
    assert!(sent.bytes >= total);
    assert!(
        sent.bytes <= total + 2 * window + 1024 * 1024,
        "sent {} for a tree of {total}",
        sent.bytes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_socket_drop_resumes_without_resending_what_arrived() {
    let world = World::start(limits()).await;
    let transfer = world.allow_a_to_b();
    let chunks = tree(300, 40, 3);
    let total = tree_bytes(&chunks);
    let meter = Arc::new(Meter::default());
    let source = Arc::new(MemSource::new(&chunks, meter.clone()));
    let sink = Arc::new(MemSink::new(meter));
    let window = 2 * 1024 * 1024;
    let out = run(
        &world,
        transfer,
        source.clone(),
        sink.clone(),
        &chunks,
        b"manifest".to_vec(),
        (
            TransferTuning {
                drop_after_bytes: Some(total / 2),
                ..tuning()
            },
            TransferTuning {
                window_bytes: window,
                ..tuning()
            },
        ),
    )
    .await;
    let (_, stats) = out.target.expect("the target succeeds");
    let sent = out.source.expect("the source succeeds after reconnecting");
    assert_eq!(
        sent.reconnects, 1,
        "the hook dropped the source's socket once"
    );
    assert_eq!(stats.reconnects, 0);
    let put_at = assert_all_arrived(&chunks, &sink);
    assert_nothing_received_was_resent(&source, &put_at);
    assert!(sent.bytes <= total + 2 * window + 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_whose_files_changed_are_reported_gone() {
    let world = World::start(limits()).await;
    let transfer = world.allow_a_to_b();
    let chunks = tree(50, 5, 4);
    let meter = Arc::new(Meter::default());
    let mut source = MemSource::new(&chunks, meter.clone());
    let missing = name(&chunks[7]);
    let changed = name(&chunks[20]);
    source.missing.insert(missing);
    source.changed.insert(changed);
    let sink = Arc::new(MemSink::new(meter));
    let out = run(
        &world,
        transfer,
        Arc::new(source),
        sink.clone(),
        &chunks,
        Vec::new(),
        (tuning(), tuning()),
    )
    .await;
    let (blob, stats) = out.target.expect("gone chunks do not fail the transfer");
    assert!(blob.is_empty());
    let mut gone = stats.gone.clone();
    gone.sort();
    let mut expected = vec![missing, changed];
    expected.sort();
    assert_eq!(gone, expected);
    assert_eq!(out.source.expect("source").gone, 2);
    let got = sink.got.lock().unwrap();
    assert_eq!(got.len(), chunks.len() - 2);
    assert!(!got.contains_key(&missing) && !got.contains_key(&changed));
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
}

/// A raw transfer socket, to play a broken or hostile peer.
async fn raw(
    machine: &Machine,
    transfer: HandoffId,
    role: TransferRole,
) -> Result<WsStream, ClientError> {
    let mut ws = machine
        .client
        .connect_ws_at(&transfer_ws_path(transfer, role), config())
        .await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) => {
            let notice: TransferNotice = serde_json::from_str(&t).expect("a notice");
            assert!(
                matches!(notice, TransferNotice::Joined { .. }),
                "{notice:?}"
            );
        }
        other => panic!("expected the join notice, got {other:?}"),
    }
    Ok(ws)
}

/// Reads until a binary frame of `kind` arrives.
async fn next_binary(ws: &mut WsStream, kind: FrameKind) -> Vec<u8> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) if frame_kind(&b) == Ok(kind) => return b.to_vec(),
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a {kind:?} frame, got {other:?}"),
        }
    }
}

/// Reads until the server's closing notice.
async fn closed_notice(ws: &mut WsStream) -> baton_proto::ApiError {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if let Ok(TransferNotice::Closed { error }) = serde_json::from_str(&t) {
                    return error;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("expected a closing notice, got {other:?}"),
        }
    }
}

/// A fake source answers the target's first request with `answer(hash, data)`; returns what the
/// target's receive ended with.
async fn target_facing(
    answer: impl FnOnce(u32, &ContentHash, &[u8], HandoffId) -> Vec<u8> + Send + 'static,
) -> TransferError {
    let world = World::start(limits()).await;
    let transfer = world.allow_a_to_b();
    let chunks = tree(3, 0, 5);
    let mut fake = raw(world.m(0), transfer, TransferRole::Source)
        .await
        .expect("fake source");
    let lookup: HashMap<ContentHash, Vec<u8>> =
        chunks.iter().map(|c| (name(c), c.clone())).collect();
    let fake_task = tokio::spawn(async move {
        let want = next_binary(&mut fake, FrameKind::Want).await;
        let (round, hash) = match decode(&want) {
            Ok(baton_proto::transfer::Frame::Want { round, hashes }) => {
                (round, hashes.iter().next().expect("a hash"))
            }
            other => panic!("not a want: {other:?}"),
        };
        let frame = answer(round, &hash, &lookup[&hash], transfer);
        fake.send(Message::Binary(frame.into()))
            .await
            .expect("send");
        // Keep the socket until the target gives up.
        let _ = tokio::time::timeout(
            Duration::from_secs(20),
            next_binary(&mut fake, FrameKind::Abort),
        )
        .await;
    });
    let meter = Arc::new(Meter::default());
    let conn = world.conn(world.m(1), transfer, tuning());
    let err = tokio::time::timeout(
        LIMIT,
        baton_daemon::transfer::receive(
            conn,
            cipher(transfer),
            Arc::new(MemSink::new(meter)),
            refs(&chunks),
            &mut |_| {},
            CancellationToken::new(),
        ),
    )
    .await
    .expect("in time")
    .expect_err("the target refuses the frame");
    let _ = fake_task.await;
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_chunk_is_refused() {
    // The fake source does not hold the session key; a chunk it alters fails authentication.
    let err = target_facing(|round, hash, data, transfer| {
        let mut frame = ChunksFrame::new(round, 0);
        let sealed = cipher(transfer).seal_chunk(hash, data);
        let mut bytes = sealed.as_bytes().to_vec();
        bytes[20] ^= 1;
        frame.push(hash, &bytes).expect("fits");
        frame.finish()
    })
    .await;
    assert!(matches!(err, TransferError::Verify { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::VerifyFailed);
    assert!(err.to_string().contains("chunk"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_sealed_for_another_transfer_is_refused() {
    let err = target_facing(|round, hash, data, _| {
        let mut frame = ChunksFrame::new(round, 0);
        cipher(HandoffId::new())
            .seal_chunk_to(hash, data, &mut frame)
            .expect("fits");
        frame.finish()
    })
    .await;
    assert!(matches!(err, TransferError::Verify { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frame_is_refused() {
    let err = target_facing(|_, _, _, _| vec![2, 2, 0, 0, 0, 0, 0, 0, 0, 9, 1, 2, 3]).await;
    assert!(matches!(err, TransferError::Protocol(_)), "{err:?}");
    assert_eq!(err.code(), ErrorCode::TransferFailed);
    assert!(err.to_string().contains("malformed chunks frame"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refuses_frames_of_another_version_or_direction() {
    let world = World::start(limits()).await;
    let transfer = world.allow_a_to_b();
    let mut source = raw(world.m(0), transfer, TransferRole::Source)
        .await
        .expect("source");
    source
        .send(Message::Binary(vec![9, 2, 0, 0, 0, 0, 0, 0, 0, 0].into()))
        .await
        .expect("send");
    let e = closed_notice(&mut source).await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("version 9"), "{}", e.message);
    // A target may not send chunks.
    let mut target = raw(world.m(1), transfer, TransferRole::Target)
        .await
        .expect("target");
    target
        .send(Message::Binary(ChunksFrame::new(0, 0).finish().into()))
        .await
        .expect("send");
    let e = closed_notice(&mut target).await;
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(
        e.message.contains("Chunks may not come from the target"),
        "{}",
        e.message
    );
}

fn refused_code(r: Result<WsStream, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Api(e)) => e.code,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got a connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_two_machines_of_a_transfer_may_join() {
    let world = World::start(limits()).await;
    let transfer = world.allow_a_to_b();
    let (a, b, c) = (world.m(0), world.m(1), world.m(2));
    assert_eq!(
        refused_code(raw(c, transfer, TransferRole::Target).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        refused_code(raw(c, transfer, TransferRole::Source).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        refused_code(raw(b, transfer, TransferRole::Source).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        refused_code(raw(a, transfer, TransferRole::Target).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        refused_code(raw(&world.outsider, transfer, TransferRole::Target).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        refused_code(raw(a, HandoffId::new(), TransferRole::Source).await),
        ErrorCode::NotFound,
        "an unknown transfer"
    );
    raw(a, transfer, TransferRole::Source)
        .await
        .expect("a is the source");
    raw(b, transfer, TransferRole::Target)
        .await
        .expect("b is the target");

    // The daemon side reports the refusal with its code, without retrying for a minute.
    let started = Instant::now();
    let err = Receiver::connect(
        world.conn(c, transfer, tuning()),
        cipher(transfer),
        CancellationToken::new(),
    )
    .await
    .err()
    .expect("refused");
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(started.elapsed() < Duration::from_secs(5));
}

async fn handoff_row(world: &World, workspace: bool, result: HandoffResult) -> HandoffId {
    let store = &world.state.store;
    let now = now_millis();
    let session = SessionRecord {
        id: SessionId::new(),
        provider: "scripted".into(),
        mode: SessionMode::Synced,
        owner: world.m(0).id,
        epoch: 1,
        status: SessionStatus::Idle,
        last_seq: 0,
        active_handoff: None,
        sealed_meta: Sealed(vec![1; 40]),
        sealed_key: Sealed(vec![1; 40]),
        created_at: now,
        updated_at: now,
    };
    store
        .create_session(world.account, &session)
        .await
        .expect("session");
    let id = HandoffId::new();
    let record = HandoffRecord {
        id,
        session_id: session.id,
        from: world.m(0).id,
        to: world.m(1).id,
        from_epoch: 1,
        phase: HandoffPhase::Requested,
        result: HandoffResult::Active,
        phases: Vec::new(),
        error: None,
        options: HandoffOptions {
            workspace,
            ..HandoffOptions::default()
        },
        sealed_options: None,
        workspace: None,
        plan: None,
        bytes: 0,
        created_at: now,
        updated_at: now,
    };
    store.begin_handoff(&record).await.expect("handoff");
    if result != HandoffResult::Active {
        store
            .abort_handoff(
                &baton_store::AbortHandoff {
                    handoff_id: id,
                    error: baton_proto::ApiError::new(ErrorCode::Timeout, "test"),
                    phases: Vec::new(),
                    now,
                },
                SessionStatus::Idle,
            )
            .await
            .expect("abort");
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_rows_authorise_their_source_and_target() {
    let world = World::start(limits()).await;
    let (a, b, c) = (world.m(0), world.m(1), world.m(2));
    let id = handoff_row(&world, true, HandoffResult::Active).await;
    raw(a, id, TransferRole::Source)
        .await
        .expect("from joins as source");
    raw(b, id, TransferRole::Target)
        .await
        .expect("to joins as target");
    assert_eq!(
        refused_code(raw(c, id, TransferRole::Target).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        refused_code(raw(&world.outsider, id, TransferRole::Target).await),
        ErrorCode::NotFound
    );
    let no_workspace = handoff_row(&world, false, HandoffResult::Active).await;
    assert_eq!(
        refused_code(raw(a, no_workspace, TransferRole::Source).await),
        ErrorCode::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_concurrent_transfer_is_refused() {
    let world = World::start(limits()).await;
    let (t1, t2, t3) = (
        world.allow_a_to_b(),
        world.allow_a_to_b(),
        world.allow_a_to_b(),
    );
    let _s1 = raw(world.m(0), t1, TransferRole::Source)
        .await
        .expect("first");
    let _s2 = raw(world.m(1), t2, TransferRole::Target)
        .await
        .expect("second");
    assert_eq!(world.state.transfers.active(world.account), 2);
    // The preflight check and the connection both refuse the third.
    let e = world
        .state
        .transfers
        .check_transfer(world.account, t3, 1000)
        .expect_err("over the concurrency cap");
    assert_eq!(e.code, ErrorCode::HandoffInProgress);
    let chunks = tree(2, 0, 6);
    let err = serve_source(
        &world.conn(world.m(0), t3, tuning()),
        cipher(t3),
        Arc::new(MemSource::new(&chunks, Arc::default())),
        BlobFeed::new(cipher(t3)),
        CancellationToken::new(),
    )
    .await
    .expect_err("refused");
    assert_eq!(err.code(), ErrorCode::HandoffInProgress, "{err}");
    assert!(
        err.to_string().contains("--transfer-max-concurrent"),
        "{err}"
    );
    // The transfers already running may still check again (e.g. before their delta pass).
    assert!(
        world
            .state
            .transfers
            .check_transfer(world.account, t1, 1000)
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_over_the_byte_cap_are_refused_and_closed() {
    let cap = 1024 * 1024;
    let world = World::start(TransferLimits {
        max_bytes: cap,
        ..limits()
    })
    .await;
    let transfer = world.allow_a_to_b();
    let e = world
        .state
        .transfers
        .check_transfer(world.account, transfer, cap + 1)
        .expect_err("preflight refuses");
    assert_eq!(e.code, ErrorCode::TransferTooLarge);
    assert!(
        world
            .state
            .transfers
            .check_transfer(world.account, transfer, cap)
            .is_ok()
    );

    // A source that sends more anyway is cut off by the relay.
    let chunks = tree(40, 12, 7);
    assert!(tree_bytes(&chunks) > 2 * cap);
    let meter = Arc::new(Meter::default());
    let out = run(
        &world,
        transfer,
        Arc::new(MemSource::new(&chunks, meter.clone())),
        Arc::new(MemSink::new(meter)),
        &chunks,
        Vec::new(),
        (tuning(), tuning()),
    )
    .await;
    let target = out.target.expect_err("the relay closes the transfer");
    assert_eq!(target.code(), ErrorCode::TransferTooLarge, "{target}");
    let source = out.source.expect_err("the source is told too");
    assert_eq!(source.code(), ErrorCode::TransferTooLarge, "{source}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_buffers_a_bounded_amount_for_a_target_that_does_not_read() {
    let world = World::start(limits()).await;
    let transfer = world.allow_a_to_b();
    let _target = raw(world.m(1), transfer, TransferRole::Target)
        .await
        .expect("target");
    let mut source = raw(world.m(0), transfer, TransferRole::Source)
        .await
        .expect("source");
    assert_eq!(
        world
            .state
            .transfers
            .queue_capacity(transfer, TransferRole::Target),
        Some(TRANSFER_QUEUE)
    );
    // 1 MiB frames, as fast as the relay takes them, for a target that never reads.
    let mut frame = ChunksFrame::new(0, 1024 * 1024);
    frame
        .push(&ContentHash([1; 32]), &vec![7u8; 1024 * 1024 - 64])
        .expect("fits");
    let frame = tokio_tungstenite::tungstenite::Bytes::from(frame.finish());
    let mut sent = 0u64;
    let started = Instant::now();
    let mut sent_at_2s = None;
    while started.elapsed() < Duration::from_secs(4) {
        match tokio::time::timeout(
            Duration::from_millis(200),
            source.send(Message::Binary(frame.clone())),
        )
        .await
        {
            Ok(Ok(())) => sent += frame.len() as u64,
            Ok(Err(e)) => panic!("send failed: {e}"),
            Err(_) => {}
        }
        if sent_at_2s.is_none() && started.elapsed() > Duration::from_secs(2) {
            sent_at_2s = Some(sent);
        }
    }
    // Relay queue (4 frames) plus the kernel's socket buffers on both hops; without
    // backpressure this would be gigabytes.
    assert!(
        sent < 64 * 1024 * 1024,
        "the source pushed {sent} bytes into a stalled relay"
    );
    let late = sent - sent_at_2s.unwrap_or_default();
    assert!(
        late <= 8 * 1024 * 1024,
        "the source is held back, not just slowed: {late} bytes after the first 2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_whose_target_never_comes_gives_up() {
    let world = World::start(limits()).await;
    let transfer = world.allow_a_to_b();
    let started = Instant::now();
    let err = serve_source(
        &world.conn(
            world.m(0),
            transfer,
            TransferTuning {
                reconnect_timeout: Duration::from_secs(1),
                ..tuning()
            },
        ),
        cipher(transfer),
        Arc::new(MemSource::new(&[], Arc::default())),
        BlobFeed::new(cipher(transfer)),
        CancellationToken::new(),
    )
    .await
    .expect_err("no target");
    assert!(matches!(err, TransferError::PeerGone { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::Timeout);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_a_waiting_target() {
    let world = World::start(limits()).await;
    let transfer = world.allow_a_to_b();
    let cancel = CancellationToken::new();
    let mut receiver = Receiver::connect(
        world.conn(world.m(1), transfer, tuning()),
        cipher(transfer),
        cancel.clone(),
    )
    .await
    .expect("connects");
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
    });
    let err = tokio::time::timeout(Duration::from_secs(10), receiver.blob(0))
        .await
        .expect("in time")
        .expect_err("cancelled");
    assert!(matches!(err, TransferError::Cancelled), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_parts_are_served_as_they_are_published_and_a_failed_feed_aborts() {
    let world = World::start(limits()).await;
    let transfer = world.allow_a_to_b();
    let c = cipher(transfer);
    // Parts wait in an unnamed file, as a daemon's manifests do.
    let spool = tempfile::tempdir().expect("tempdir");
    let feed = BlobFeed::spooled(c.clone(), spool.path()).expect("spool");
    feed.publish(b"part zero").expect("publish");
    assert_eq!(
        std::fs::read_dir(spool.path()).expect("ls").count(),
        0,
        "the spool has no name to leave behind"
    );
    let source_conn = world.conn(world.m(0), transfer, tuning());
    let (source_cipher, source_feed) = (c.clone(), feed.clone());
    let serving = tokio::spawn(async move {
        serve_source(
            &source_conn,
            source_cipher,
            Arc::new(MemSource::new(&[], Arc::default())),
            source_feed,
            CancellationToken::new(),
        )
        .await
    });
    let mut receiver = Receiver::connect(
        world.conn(world.m(1), transfer, tuning()),
        c,
        CancellationToken::new(),
    )
    .await
    .expect("connects");
    assert_eq!(receiver.blob(0).await.expect("part 0"), b"part zero");
    // Part 1 does not exist yet: the target waits for it rather than failing.
    let later = feed.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        later.publish(b"part one").expect("publish");
        tokio::time::sleep(Duration::from_millis(300)).await;
        later.fail("the disk went away".into());
    });
    let asked = Instant::now();
    assert_eq!(receiver.blob(1).await.expect("part 1"), b"part one");
    assert!(asked.elapsed() >= Duration::from_millis(250));
    let err = tokio::time::timeout(Duration::from_secs(10), receiver.blob(2))
        .await
        .expect("in time")
        .expect_err("the feed failed");
    assert!(
        matches!(&err, TransferError::PeerAborted(why) if why.contains("the disk went away")),
        "{err:?}"
    );
    let served = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("source ends")
        .expect("joins");
    assert!(served.is_err(), "the source reports the failure too");
    assert_eq!(feed.published_bytes(), 17, "two parts' plaintext");
}

/// The relay tells a side of its peer's new connection before that connection's first frame,
/// even when frames of the replaced connection are still queued towards it. A source that voids
/// its requests on the notice (as `serve_source` does) would otherwise void the new target's
/// first request and wait for the target's stall timer to ask again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_target_connection_is_announced_before_its_first_request() {
    let world = World::start(limits()).await;
    let transfer = world.allow_a_to_b();
    let queued = || {
        world
            .state
            .transfers
            .queued(transfer, TransferRole::Source)
            .expect("the source is connected")
    };
    let mut source = raw(world.m(0), transfer, TransferRole::Source)
        .await
        .expect("source");
    let mut old = raw(world.m(1), transfer, TransferRole::Target)
        .await
        .expect("first target connection");
    // The first connection asks, one frame at a time, until the source's socket (nobody reads
    // it yet) holds the relay's writer up and a frame waits in the queue behind it.
    let hashes: Vec<ContentHash> = (0..2048u64).map(|i| name(&bytes(i, 8))).collect();
    let want = encode_want(0, &hashes).expect("a want frame");
    let mut sent = 0;
    while queued() == 0 {
        old.send(Message::Binary(want.clone().into()))
            .await
            .expect("send");
        sent += 1;
        assert!(sent < 4096, "the relay never held a frame back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = queued();
    assert!(waiting < TRANSFER_QUEUE, "the queue has room for one more");
    let mut new = raw(world.m(1), transfer, TransferRole::Target)
        .await
        .expect("second target connection");
    let first = encode_want(7, &hashes[..1]).expect("a want frame");
    new.send(Message::Binary(first.into())).await.expect("send");
    let deadline = Instant::now() + Duration::from_secs(20);
    while queued() == waiting {
        assert!(
            Instant::now() < deadline,
            "the new request never reached the queue"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(old);
    // Everything the source now reads, in order: the first connection's notice and requests,
    // then the second connection's notice, then its round 7.
    let mut announced = 0;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), source.next())
            .await
            .expect("the source hears from the relay")
            .expect("the source's socket stays open")
            .expect("a message");
        match msg {
            Message::Text(t) => {
                if let Ok(TransferNotice::Peer { connected: true }) = serde_json::from_str(&t) {
                    announced += 1;
                }
            }
            Message::Binary(b) => match decode(&b).expect("a frame") {
                Frame::Want { round: 7, .. } => break,
                Frame::Want { round: 0, .. } => assert_eq!(
                    announced, 1,
                    "a request of the first connection came before its notice or after the second's"
                ),
                other => panic!("unexpected frame {other:?}"),
            },
            _ => {}
        }
    }
    assert_eq!(
        announced, 2,
        "the second connection's first request reached the source before the notice of it"
    );
}
