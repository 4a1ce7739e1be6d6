//! The authenticated client of a Baton server, shared by the daemon and the CLI: HTTP calls with a
//! cached bearer token (renewed by a signed challenge) and the WebSocket.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};

use baton_crypto::{DataKey, SessionCipher};
use baton_proto::api::{
    ChallengeRequest, ChallengeResponse, TokenRequest, TokenResponse, auth_message,
};
use baton_proto::{ApiError, Bytes, ErrorCode, MAX_WS_MESSAGE, Millis, SessionRecord, now_millis};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::identity::{Identity, write_atomic};

/// A WebSocket to the server.
pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Errors of server calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused with a protocol error.
    #[error("{0}")]
    Api(ApiError),
    /// The server could not be reached or the connection broke.
    #[error("cannot reach the server at {url}: {detail}")]
    Unreachable {
        /// Server URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The answer was not what the protocol says.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// Sealed data did not open with this account's keys.
    #[error("cannot decrypt: {0}")]
    Crypto(#[from] baton_crypto::CryptoError),
}

impl ClientError {
    /// The protocol error code, if the server gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api(e) => Some(e.code),
            _ => None,
        }
    }

    /// As a wire error (for replies to the server).
    pub fn to_api(&self) -> ApiError {
        match self {
            Self::Api(e) => e.clone(),
            Self::Unreachable { .. } => ApiError::new(ErrorCode::Timeout, self.to_string()),
            other => ApiError::new(ErrorCode::Internal, other.to_string()),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CachedToken {
    token: String,
    expires_at: Millis,
}

fn install_tls_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Another component may have installed one already; either is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An unauthenticated call (account creation, pairing claim).
pub async fn post_anonymous<B: Serialize, T: DeserializeOwned>(
    server: &str,
    path: &str,
    body: &B,
) -> Result<T, ClientError> {
    install_tls_provider();
    let http = reqwest::Client::builder()
        .build()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let url = format!("{}{}", server.trim_end_matches('/'), path);
    let resp = http
        .post(&url)
        .json(body)
        .send()
        .await
        .map_err(|e| ClientError::Unreachable {
            url: server.to_string(),
            detail: e.to_string(),
        })?;
    decode(server, resp).await
}

async fn decode<T: DeserializeOwned>(
    server: &str,
    resp: reqwest::Response,
) -> Result<T, ClientError> {
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
        url: server.to_string(),
        detail: e.to_string(),
    })?;
    if status.is_success() {
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    } else {
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(e) => Err(ClientError::Api(e)),
            Err(_) => Err(ClientError::Protocol(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))),
        }
    }
}

/// An authenticated client for one machine identity.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    identity: Arc<Identity>,
    token: Arc<Mutex<Option<CachedToken>>>,
    token_path: Option<PathBuf>,
}

