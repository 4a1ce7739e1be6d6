//! One measured handoff of a provider's session, timed as a client sees it: from the POST that
//! confirms the handoff to the first entry the resumed provider writes on the target, observed
//! over the session's WebSocket subscription.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use baton_bench::split::{ResumeParts, Split, resume_parts, split};
use baton_crypto::SessionCipher;
use baton_daemon::client::Client;
use baton_proto::ws::Event;
use baton_proto::{
    EntryRole, HandoffId, HandoffPhase, HandoffRecord, HandoffResult, InputId, SessionId,
};
use serde_json::{Value, json};

use crate::follow::Follower;
use crate::measure::{self, Node};

/// The first message of every session: a file-writing tool call for the real CLIs, so the
/// provider has state worth moving (tool call, tool result, answer); plain text to `scripted`.
pub const FIRST_MESSAGE: &str = "WRITEFILE a.txt provider state for the handoff benchmark";
/// Longest one turn may take, from its message to its end (a real CLI's cold start included).
pub const TURN_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest a session may take to be idle on its owner before a handoff.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the handoff record may take to show the handoff finished once the provider answered
/// (it is finished before the queued message is delivered, so this is only a safety net).
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);

/// The message queued at each handoff: the mock model (and the scripted agent) answers it by
/// quoting the session's first message, which shows the provider's context came along.
pub fn probe_message(k: usize) -> String {
    format!("ECHOFIRST handoff {k}: what was the first message?")
}

/// Milliseconds since the Unix epoch, with the fraction.
fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn ms_since(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64() * 1e3
}

/// What the client saw of one turn.
#[derive(Debug, Default)]
pub struct Turn {
    /// The user entry that consumed the message: seq, epoch, arrival.
    pub user: Option<(u64, u64, Instant)>,
    /// The provider's first assistant/tool entry after it: arrival and role.
    pub first: Option<(Instant, EntryRole)>,
    /// The assistant text of the turn.
    pub reply: String,
    /// The last state of the handoff being watched, from its events.
    pub handoff: Option<HandoffRecord>,
}

