//! The Baton server: HTTP API and WebSocket hub, authentication of machines, routing of commands
//! to daemons, and the durable handoff coordinator.
//!
//! The server never sees plaintext: transcript entries, session metadata, handoff paths and
//! provider state arrive sealed and are stored and relayed as they are. It holds public keys,
//! ownership, ordering and timing only.

pub mod api;
pub mod auth;
pub mod error;
pub mod handoff;
pub mod hub;
pub mod library;
pub mod transfer;
pub mod web;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::serve::ListenerExt;
use baton_proto::{MAX_BUNDLE_BYTES, MAX_JSON_BODY};
use baton_store::{PostgresStore, SqliteStore, Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use handoff::Timeouts;
pub use hub::Hub;
pub use transfer::{TransferLimits, TransferRegistry};

/// Shared state of all handlers.
pub struct AppState {
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Live connections.
    pub hub: Hub,
    /// Handoff phase timeouts.
    pub timeouts: Timeouts,
    /// Whether `POST /v1/accounts` is allowed.
    pub open_registration: bool,
    /// Workspace transfers in progress and their limits.
    pub transfers: TransferRegistry,
    /// Handoffs waiting for a client's go-ahead on their workspace plan.
    pub confirmations: handoff::Confirmations,
}

/// How to run a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory for the SQLite database (ignored with `database_url`).
    pub data_dir: PathBuf,
    /// PostgreSQL URL; SQLite in `data_dir` when absent.
    pub database_url: Option<String>,
    /// Accept new accounts.
    pub open_registration: bool,
    /// Limits of workspace transfers (`--transfer-max-bytes`, `--transfer-max-concurrent`).
    pub transfers: TransferLimits,
}

/// Errors of starting a server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    /// The data directory or socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Opens the configured store (SQLite file `baton.db` in the data dir, or PostgreSQL).
pub async fn open_store(config: &ServerConfig) -> Result<Arc<dyn Store>, StartError> {
    match &config.database_url {
        Some(url) => Ok(Arc::new(PostgresStore::connect(url).await?)),
        None => {
            std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::Io {
                context: format!("creating data dir {}", config.data_dir.display()),
                source,
            })?;
            Ok(Arc::new(
                SqliteStore::open(&config.data_dir.join("baton.db")).await?,
            ))
        }
    }
}

/// The `/v1` router, and the web UI at `/`.
pub fn router(state: Arc<AppState>) -> Router {
    let bundle = Router::new()
        .route(
            "/v1/handoffs/{id}/bundle",
            put(api::put_bundle).get(api::get_bundle),
        )
        .layer(DefaultBodyLimit::max(MAX_BUNDLE_BYTES));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(web::index))
        .route("/ui/{*path}", get(web::asset))
        .route("/v1/accounts", post(api::create_account))
        .route("/v1/auth/challenge", post(auth::challenge))
        .route("/v1/auth/token", post(auth::token))
        .route("/v1/pairings", post(api::create_pairing))
        .route("/v1/pairings/{id}/claim", post(api::claim_pairing))
        .route("/v1/machines", get(api::machines))
        .route(
            "/v1/machines/{id}/provider-sessions",
            get(library::provider_sessions),
        )
        .route("/v1/services", get(library::services))
        .route(
            "/v1/settings/{name}",
            get(library::setting).put(library::put_setting),
        )
        .route(
            "/v1/services/{provider}",
            put(library::put_service).delete(library::delete_service),
        )
        .route(
            "/v1/sessions/{id}/direct-transcript",
            get(library::direct_transcript),
        )
        .route(
            "/v1/sessions/{id}/permissions/{seq}",
            post(library::answer_permission),
        )
        .route("/v1/sessions", get(api::sessions).post(api::create_session))
        .route("/v1/sessions/{id}", get(api::session))
        .route("/v1/sessions/{id}/meta", put(api::update_meta))
        .route("/v1/sessions/{id}/stop", post(api::stop_session))
        .route("/v1/sessions/{id}/inputs", post(api::send_input))
        .route("/v1/sessions/{id}/inputs/pending", get(api::pending_inputs))
        .route("/v1/sessions/{id}/inputs/{input}", get(api::input))
        .route(
            "/v1/sessions/{id}/entries",
            get(api::entries).post(api::append_entries),
        )
        .route(
            "/v1/sessions/{id}/handoffs",
            get(api::handoffs).post(api::create_handoff),
        )
        .route("/v1/handoffs/{id}", get(api::handoff))
        .route("/v1/handoffs/{id}/confirm", post(api::confirm_handoff))
        .route("/v1/handoffs/{id}/progress", post(api::handoff_progress))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/transfers/{id}/ws", get(transfer::upgrade))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .merge(bundle)
        .with_state(state)
}

/// Serves on `listener` until `shutdown` fires. Resumes unfinished handoffs first.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    match handoff::resume_unfinished(&state).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(count = n, "resuming unfinished handoffs"),
        Err(e) => tracing::error!(error = %e, "could not read unfinished handoffs"),
    }
    spawn_purge(state.clone());
    // Small request/response frames: Nagle plus delayed ACKs would add ~40 ms to each.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let served = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    state.store.close().await;
    served.map_err(|source| StartError::Io {
        context: "serving HTTP".into(),
        source,
    })
}

/// Every few minutes, deletes expired login challenges, tokens and pairing offers.
fn spawn_purge(state: Arc<AppState>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(300));
        loop {
            every.tick().await;
            match state.store.purge_expired(baton_proto::now_millis()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(rows = n, "purged expired credentials"),
                Err(e) => tracing::warn!(error = %e, "purging expired credentials failed"),
            }
        }
    });
}

/// Opens the store, binds the address and serves until `shutdown`; calls `on_ready` with the
/// bound address once it accepts connections.
pub async fn run(
    config: ServerConfig,
    shutdown: CancellationToken,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), StartError> {
    let store = open_store(&config).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Io {
            context: format!("binding {}", config.listen),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Io {
        context: "reading the bound address".into(),
        source,
    })?;
    let state = Arc::new(AppState {
        store,
        hub: Hub::default(),
        timeouts: Timeouts::default(),
        open_registration: config.open_registration,
        transfers: TransferRegistry::new(config.transfers),
        confirmations: handoff::Confirmations::default(),
    });
    on_ready(addr);
    serve(listener, state, shutdown).await
}
