//! Machine authentication: signed challenges → bearer tokens, and the `Caller` extractor.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use baton_proto::api::{
    ChallengeRequest, ChallengeResponse, TokenRequest, TokenResponse, auth_message,
};
use baton_proto::{AccountId, Bytes, ErrorCode, MachineId, now_millis};
use baton_store::TokenRow;

use crate::AppState;
use crate::error::{ApiResult, ServerError};

/// How long a challenge nonce stays valid.
const CHALLENGE_TTL_MS: i64 = 60_000;
/// How long a bearer token stays valid.
pub const TOKEN_TTL_MS: i64 = 24 * 3600 * 1000;

/// The authenticated machine behind a request.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// Its account; every query is scoped to it.
    pub account: AccountId,
    /// The machine.
    pub machine: MachineId,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random number generator failed");
    b
}

/// The stored form of a token: its BLAKE3 hash, so a leaked database holds no usable token.
pub fn token_hash(token: &str) -> Vec<u8> {
    blake3::hash(token.as_bytes()).as_bytes().to_vec()
}

/// `POST /v1/auth/challenge`.
pub async fn challenge(
    State(state): State<Arc<AppState>>,
    Json(req): Json<ChallengeRequest>,
) -> ApiResult<Json<ChallengeResponse>> {
    if state.store.machine(req.machine_id).await?.is_none() {
        return Err(ServerError::new(
            ErrorCode::Unauthorized,
            "This machine is not enrolled on this server.",
        ));
    }
    let nonce = random_bytes::<32>();
    state
        .store
        .put_challenge(&nonce, req.machine_id, now_millis() + CHALLENGE_TTL_MS)
        .await?;
    Ok(Json(ChallengeResponse {
        nonce: Bytes(nonce.to_vec()),
    }))
}

/// `POST /v1/auth/token`: verifies the signed challenge and issues a bearer token.
pub async fn token(
    State(state): State<Arc<AppState>>,
    Json(req): Json<TokenRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let denied = || ServerError::new(ErrorCode::Unauthorized, "The login challenge failed.");
    let now = now_millis();
    let machine_of_nonce = state.store.take_challenge(&req.nonce.0, now).await?;
    if machine_of_nonce != Some(req.machine_id) {
        return Err(denied());
    }
    let machine = state
        .store
        .machine(req.machine_id)
        .await?
        .ok_or_else(denied)?;
    baton_crypto::verify_signature(
        &machine.sign_pk,
        &auth_message(&req.nonce.0, req.machine_id),
        &req.signature.0,
    )
    .map_err(|_| denied())?;
    let token = hex(&random_bytes::<32>());
    let expires_at = now + TOKEN_TTL_MS;
    state
        .store
        .put_token(
            &token_hash(&token),
            &TokenRow {
                machine_id: machine.id,
                account_id: machine.account_id,
                expires_at,
            },
        )
        .await?;
    Ok(Json(TokenResponse {
        token,
        expires_at,
        account_id: machine.account_id,
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ServerError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        // Browsers cannot set headers on a WebSocket upgrade, so `?token=` is accepted too.
        let query = parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token=").map(str::to_string))
        });
        let Some(token) = header.or(query) else {
            return Err(ServerError::new(
                ErrorCode::Unauthorized,
                "No bearer token was sent.",
            ));
        };
        let row = state
            .store
            .token(&token_hash(&token), now_millis())
            .await?
            .ok_or_else(|| {
                ServerError::new(ErrorCode::Unauthorized, "The token is unknown or expired.")
            })?;
        Ok(Caller {
            account: row.account_id,
            machine: row.machine_id,
        })
    }
}
