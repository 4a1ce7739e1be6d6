//! How one handoff's time, from the client's confirm to the first thing the resumed provider
//! produced on the target, splits into the four parts issue 3 asks for: quiesce, transfer,
//! import and resume.
//!
//! The parts are cut at the end times of the server's handoff phases ([`PhaseRecord`]), so they
//! add up to the total exactly and no time falls between two of them. The phases do not map one
//! to one onto the four parts; [`Bucket::covers`] says which phases (and which work outside any
//! phase) each part holds, and the benchmark prints that next to its figures.
//!
//! The client's instants and the server's phase times are both read from this computer's wall
//! clock (the cluster runs on loopback), so they can be compared; the server's are whole
//! milliseconds, so a part is accurate to about a millisecond.

use baton_proto::{HandoffPhase, PhaseRecord};

/// One of the four parts of a handoff as a client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bucket {
    /// From the confirm until the source has stopped its provider.
    Quiesce,
    /// The source exports, seals and uploads the provider state.
    Transfer,
    /// The target downloads, verifies and stages the state, and the server commits.
    Import,
    /// From the commit until the client sees the provider's first entry on the target.
    Resume,
}

impl Bucket {
    /// The four parts in the order they happen.
    pub const ALL: [Bucket; 4] = [
        Bucket::Quiesce,
        Bucket::Transfer,
        Bucket::Import,
        Bucket::Resume,
    ];

    /// The name printed and used as a JSON key.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quiesce => "quiesce",
            Self::Transfer => "transfer",
            Self::Import => "import",
            Self::Resume => "resume",
        }
    }

    /// What the part holds, in the server's phase names.
    pub fn covers(self) -> &'static str {
        match self {
            Self::Quiesce => {
                "client POST (confirm) -> end of quiesce_source: requested, preflight, \
                 prepare_target, quiesce_source (source finishes its turn, stops the provider)"
            }
            Self::Transfer => {
                "end of quiesce_source -> end of transfer: transfer (source exports the provider \
                 state, seals it, uploads it to the server)"
            }
            Self::Import => {
                "end of transfer -> end of commit: verify (target downloads, checks and imports \
                 the state into staging, paths rewritten), commit (its recorded end is taken \
                 just before the store transaction)"
            }
            Self::Resume => {
                "end of commit -> first provider entry seen by the client: the commit \
                 transaction, activate (state put in place, move noted, provider started), \
                 done (source cleanup, handoff closed), delivery of the queued message, and the \
                 provider's turn up to its first assistant/tool entry"
            }
        }
    }
}

/// A handoff's time in the four parts (milliseconds); they add up to `total`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Split {
    /// [`Bucket::Quiesce`].
    pub quiesce: f64,
    /// [`Bucket::Transfer`].
    pub transfer: f64,
    /// [`Bucket::Import`].
    pub import: f64,
    /// [`Bucket::Resume`].
    pub resume: f64,
    /// Confirm to first provider entry, as the client measured it.
    pub total: f64,
}

impl Split {
    /// The value of one part.
    pub fn get(&self, bucket: Bucket) -> f64 {
        match bucket {
            Bucket::Quiesce => self.quiesce,
            Bucket::Transfer => self.transfer,
            Bucket::Import => self.import,
            Bucket::Resume => self.resume,
        }
    }
}

/// The resume part cut finer, to tell the provider's own start-up and answer from Baton's work
/// (milliseconds; they add up to [`Split::resume`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ResumeParts {
    /// End of commit -> end of activate: the commit transaction, then the target puts the state
    /// in place, notes the move in the transcript and starts the provider.
    pub activate: f64,
    /// The `done` phase: the source removes its copy; the server closes the handoff.
    pub done: f64,
    /// End of `done` -> the client sees the user entry that consumed the queued message (the
    /// handoff's release of the session, the target's read of its queue, the append).
    pub delivery: f64,
    /// User entry seen -> first provider entry seen: the provider's turn up to its first output.
    pub first_output: f64,
}

/// When `phase` ended, if it did.
pub fn phase_end(phases: &[PhaseRecord], phase: HandoffPhase) -> Option<i64> {
    phases
        .iter()
        .find(|p| p.phase == phase)
        .and_then(|p| p.ended_at)
}

/// When `phase` started, if it ran.
pub fn phase_start(phases: &[PhaseRecord], phase: HandoffPhase) -> Option<i64> {
    phases
        .iter()
        .find(|p| p.phase == phase)
        .map(|p| p.started_at)
}

