//! The handoff state machine as a pure function: given where a handoff is and how the last step
//! went, what happens next. The coordinator does the I/O around it.

use baton_proto::{ErrorCode, HandoffPhase, HandoffResult};

/// What the coordinator does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Run this phase.
    Run(HandoffPhase),
    /// Roll back: owner unchanged, target staging dropped, source resumes.
    Abort(ErrorCode),
    /// Record the end (successful, or failed after commit with the error).
    Finish(Option<ErrorCode>),
}

/// How a phase ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It did its work.
    Ok,
    /// It failed with this code.
    Failed(ErrorCode),
}

/// The step after `phase` ended with `outcome`.
///
/// Before the commit transaction every failure aborts (nothing has moved). The commit itself
/// fails only when the session's epoch or owner moved underneath it (abort) — a storage error is
/// retried by the caller and never reaches here. After commit there is no going back: a failed
/// activation finishes with the error (the target owns a stopped session), and a failed cleanup
/// on the source finishes successfully, since the session already runs on the target.
/// `precopy` runs only for a handoff that moves the workspace.
pub fn after(phase: HandoffPhase, outcome: Outcome, workspace: bool) -> Step {
    match (phase, outcome) {
        (HandoffPhase::Done, _) => Step::Finish(None),
        (HandoffPhase::Activate, Outcome::Failed(code)) => Step::Finish(Some(code)),
        (_, Outcome::Failed(code)) => Step::Abort(code),
        (p, Outcome::Ok) => match p.next() {
            Some(HandoffPhase::Precopy) if !workspace => Step::Run(HandoffPhase::QuiesceSource),
            Some(next) => Step::Run(next),
            None => Step::Finish(None),
        },
    }
}

/// The step for a handoff found unfinished when the server starts: one that had not committed
/// is aborted (its participants may have lost their in-memory part of it); one that committed
/// goes on with activation, or with cleanup if activation had finished.
pub fn on_restart(phase: HandoffPhase, result: HandoffResult) -> Step {
    match result {
        HandoffResult::Active => Step::Abort(ErrorCode::Interrupted),
        HandoffResult::Committed if phase <= HandoffPhase::Activate => {
            Step::Run(HandoffPhase::Activate)
        }
        HandoffResult::Committed => Step::Run(HandoffPhase::Done),
        HandoffResult::Aborted => Step::Finish(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn happy_path(workspace: bool) -> Vec<HandoffPhase> {
        let mut phase = HandoffPhase::Requested;
        let mut visited = vec![phase];
        loop {
            match after(phase, Outcome::Ok, workspace) {
                Step::Run(next) => {
                    visited.push(next);
                    phase = next;
                }
                Step::Finish(None) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        visited
    }

    #[test]
    fn happy_path_visits_every_phase_in_order() {
        assert_eq!(happy_path(true), HandoffPhase::ALL.to_vec());
        let without: Vec<_> = HandoffPhase::ALL
            .into_iter()
            .filter(|p| *p != HandoffPhase::Precopy)
            .collect();
        assert_eq!(happy_path(false), without);
    }

    #[test]
    fn every_failure_before_commit_aborts_with_its_code() {
        for phase in HandoffPhase::ALL {
            if phase > HandoffPhase::Commit {
                continue;
            }
            assert_eq!(
                after(phase, Outcome::Failed(ErrorCode::TargetOffline), true),
                Step::Abort(ErrorCode::TargetOffline),
                "{phase:?}"
            );
        }
    }

    #[test]
    fn failures_after_commit_never_abort() {
        assert_eq!(
            after(
                HandoffPhase::Activate,
                Outcome::Failed(ErrorCode::ActivateFailed),
                true
            ),
            Step::Finish(Some(ErrorCode::ActivateFailed))
        );
        assert_eq!(
            after(
                HandoffPhase::Done,
                Outcome::Failed(ErrorCode::Timeout),
                false
            ),
            Step::Finish(None)
        );
    }

    #[test]
    fn restart_aborts_uncommitted_and_continues_committed() {
        for phase in HandoffPhase::ALL {
            assert_eq!(
                on_restart(phase, HandoffResult::Active),
                Step::Abort(ErrorCode::Interrupted)
            );
        }
        assert_eq!(
            on_restart(HandoffPhase::Commit, HandoffResult::Committed),
            Step::Run(HandoffPhase::Activate)
        );
        assert_eq!(
            on_restart(HandoffPhase::Activate, HandoffResult::Committed),
            Step::Run(HandoffPhase::Activate)
        );
        assert_eq!(
            on_restart(HandoffPhase::Done, HandoffResult::Committed),
            Step::Run(HandoffPhase::Done)
        );
    }
}