/// Follows the session's events until the turn that consumed `input` has ended. Fails when the
/// watched handoff aborts or fails after commit, when the provider reports an error, or at
/// `deadline`.
pub async fn observe(
    follower: &mut Follower,
    cipher: &SessionCipher,
    input: InputId,
    handoff: Option<HandoffId>,
    deadline: Instant,
) -> Result<Turn> {
    let mut turn = Turn::default();
    loop {
        let arrival = follower.next(deadline).await.with_context(|| {
            let stage = match (&turn.user, &turn.first) {
                (None, _) => "before the queued message was taken",
                (Some(_), None) => "after the message was taken, before the provider answered",
                (Some(_), Some(_)) => "before the provider's turn ended",
            };
            let phase = turn
                .handoff
                .as_ref()
                .map(|h| {
                    format!(
                        " (handoff in phase {}, {})",
                        h.phase.as_str(),
                        h.result.as_str()
                    )
                })
                .unwrap_or_default();
            format!("waiting for the turn {stage}{phase}")
        })?;
        match arrival.event {
            Event::HandoffChanged { handoff: h } if Some(h.id) == handoff => {
                match h.result {
                    HandoffResult::Aborted => bail!(
                        "handoff {} aborted in phase {}: {}",
                        h.id,
                        h.phase.as_str(),
                        measure::describe(h.error.as_ref())
                    ),
                    HandoffResult::Committed if h.error.is_some() => bail!(
                        "handoff {} failed after the commit, in phase {}: {}",
                        h.id,
                        h.phase.as_str(),
                        measure::describe(h.error.as_ref())
                    ),
                    _ => {}
                }
                turn.handoff = Some(h);
            }
            Event::Entries { entries, .. } => {
                for e in entries {
                    let Some((user_seq, _, _)) = turn.user else {
                        if e.input_id == Some(input) {
                            turn.user = Some((e.seq, e.epoch, arrival.at));
                        }
                        continue;
                    };
                    if e.seq <= user_seq {
                        continue;
                    }
                    let body = cipher
                        .open_entry(&e)
                        .with_context(|| format!("opening entry {}", e.seq))?;
                    match body.role {
                        // What the provider produced: its text, its tool use, or its request
                        // for approval of a tool.
                        EntryRole::Assistant
                        | EntryRole::ToolCall
                        | EntryRole::ToolResult
                        | EntryRole::Permission
                            if turn.first.is_none() =>
                        {
                            turn.first = Some((arrival.at, body.role));
                        }
                        EntryRole::Error => bail!(
                            "the provider reported an error at seq {}: {}",
                            e.seq,
                            body.text
                        ),
                        _ => {}
                    }
                    if body.role == EntryRole::Assistant {
                        turn.reply.push_str(&body.text);
                        turn.reply.push('\n');
                    }
                    if body.turn_end {
                        if turn.first.is_none() {
                            bail!(
                                "the turn ended at seq {} with nothing from the provider",
                                e.seq
                            );
                        }
                        return Ok(turn);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Sends `text` to the session and follows its turn to the end (used for the first turn).
pub async fn turn(
    client: &Client,
    follower: &mut Follower,
    cipher: &SessionCipher,
    id: SessionId,
    text: &str,
) -> Result<Turn> {
    follower.drain();
    let input = measure::queue_input(client, cipher, id, text).await?;
    observe(follower, cipher, input, None, Instant::now() + TURN_TIMEOUT).await
}

/// One measured handoff.
#[derive(Clone, Debug)]
pub struct ProviderSample {
    /// Handoff id.
    pub handoff_id: HandoffId,
    /// Source machine name.
    pub from: String,
    /// Target machine name.
    pub to: String,
    /// The session's epoch after the handoff.
    pub epoch: u64,
    /// Request -> the queued message accepted by the server (ms).
    pub queued_ms: f64,
    /// Request -> the user entry that consumed the message seen (ms).
    pub user_ms: f64,
    /// The four parts and the total.
    pub split: Split,
    /// The resume part cut finer.
    pub resume: ResumeParts,
    /// Role of the provider's first entry.
    pub first_role: EntryRole,
    /// The reply quoted the session's first message (its context came along).
    pub context_ok: bool,
    /// Sealed provider-state bytes moved (the handoff record's `bytes`).
    pub bytes: u64,
    /// Each phase's duration as the server recorded it (ms).
    pub phases: Vec<(HandoffPhase, i64)>,
}

impl ProviderSample {
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
            "epoch_after": self.epoch,
            "total_ms": self.split.total,
            "quiesce_ms": self.split.quiesce,
            "transfer_ms": self.split.transfer,
            "import_ms": self.split.import,
            "resume_ms": self.split.resume,
            "resume_parts_ms": {
                "activate": self.resume.activate,
                "done": self.resume.done,
                "delivery": self.resume.delivery,
                "first_output": self.resume.first_output,
            },
            "queued_ms": self.queued_ms,
            "user_entry_ms": self.user_ms,
            "first_entry_role": self.first_role.as_str(),
            "context_ok": self.context_ok,
            "bytes": self.bytes,
            "phases_ms": phases,
        })
    }
}

/// A provider's session handed back and forth between `nodes[0]` (its owner at the start) and
/// `nodes[1]`, each with its own workspace path.
pub struct Subject {
    /// Provider name.
    pub provider: String,
    /// The session.
    pub id: SessionId,
    /// Its cipher.
    pub cipher: SessionCipher,
    /// Its live view.
    pub follower: Follower,
    /// Workspace path on `nodes[0]` and on `nodes[1]`.
    pub workspaces: [String; 2],
    /// Handoffs done; even means `nodes[0]` owns it.
    pub done: usize,
}

impl Subject {
    /// Hands the session to the other machine: waits until it is idle on its owner, then sends
    /// the handoff request (t0) and queues the probe message right after it (the server holds
    /// the message while the handoff runs, so the target's resumed provider answers it), and
    /// follows the session until that turn has ended.
    pub async fn hop(
        &mut self,
        client: &Client,
        nodes: &[Node; 2],
        k: usize,
    ) -> Result<ProviderSample> {
        let (from, to, to_ws) = if self.done.is_multiple_of(2) {
            (&nodes[0], &nodes[1], self.workspaces[1].clone())
        } else {
            (&nodes[1], &nodes[0], self.workspaces[0].clone())
        };
        let sample = self
            .measure(client, from, to, &to_ws, k)
            .await
            .with_context(|| {
                format!(
                    "{} session {}, handoff {} ({} -> {})",
                    self.provider,
                    self.id,
                    self.done + 1,
                    from.name,
                    to.name
                )
            })?;
        self.done += 1;
        Ok(sample)
    }

    async fn measure(
        &mut self,
        client: &Client,
        from: &Node,
        to: &Node,
        to_ws: &str,
        k: usize,
    ) -> Result<ProviderSample> {
        let before = measure::settle_within(client, self.id, from, SETTLE_TIMEOUT).await?;
        self.follower.drain();
        let hid = HandoffId::new();
        let request = measure::handoff_request(hid, to, Some((&self.cipher, to_ws)));
        let text = probe_message(k);
        let t0_wall = wall_ms();
        let t0 = Instant::now();
        let _: HandoffRecord = client
            .post(&format!("/v1/sessions/{}/handoffs", self.id), &request)
            .await
            .context("requesting the handoff")?;
        let input = measure::queue_input(client, &self.cipher, self.id, &text).await?;
        let queued_ms = ms_since(t0, Instant::now());
        let turn = observe(
            &mut self.follower,
            &self.cipher,
            input,
            Some(hid),
            t0 + TURN_TIMEOUT,
        )
        .await?;
        let (Some((_, epoch, user_at)), Some((first_at, first_role))) = (turn.user, turn.first)
        else {
            bail!("the turn ended without a user entry and a provider entry");
        };
        if epoch != before.epoch + 1 {
            bail!(
                "the message was taken at epoch {epoch}, not at the target's epoch {} (the source answered it)",
                before.epoch + 1
            );
        }
        let h = finished_record(client, hid).await?;
        if h.result != HandoffResult::Committed || h.to != to.id {
            bail!(
                "handoff {hid} ended {} towards {} instead of committed to {}",
                h.result.as_str(),
                h.to,
                to.name
            );
        }
        let (user_ms, first_ms) = (ms_since(t0, user_at), ms_since(t0, first_at));
        let split = split(&h.phases, t0_wall, first_ms).map_err(anyhow::Error::msg)?;
        let resume =
            resume_parts(&h.phases, t0_wall, user_ms, first_ms).map_err(anyhow::Error::msg)?;
        Ok(ProviderSample {
            handoff_id: hid,
            from: from.name.clone(),
            to: to.name.clone(),
            epoch,
            queued_ms,
            user_ms,
            split,
            resume,
            first_role,
            context_ok: turn.reply.contains(FIRST_MESSAGE),
            bytes: h.bytes,
            phases: h
                .phases
                .iter()
                .filter_map(|p| p.ended_at.map(|e| (p.phase, e - p.started_at)))
                .collect(),
        })
    }
}

/// The handoff's record once it shows the handoff committed and done.
async fn finished_record(client: &Client, hid: HandoffId) -> Result<HandoffRecord> {
    let deadline = Instant::now() + RECORD_TIMEOUT;
    loop {
        let h: HandoffRecord = client
            .get(&format!("/v1/handoffs/{hid}"))
            .await
            .context("reading the handoff")?;
        if measure::finished(&h) || h.result == HandoffResult::Aborted {
            return Ok(h);
        }
        if Instant::now() >= deadline {
            bail!(
                "handoff {hid} is not finished {} s after the provider answered (phase {}, {})",
                RECORD_TIMEOUT.as_secs(),
                h.phase.as_str(),
                h.result.as_str()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