fn end_of(phases: &[PhaseRecord], phase: HandoffPhase) -> Result<f64, String> {
    phase_end(phases, phase).map(|ms| ms as f64).ok_or_else(|| {
        format!(
            "the handoff record has no end time for phase {}",
            phase.as_str()
        )
    })
}

/// Splits one handoff. `t0_ms`: the wall-clock time (ms since the Unix epoch) at which the
/// client sent the handoff request; `first_ms`: how long after that the client saw the
/// provider's first entry on the target.
pub fn split(phases: &[PhaseRecord], t0_ms: f64, first_ms: f64) -> Result<Split, String> {
    let quiesced = end_of(phases, HandoffPhase::QuiesceSource)? - t0_ms;
    let transferred = end_of(phases, HandoffPhase::Transfer)? - t0_ms;
    let committed = end_of(phases, HandoffPhase::Commit)? - t0_ms;
    Ok(Split {
        quiesce: quiesced,
        transfer: transferred - quiesced,
        import: committed - transferred,
        resume: first_ms - committed,
        total: first_ms,
    })
}

/// Cuts the resume part of one handoff. Times as in [`split`]; `user_ms`: how long after the
/// request the client saw the user entry that consumed the queued message.
pub fn resume_parts(
    phases: &[PhaseRecord],
    t0_ms: f64,
    user_ms: f64,
    first_ms: f64,
) -> Result<ResumeParts, String> {
    let committed = end_of(phases, HandoffPhase::Commit)? - t0_ms;
    let activated = end_of(phases, HandoffPhase::Activate)? - t0_ms;
    let done = end_of(phases, HandoffPhase::Done)? - t0_ms;
    Ok(ResumeParts {
        activate: activated - committed,
        done: done - activated,
        delivery: user_ms - done,
        first_output: first_ms - user_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(phase: HandoffPhase, start: i64, end: i64) -> PhaseRecord {
        PhaseRecord {
            phase,
            started_at: start,
            ended_at: Some(end),
            ok: true,
        }
    }

    fn phases() -> Vec<PhaseRecord> {
        use HandoffPhase::*;
        vec![
            record(Requested, 1_000, 1_000),
            record(Preflight, 1_001, 1_010),
            record(PrepareTarget, 1_010, 1_012),
            record(QuiesceSource, 1_012, 1_030),
            record(Transfer, 1_030, 1_080),
            record(Verify, 1_080, 1_130),
            record(Commit, 1_130, 1_131),
            record(Activate, 1_135, 1_400),
            record(Done, 1_400, 1_420),
        ]
    }

    #[test]
    fn parts_are_cut_at_phase_ends_and_add_up() {
        let s = split(&phases(), 999.5, 2_000.5).unwrap();
        assert_eq!(s.quiesce, 30.5);
        assert_eq!(s.transfer, 50.0);
        assert_eq!(s.import, 51.0);
        assert_eq!(s.resume, 2_000.5 - 131.5);
        let sum: f64 = Bucket::ALL.iter().map(|b| s.get(*b)).sum();
        assert_eq!(sum, s.total);
    }

    #[test]
    fn resume_is_cut_into_activate_done_delivery_and_output() {
        let (t0, user, first) = (999.5, 440.5, 2_000.5);
        let r = resume_parts(&phases(), t0, user, first).unwrap();
        // The commit transaction (1131 -> 1135) falls into activate.
        assert_eq!(r.activate, 269.0);
        assert_eq!(r.done, 20.0);
        assert_eq!(r.delivery, 20.0);
        assert_eq!(r.first_output, 1_560.0);
        let s = split(&phases(), t0, first).unwrap();
        assert_eq!(r.activate + r.done + r.delivery + r.first_output, s.resume);
    }

    #[test]
    fn a_missing_phase_is_an_error() {
        let mut p = phases();
        p.retain(|r| r.phase != HandoffPhase::Transfer);
        assert!(split(&p, 0.0, 1.0).unwrap_err().contains("transfer"));
        let mut p = phases();
        p.last_mut().unwrap().ended_at = None;
        assert!(
            resume_parts(&p, 0.0, 1.0, 2.0)
                .unwrap_err()
                .contains("done")
        );
    }

    #[test]
    fn every_bucket_says_what_it_covers() {
        for b in Bucket::ALL {
            assert!(!b.covers().is_empty(), "{}", b.name());
        }
        assert!(Bucket::Resume.covers().contains("activate"));
    }
}
