//! The server's error type and its HTTP rendering.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use baton_proto::{ApiError, ErrorCode};
use baton_store::StoreError;

/// An error answered to a client: a stable code and a message for a person.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServerError(pub ApiError);

impl ServerError {
    /// An error with `what` and the code's next step.
    pub fn new(code: ErrorCode, what: impl Into<String>) -> Self {
        Self(ApiError::new(code, what))
    }
}

impl From<ApiError> for ServerError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<StoreError> for ServerError {
    fn from(e: StoreError) -> Self {
        if matches!(e, StoreError::Database(_) | StoreError::Corrupt(_)) {
            tracing::error!(error = %e, "store failure");
        }
        Self(e.into())
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

/// Result type of handlers.
pub type ApiResult<T> = Result<T, ServerError>;
