//! The handoff benchmark's work against a running cluster, done in-process with Baton's client
//! library: filling transcripts and timing handoffs. Spawning the CLI for each handoff would put
//! a process start-up (and a token exchange) into every figure and swamp what is measured.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use baton_bench::split::{phase_end, phase_start};
use baton_crypto::SessionCipher;
use baton_daemon::client::Client;
use baton_proto::api::{AppendRequest, AppendResponse, HandoffRequest, NewEntry, SendInputRequest};
use baton_proto::handoff::SealedHandoffOptions;
use baton_proto::{
    ApiError, EntryBody, EntryRole, HandoffId, HandoffOptions, HandoffPhase, HandoffRecord,
    HandoffResult, InputId, InputRecord, MachineId, MachineInfo, SessionId, SessionRecord,
    SessionStatus,
};
use serde_json::{Value, json};

/// How often the client polls a running handoff. Short, because the poll period bounds how late
/// the client sees the end (the figure is at most this much too high).
const POLL: Duration = Duration::from_millis(2);
/// Longest one handoff may take before the benchmark gives up on it.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a session may take to be idle on the expected owner between two handoffs.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Budget for one append request's body, well under the server's JSON limit
/// ([`baton_proto::MAX_JSON_BODY`], 8 MiB).
const APPEND_BODY_BUDGET: usize = 4 * 1024 * 1024;
/// Most entries sent in one append request.
const MAX_BATCH: usize = 500;
/// A fill by real turns fails when the transcript does not grow for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A machine of the cluster, as the server knows it.
#[derive(Clone, Debug)]
pub struct Node {
    /// Machine id.
    pub id: MachineId,
    /// Machine name.
    pub name: String,
}

/// The machines named `names`, in that order, from the server's list.
pub async fn nodes<const N: usize>(client: &Client, names: [&str; N]) -> Result<[Node; N]> {
    let machines: Vec<MachineInfo> = client
        .get("/v1/machines")
        .await
        .context("listing machines")?;
    let mut out = Vec::with_capacity(N);
    for name in names {
        let m = machines
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("machine {name} is not in the account"))?;
        out.push(Node {
            id: m.id,
            name: m.name.clone(),
        });
    }
    Ok(out
        .try_into()
        .unwrap_or_else(|_| unreachable!("one node per name")))
}

/// The session as the server has it now.
pub async fn session(client: &Client, id: SessionId) -> Result<SessionRecord> {
    client
        .get(&format!("/v1/sessions/{id}"))
        .await
        .with_context(|| format!("reading session {id}"))
}

/// Stops the session's provider (frees the machine between cases); failure only warns, since
/// the figures are already taken.
pub async fn stop(client: &Client, id: SessionId) {
    let r: Result<SessionRecord, _> = client
        .post(&format!("/v1/sessions/{id}/stop"), &json!({}))
        .await;
    if let Err(e) = r {
        eprintln!("  warning: could not stop session {id}: {e}");
    }
}

/// Filler text of exactly `len` bytes (ASCII), different per entry so no two ciphertexts share a
/// plaintext.
fn filler(seq: u64, len: usize) -> String {
    const PAD: &str = "The agent reads the file, runs the tests and explains what it found. ";
    let mut s = format!("Filler entry {seq} of the handoff benchmark. ");
    while s.len() < len {
        s.push_str(PAD);
    }
    s.truncate(len);
    s
}

/// Grows the transcript of idle session `id` to `target` entries by appending sealed assistant
/// entries directly, as the owner machine at its epoch (what the owner's daemon does for output).
/// Fast, and leaves the provider's own state as it was: only the transcript grows. Returns the
/// session's last seq.
pub async fn fill_by_appends(
    client: &Client,
    id: SessionId,
    target: u64,
    entry_bytes: usize,
) -> Result<u64> {
    let s = session(client, id).await?;
    if s.status != SessionStatus::Idle || s.active_handoff.is_some() {
        // The owner's daemon would race us for the next seq.
        bail!(
            "session {id} is {} (handoff {:?}); it must be idle to be filled",
            s.status.as_str(),
            s.active_handoff
        );
    }
    let cipher = client.cipher(&s)?;
    // Base64 grows the envelope by 4/3; the rest covers the AEAD tag, nonce and JSON framing.
    let per_entry = entry_bytes * 4 / 3 + 256;
    let batch = (APPEND_BODY_BUDGET / per_entry).clamp(1, MAX_BATCH) as u64;
    let mut last = s.last_seq;
    while last < target {
        let end = (last + batch).min(target);
        let entries = (last + 1..=end)
            .map(|seq| NewEntry {
                seq,
                input_id: None,
                sealed: cipher.seal_entry(
                    seq,
                    s.epoch,
                    &EntryBody::new(EntryRole::Assistant, filler(seq, entry_bytes)),
                ),
            })
            .collect();
        let r: AppendResponse = client
            .post(
                &format!("/v1/sessions/{id}/entries"),
                &AppendRequest {
                    epoch: s.epoch,
                    entries,
                    status: None,
                },
            )
            .await
            .with_context(|| format!("appending entries {}..={end} to session {id}", last + 1))?;
        if r.last_seq != end {
            bail!(
                "after appending up to seq {end} the server reports last seq {}",
                r.last_seq
            );
        }
        last = end;
    }
    Ok(last)
}

