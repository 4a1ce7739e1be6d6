//! Output and errors of the CLI: one JSON document with `--json`, short plain text otherwise;
//! errors on stderr with their code and the next step.

use baton_daemon::client::ClientError;
use baton_proto::{ApiError, ErrorCode};
use serde::Serialize;

/// Exit code: done.
pub const EXIT_OK: i32 = 0;
/// Exit code: failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: usage error.
pub const EXIT_USAGE: i32 = 2;
/// Exit code: refused by preflight; nothing changed.
pub const EXIT_REFUSED: i32 = 3;

/// A CLI failure.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A protocol error (from the server or a daemon).
    #[error("{0}")]
    Api(ApiError),
    /// A protocol error already printed as part of the command's JSON document (only the exit
    /// code and the stderr line remain to be given).
    #[error("{0}")]
    Reported(ApiError),
    /// The arguments were wrong.
    #[error("{0}")]
    Usage(String),
    /// Anything else.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Api(a) => Self::Api(a),
            other => Self::Other(anyhow::Error::new(other)),
        }
    }
}

impl From<baton_daemon::identity::IdentityError> for CliError {
    fn from(e: baton_daemon::identity::IdentityError) -> Self {
        Self::Other(anyhow::Error::new(e))
    }
}

impl From<baton_crypto::CryptoError> for CliError {
    fn from(e: baton_crypto::CryptoError) -> Self {
        Self::Other(anyhow::Error::new(e))
    }
}

/// Result of a command.
pub type CliResult<T = ()> = Result<T, CliError>;

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot render JSON: {e}"),
    }
}

/// Prints the error on stderr (as JSON on stdout with `--json`) and returns the exit code.
pub fn report_error(e: &CliError, json: bool) -> i32 {
    let (code, message, exit) = match e {
        CliError::Api(a) | CliError::Reported(a) => (
            a.code.as_str().to_string(),
            a.message.clone(),
            if a.code.is_refusal() {
                EXIT_REFUSED
            } else {
                EXIT_FAILED
            },
        ),
        CliError::Usage(m) => ("usage".to_string(), m.clone(), EXIT_USAGE),
        CliError::Other(err) => ("error".to_string(), format!("{err:#}"), EXIT_FAILED),
    };
    if json && !matches!(e, CliError::Reported(_)) {
        print_json(&serde_json::json!({ "error": { "code": code, "message": message } }));
    }
    eprintln!("error [{code}]: {message}");
    exit
}

/// An API error for a code with a first sentence.
pub fn api_error(code: ErrorCode, what: impl Into<String>) -> CliError {
    CliError::Api(ApiError::new(code, what))
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_795_600_000_000), "2026-11-25 09:46:40");
    }
}