impl Client {
    /// A client for `identity`; caches its token in `baton_home/token.json` when given.
    pub fn new(identity: Arc<Identity>, baton_home: Option<PathBuf>) -> Result<Self, ClientError> {
        install_tls_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let token_path = baton_home.map(|h| h.join("token.json"));
        let cached = token_path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<CachedToken>(&b).ok());
        Ok(Self {
            http,
            base: identity.config.server.trim_end_matches('/').to_string(),
            identity,
            token: Arc::new(Mutex::new(cached)),
            token_path,
        })
    }

    /// The identity this client acts as.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The server's base URL.
    pub fn server(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            detail: e.to_string(),
        }
    }

    fn cached_token(&self) -> Option<String> {
        let guard = self.token.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .filter(|t| t.expires_at > now_millis() + 60_000)
            .map(|t| t.token.clone())
    }

    fn forget_token(&self) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// A valid bearer token, logging in with a signed challenge when needed.
    pub async fn token(&self) -> Result<String, ClientError> {
        if let Some(t) = self.cached_token() {
            return Ok(t);
        }
        let machine_id = self.identity.config.machine_id;
        let ch: ChallengeResponse = post_json(
            &self.http,
            &self.base,
            "/v1/auth/challenge",
            &ChallengeRequest { machine_id },
        )
        .await?;
        let signature = self
            .identity
            .keys
            .sign(&auth_message(&ch.nonce.0, machine_id));
        let tok: TokenResponse = post_json(
            &self.http,
            &self.base,
            "/v1/auth/token",
            &TokenRequest {
                machine_id,
                nonce: ch.nonce,
                signature: Bytes(signature.to_vec()),
            },
        )
        .await?;
        let cached = CachedToken {
            token: tok.token.clone(),
            expires_at: tok.expires_at,
        };
        if let Some(path) = &self.token_path
            && let Ok(bytes) = serde_json::to_vec(&cached)
            && let Err(e) = write_atomic(path, &bytes, 0o600)
        {
            tracing::debug!(error = %e, "could not cache the token");
        }
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(cached);
        Ok(tok.token)
    }

    async fn send(
        &self,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let resp = build(&self.http, &self.base)
                .bearer_auth(&token)
                .send()
                .await
                .map_err(|e| self.unreachable(e))?;
            // A token the server forgot (e.g. a new server) is renewed once.
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                self.forget_token();
                continue;
            }
            return Ok(resp);
        }
        Err(ClientError::Protocol("authentication loop".into()))
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send(|h, b| h.get(format!("{b}{path}"))).await?;
        decode(&self.base, resp).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let resp = self
            .send(|h, b| h.post(format!("{b}{path}")).json(body))
            .await?;
        decode(&self.base, resp).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let resp = self
            .send(|h, b| h.put(format!("{b}{path}")).json(body))
            .await?;
        decode(&self.base, resp).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        let resp = self.send(|h, b| h.delete(format!("{b}{path}"))).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        decode::<serde_json::Value>(&self.base, resp)
            .await
            .map(|_| ())
    }

    /// `PUT path` with raw bytes.
    pub async fn put_bytes(&self, path: &str, bytes: Vec<u8>) -> Result<(), ClientError> {
        let resp = self
            .send(|h, b| h.put(format!("{b}{path}")).body(bytes.clone()))
            .await?;
        if resp.status().is_success() {
            return Ok(());
        }
        decode::<serde_json::Value>(&self.base, resp)
            .await
            .map(|_| ())
    }

    /// `GET path` returning raw bytes.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        let resp = self.send(|h, b| h.get(format!("{b}{path}"))).await?;
        if resp.status().is_success() {
            return resp
                .bytes()
                .await
                .map(|b| b.to_vec())
                .map_err(|e| self.unreachable(e));
        }
        decode::<serde_json::Value>(&self.base, resp)
            .await
            .map(|_| Vec::new())
    }

    /// Opens the WebSocket (`/v1/ws`).
    pub async fn connect_ws(&self) -> Result<WsStream, ClientError> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_WS_MESSAGE))
            .max_frame_size(Some(MAX_WS_MESSAGE));
        self.connect_ws_at("/v1/ws", config).await
    }

    /// Opens an authenticated WebSocket at `path` (with its query) under the server's base URL.
    /// A refusal the server explains in JSON becomes [`ClientError::Api`].
    pub async fn connect_ws_at(
        &self,
        path: &str,
        config: WebSocketConfig,
    ) -> Result<WsStream, ClientError> {
        let token = self.token().await?;
        let ws_url = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}{path}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}{path}")
        } else {
            return Err(ClientError::Protocol(format!(
                "server URL {} must start with http:// or https://",
                self.base
            )));
        };
        let mut req = ws_url
            .into_client_request()
            .map_err(|e| self.unreachable(e))?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Protocol("token is not a valid header".into()))?;
        req.headers_mut().insert("authorization", value);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true)
            .await
            .map_err(|e| {
                if let tokio_tungstenite::tungstenite::Error::Http(resp) = &e {
                    if resp.status() == 401 {
                        self.forget_token();
                    }
                    if let Some(api) = resp
                        .body()
                        .as_deref()
                        .and_then(|b| serde_json::from_slice::<ApiError>(b).ok())
                    {
                        return ClientError::Api(api);
                    }
                }
                self.unreachable(e)
            })?;
        Ok(ws)
    }

    /// The cipher of a session: its data key opened with the account secret.
    pub fn cipher(&self, session: &SessionRecord) -> Result<SessionCipher, ClientError> {
        let key = DataKey::open_under(&self.identity.secret, session.id, &session.sealed_key)?;
        Ok(SessionCipher::new(key, session.id))
    }
}

async fn post_json<B: Serialize, T: DeserializeOwned>(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    body: &B,
) -> Result<T, ClientError> {
    let resp = http
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .map_err(|e| ClientError::Unreachable {
            url: base.to_string(),
            detail: e.to_string(),
        })?;
    decode(base, resp).await
}