/// Grows the transcript of session `id` to at least `target` entries with real turns: queues
/// one plain message per two missing entries (a plain message makes a turn of two entries, the
/// user's and the agent's answer), then waits until the owner has answered them all. The
/// provider's own conversation state grows with every turn, as a real agent's does. `progress`
/// is called with the last seq whenever it grows. Returns the session's last seq.
pub async fn fill_by_turns(
    client: &Client,
    id: SessionId,
    target: u64,
    mut progress: impl FnMut(u64),
) -> Result<u64> {
    let s = session(client, id).await?;
    if s.last_seq >= target {
        return Ok(s.last_seq);
    }
    let cipher = client.cipher(&s)?;
    let turns = (target - s.last_seq).div_ceil(2);
    let mut last_input = None;
    for k in 1..=turns {
        let text = format!("Benchmark message {k} of {turns}: please answer.");
        let input = queue_input(client, &cipher, id, &text)
            .await
            .with_context(|| format!("queueing message {k} of {turns}"))?;
        last_input = Some(input);
    }
    let Some(last_input) = last_input else {
        return Ok(s.last_seq);
    };
    // Inputs are delivered in order, so the last one consumed means all were; idle means its
    // turn has ended too.
    let mut seen = s.last_seq;
    let mut grew_at = Instant::now();
    loop {
        let s = session(client, id).await?;
        if s.last_seq > seen {
            seen = s.last_seq;
            grew_at = Instant::now();
            progress(seen);
        }
        if s.status == SessionStatus::Idle && s.active_handoff.is_none() {
            let input: InputRecord = client
                .get(&format!("/v1/sessions/{id}/inputs/{last_input}"))
                .await
                .context("reading the last queued message")?;
            if input.consumed {
                return Ok(s.last_seq);
            }
        }
        if s.status == SessionStatus::Stopped {
            bail!(
                "session {id} stopped at seq {} while answering the queued messages \
                 (the provider failed; see the owner's log)",
                s.last_seq
            );
        }
        if grew_at.elapsed() > STALL_TIMEOUT {
            bail!(
                "session {id}'s transcript stopped growing at seq {} for {} s (status {})",
                s.last_seq,
                STALL_TIMEOUT.as_secs(),
                s.status.as_str()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Queues a message for session `id` (sealed with its key), as `baton send --no-wait` does.
/// Returns the message's id, which the user entry that consumes it will name.
pub async fn queue_input(
    client: &Client,
    cipher: &SessionCipher,
    id: SessionId,
    text: &str,
) -> Result<InputId> {
    let input = InputId::new();
    let _: InputRecord = client
        .post(
            &format!("/v1/sessions/{id}/inputs"),
            &SendInputRequest {
                id: input,
                sealed: cipher.seal_input(input, text),
            },
        )
        .await
        .with_context(|| format!("queueing a message for session {id}"))?;
    Ok(input)
}

/// A client's request to hand a session to `to`. With `target_path`, the target's workspace
/// path, sealed with the session's key as `baton handoff --path` does; without, the same path.
pub fn handoff_request(
    id: HandoffId,
    to: &Node,
    target_path: Option<(&SessionCipher, &str)>,
) -> HandoffRequest {
    HandoffRequest {
        id,
        to: to.id,
        options: HandoffOptions::default(),
        sealed_options: target_path.map(|(cipher, path)| {
            cipher.seal_options(
                id,
                &SealedHandoffOptions {
                    target_path: Some(path.to_string()),
                    ..SealedHandoffOptions::default()
                },
            )
        }),
    }
}

/// One measured handoff.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Handoff id.
    pub handoff_id: HandoffId,
    /// Source machine name.
    pub from: String,
    /// Target machine name.
    pub to: String,
    /// Client-observed latency: request sent → seen done.
    pub client_ms: f64,
    /// Server-recorded duration: `updated_at - created_at` of the final record.
    pub server_ms: f64,
    /// Session stopped: `quiesce_source` start → `activate` end.
    pub stopped_ms: f64,
    /// Provider-state bundle moved (sealed bytes).
    pub bytes: u64,
    /// Each phase's duration as the server recorded it (ms).
    pub phases: Vec<(HandoffPhase, i64)>,
}

impl Sample {
    /// As a JSON object.
    pub fn to_json(&self) -> Value {
        let phases: serde_json::Map<String, Value> = self
            .phases
            .iter()
            .map(|(p, ms)| (p.as_str().to_string(), json!(ms)))
            .collect();
        json!({
            "handoff_id": self.handoff_id.to_string(),
            "from": self.from,
            "to": self.to,
            "client_ms": self.client_ms,
            "server_ms": self.server_ms,
            "stopped_ms": self.stopped_ms,
            "bytes": self.bytes,
            "phases_ms": phases,
        })
    }
}

/// A session handed back and forth between `nodes[0]` (its owner at the start) and `nodes[1]`.
pub struct Shuttle {
    /// The session.
    pub id: SessionId,
    /// Handoffs done so far; even means `nodes[0]` owns it.
    done: usize,
}

impl Shuttle {
    /// A session owned by `nodes[0]` now.
    pub fn new(id: SessionId) -> Self {
        Self { id, done: 0 }
    }

    /// The session's current owner and the other machine.
    fn ends<'a>(&self, nodes: &'a [Node; 2]) -> (&'a Node, &'a Node) {
        if self.done.is_multiple_of(2) {
            (&nodes[0], &nodes[1])
        } else {
            (&nodes[1], &nodes[0])
        }
    }

    /// Waits until the session is idle on its expected owner, then hands it to the other machine
    /// and times that. `label` names the handoff in errors.
    pub async fn hop(&mut self, client: &Client, nodes: &[Node; 2], label: &str) -> Result<Sample> {
        let (from, to) = self.ends(nodes);
        settle(client, self.id, from).await?;
        let sample = handoff(client, self.id, from, to).await.with_context(|| {
            format!(
                "{label} of session {} ({} → {})",
                self.id, from.name, to.name
            )
        })?;
        self.done += 1;
        Ok(sample)
    }

    /// `pairs` unmeasured round trips (connections, caches, provider start-up on both sides).
    pub async fn warm_up(
        &mut self,
        client: &Client,
        nodes: &[Node; 2],
        pairs: usize,
    ) -> Result<()> {
        for i in 0..2 * pairs {
            self.hop(
                client,
                nodes,
                &format!("warm-up handoff {} of {}", i + 1, 2 * pairs),
            )
            .await?;
        }
        Ok(())
    }

    /// Waits until the last handoff has settled (idle on its new owner).
    pub async fn settle(&self, client: &Client, nodes: &[Node; 2]) -> Result<()> {
        settle(client, self.id, self.ends(nodes).0)
            .await
            .map(|_| ())
    }
}

/// Hands session `id` (owned by `nodes[0]`) back and forth: `warmup_pairs` unmeasured pairs
/// first, then `runs` measured handoffs, each after the session is idle on the expected owner.
pub async fn ping_pong(
    client: &Client,
    id: SessionId,
    nodes: &[Node; 2],
    warmup_pairs: usize,
    runs: usize,
) -> Result<Vec<Sample>> {
    let mut shuttle = Shuttle::new(id);
    shuttle.warm_up(client, nodes, warmup_pairs).await?;
    let mut samples = Vec::with_capacity(runs);
    for i in 0..runs {
        let label = format!("measured handoff {} of {runs}", i + 1);
        samples.push(shuttle.hop(client, nodes, &label).await?);
    }
    shuttle.settle(client, nodes).await?;
    Ok(samples)
}

/// Like [`ping_pong`] for several sessions at once, taking turns: warm-up pairs for each, then
/// round after round of one measured handoff per session. Slow drifts of the machine's load
/// (other processes, thermal limits) then fall on every session alike instead of on whichever
/// was measured at the time, which keeps the ratios between sessions honest.
pub async fn ping_pong_interleaved(
    client: &Client,
    ids: &[SessionId],
    nodes: &[Node; 2],
    warmup_pairs: usize,
    runs: usize,
) -> Result<Vec<Vec<Sample>>> {
    let mut shuttles: Vec<Shuttle> = ids.iter().map(|&id| Shuttle::new(id)).collect();
    for s in &mut shuttles {
        s.warm_up(client, nodes, warmup_pairs).await?;
    }
    let mut samples: Vec<Vec<Sample>> = ids.iter().map(|_| Vec::with_capacity(runs)).collect();
    for round in 0..runs {
        let label = format!("measured handoff {} of {runs}", round + 1);
        for (s, out) in shuttles.iter_mut().zip(&mut samples) {
            out.push(s.hop(client, nodes, &label).await?);
        }
    }
    for s in &shuttles {
        s.settle(client, nodes).await?;
    }
    Ok(samples)
}

/// Waits (at most [`SETTLE_TIMEOUT`]) until session `id` is idle, owned by `owner` and not
/// handing off.
async fn settle(client: &Client, id: SessionId, owner: &Node) -> Result<SessionRecord> {
    settle_within(client, id, owner, SETTLE_TIMEOUT).await
}

/// Waits (at most `timeout`) until session `id` is idle, owned by `owner` and not handing off.
pub async fn settle_within(
    client: &Client,
    id: SessionId,
    owner: &Node,
    timeout: Duration,
) -> Result<SessionRecord> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = session(client, id).await?;
        if s.owner == owner.id && s.status == SessionStatus::Idle && s.active_handoff.is_none() {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            bail!(
                "session {id} is not idle on {} after {} s: owner {}, status {}, active handoff {:?}",
                owner.name,
                timeout.as_secs(),
                s.owner,
                s.status.as_str(),
                s.active_handoff
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An error of a handoff record for a message.
pub fn describe(e: Option<&ApiError>) -> String {
    e.map(|e| format!("{}: {}", e.code, e.message))
        .unwrap_or_else(|| "no error recorded".into())
}

/// True once the handoff has committed and its `done` phase has ended (the server has written
/// the final record and released the session). Phase `done` alone is not enough: it is recorded
/// when the source's clean-up starts.
pub fn finished(h: &HandoffRecord) -> bool {
    h.result == HandoffResult::Committed
        && h.phase == HandoffPhase::Done
        && h.phases
            .iter()
            .any(|p| p.phase == HandoffPhase::Done && p.ended_at.is_some())
}

/// Hands session `id` from `from` to `to` and times it.
async fn handoff(client: &Client, id: SessionId, from: &Node, to: &Node) -> Result<Sample> {
    let hid = HandoffId::new();
    let request = handoff_request(hid, to, None);
    let path = format!("/v1/handoffs/{hid}");
    let t0 = Instant::now();
    let _: HandoffRecord = client
        .post(&format!("/v1/sessions/{id}/handoffs"), &request)
        .await
        .context("requesting the handoff")?;
    let (h, elapsed) = loop {
        let h: HandoffRecord = client.get(&path).await.context("reading the handoff")?;
        // Taken before anything else, so the figure holds no work of the benchmark's own.
        let elapsed = t0.elapsed();
        match h.result {
            HandoffResult::Aborted => bail!(
                "handoff {hid} aborted in phase {}: {}",
                h.phase.as_str(),
                describe(h.error.as_ref())
            ),
            HandoffResult::Committed if h.error.is_some() => bail!(
                "handoff {hid} committed but failed after the commit in phase {}: {}",
                h.phase.as_str(),
                describe(h.error.as_ref())
            ),
            _ if finished(&h) => break (h, elapsed),
            _ => {}
        }
        if elapsed > HANDOFF_TIMEOUT {
            bail!(
                "handoff {hid} still running after {} s (phase {}, result {})",
                HANDOFF_TIMEOUT.as_secs(),
                h.phase.as_str(),
                h.result.as_str()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let (Some(quiesce_start), Some(activate_end)) = (
        phase_start(&h.phases, HandoffPhase::QuiesceSource),
        phase_end(&h.phases, HandoffPhase::Activate),
    ) else {
        bail!("handoff {hid} finished without quiesce_source and activate times: {h:?}");
    };
    Ok(Sample {
        handoff_id: hid,
        from: from.name.clone(),
        to: to.name.clone(),
        client_ms: elapsed.as_secs_f64() * 1e3,
        server_ms: (h.updated_at - h.created_at) as f64,
        stopped_ms: (activate_end - quiesce_start) as f64,
        bytes: h.bytes,
        phases: h
            .phases
            .iter()
            .filter_map(|p| p.ended_at.map(|e| (p.phase, e - p.started_at)))
            .collect(),
    })
}
