//! Reading a provider process's output: capped lines from stdout and the last lines of stderr
//! for the error entry when it dies. Shared by every adapter.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::task::JoinHandle;

use crate::AgentEvent;

/// Longest stderr line kept in the tail (the rest of the line is cut).
const MAX_STDERR_LINE: usize = 4096;
/// Stderr lines kept for the `Exited` event.
const STDERR_TAIL_LINES: usize = 20;

/// Reads newline-terminated lines with a length cap. Cancel-safe: bytes taken from the reader
/// are kept in `self` until a whole line is returned, so a dropped `next_line` future loses
/// nothing (the daemon may `select!` on [`AgentSession::next_event`]).
pub(crate) struct LineReader<R> {
    inner: BufReader<R>,
    partial: Vec<u8>,
    /// True while skipping the rest of an over-long line.
    skipping: bool,
    max: usize,
    /// Over-long lines: keep their first `max` bytes (true) or drop them (false).
    truncate: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Wraps `inner`, accepting lines up to `max` bytes and dropping longer ones.
    pub(crate) fn new(inner: R, max: usize) -> Self {
        Self {
            inner: BufReader::new(inner),
            partial: Vec::new(),
            skipping: false,
            max,
            truncate: false,
        }
    }

    /// Wraps `inner`, cutting lines after `max` bytes.
    pub(crate) fn truncating(inner: R, max: usize) -> Self {
        Self {
            truncate: true,
            ..Self::new(inner, max)
        }
    }

    /// The next line (without its newline, lossily decoded); `None` at EOF or on a read error.
    pub(crate) async fn next_line(&mut self) -> Option<String> {
        loop {
            let buf = match self.inner.fill_buf().await {
                Ok([]) | Err(_) => {
                    if self.partial.is_empty() {
                        return None;
                    }
                    return Some(self.take_line());
                }
                Ok(buf) => buf,
            };
            let (used, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(nl) => (nl + 1, Some(nl)),
                None => (buf.len(), None),
            };
            let chunk = &buf[..done.unwrap_or(used)];
            if !self.skipping {
                let room = self.max.saturating_sub(self.partial.len());
                if chunk.len() > room {
                    if self.truncate {
                        self.partial.extend_from_slice(&chunk[..room]);
                    } else {
                        tracing::warn!(max = self.max, "provider output line too long, dropped");
                        self.partial.clear();
                    }
                    self.skipping = true;
                } else {
                    self.partial.extend_from_slice(chunk);
                }
            }
            self.inner.consume(used);
            if done.is_some() {
                if std::mem::take(&mut self.skipping) && !self.truncate {
                    continue;
                }
                return Some(self.take_line());
            }
        }
    }

    fn take_line(&mut self) -> String {
        let line = std::mem::take(&mut self.partial);
        String::from_utf8(line).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
    }
}

/// The last lines of a process's stderr, filled by a background task.
#[derive(Clone, Default)]
pub(crate) struct StderrTail(Arc<Mutex<VecDeque<String>>>);

impl StderrTail {
    /// Starts collecting `stderr` on a task, keeping the lines `keep` accepts (it sees every
    /// line in order, so it may track state such as "inside a backtrace").
    pub(crate) fn collect<R: AsyncRead + Unpin + Send + 'static>(
        &self,
        stderr: R,
        provider: &'static str,
        mut keep: impl FnMut(&str) -> bool + Send + 'static,
    ) -> JoinHandle<()> {
        let tail = self.clone();
        tokio::spawn(async move {
            let mut lines = LineReader::truncating(stderr, MAX_STDERR_LINE);
            while let Some(line) = lines.next_line().await {
                tracing::debug!(target: "baton_providers::stderr", provider, "{line}");
                if !keep(&line) {
                    continue;
                }
                let mut q = tail.0.lock().unwrap_or_else(|p| p.into_inner());
                q.push_back(line);
                if q.len() > STDERR_TAIL_LINES {
                    q.pop_front();
                }
            }
        })
    }

    /// The collected lines, joined by newlines.
    pub(crate) fn text(&self) -> String {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

/// The `Exited` event of a process that ended with `status` (unknown when it could not be
/// reaped): its exit code, and its stderr tail with the signal that killed it, if one did.
pub(crate) fn exited(status: Option<ExitStatus>, mut stderr_tail: String) -> AgentEvent {
    if let Some(sig) = status.and_then(|s| s.signal()) {
        if !stderr_tail.is_empty() {
            stderr_tail.push('\n');
        }
        stderr_tail.push_str(&format!("terminated by signal {sig}"));
    }
    AgentEvent::Exited {
        code: status.and_then(|s| s.code()),
        stderr_tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn line_reader_caps_and_splits() {
        let data: &[u8] = b"one\ntoo-long-line\ntwo\nlast";
        let mut r = LineReader::new(data, 8);
        assert_eq!(r.next_line().await.as_deref(), Some("one"));
        assert_eq!(r.next_line().await.as_deref(), Some("two"));
        assert_eq!(r.next_line().await.as_deref(), Some("last"));
        assert_eq!(r.next_line().await, None);

        let mut r = LineReader::truncating(data, 8);
        assert_eq!(r.next_line().await.as_deref(), Some("one"));
        assert_eq!(r.next_line().await.as_deref(), Some("too-long"));
        assert_eq!(r.next_line().await.as_deref(), Some("two"));
        assert_eq!(r.next_line().await.as_deref(), Some("last"));
        assert_eq!(r.next_line().await, None);
    }

    #[tokio::test]
    async fn stderr_tail_keeps_the_last_lines_that_pass() {
        let text: String = (0..30).map(|i| format!("line {i}\n")).collect();
        let tail = StderrTail::default();
        tail.collect(std::io::Cursor::new(text.into_bytes()), "test", |l| {
            !l.ends_with('5')
        })
        .await
        .unwrap();
        let kept = tail.text();
        assert_eq!(kept.lines().count(), STDERR_TAIL_LINES);
        assert!(kept.ends_with("line 29"));
        assert!(!kept.contains("line 25"), "filtered out");
    }
}
