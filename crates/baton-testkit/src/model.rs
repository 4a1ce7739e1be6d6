//! A scripted streaming model server on loopback that speaks the three wire formats the provider CLIs use:
//! Anthropic `/v1/messages`, OpenAI `/v1/responses` and `/v1/chat/completions`, all as server-sent events.
//!
//! Replies are chosen from the last user text:
//!  - `ECHOFIRST` -> `First message was: <first real user text>` (injected blocks starting with `<` or
//!    `# AGENTS.md instructions` are skipped), which proves a resumed CLI resent its history;
//!  - `WRITEFILE <name> <content…>` -> a call of the CLI's own file-writing tool writing `<content>` to
//!    `<cwd>/<name>` (Claude `Write`, OpenCode `write`, Codex `apply_patch` or its exec tool);
//!  - `RUNCMD <command…>` -> a shell tool call (Claude `Bash`, OpenCode `bash`, Codex its exec tool);
//!  - `SLEEP <ms>` -> the same reply, after that long;
//!  - a request ending in a tool result -> `Wrote it.`; an OpenCode title request -> `Test title`;
//!  - anything else -> `Mock reply: <last user text>`.
//!
//! Requests without an API key (`x-api-key` or `Authorization: Bearer …`) get a 401, so a test can prove that a
//! credential reached the CLI. Every request is recorded.

mod script;
mod wire;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use script::{Conversation, Dialect};

/// One request the server received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method (`POST`, `GET`, `HEAD`, …).
    pub method: String,
    /// The request path without the query string, e.g. `/v1/messages`.
    pub path: String,
    /// The query string without `?` (empty when there was none), e.g. `beta=true`.
    pub query: String,
    /// The JSON body; `Value::Null` for an empty body, a `Value::String` for a body that is not JSON.
    pub body: Value,
    /// Request headers in arrival order, names in lower case.
    pub headers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The whole body as text (for "no old path appears anywhere" assertions).
    pub fn body_text(&self) -> String {
        match &self.body {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }

    /// The value of a header (case-insensitive name), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a generation request (messages, responses or chat completions), not a side endpoint.
    pub fn is_generation(&self) -> bool {
        dialect_of(&self.path).is_some()
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    next_id: AtomicU64,
}

/// A streaming model server on 127.0.0.1 (random port) with scripted replies; see the module docs.
pub struct ModelServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl ModelServer {
    /// Starts it on a tokio runtime of its own (usable from sync and async tests).
    pub fn start() -> std::io::Result<ModelServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("baton-testkit-model")
            .enable_all()
            .build()?;
        let shared = Arc::new(Shared::default());
        let app_shared = Arc::clone(&shared);
        let app = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let shared = Arc::clone(&app_shared);
                async move { handle(shared, method, uri, headers, body).await }
            },
        );
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "mock model server stopped");
            }
        });
        Ok(ModelServer {
            addr,
            shared,
            runtime: Some(runtime),
        })
    }

    /// `http://127.0.0.1:PORT` (no trailing slash, no /v1).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The requests whose path ends with `path_suffix` (e.g. `"/messages"`, `"/responses"`, `"/chat/completions"`).
    pub fn requests_to(&self, path_suffix: &str) -> Vec<RecordedRequest> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.path.ends_with(path_suffix))
            .cloned()
            .collect()
    }

    /// Forgets the requests recorded so far.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // shutdown_background also works when the server is dropped inside another runtime.
            rt.shutdown_background();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking test thread must not hide the requests from the rest of the test.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn dialect_of(path: &str) -> Option<Dialect> {
    if path.ends_with("/messages") {
        Some(Dialect::Anthropic)
    } else if path.ends_with("/responses") {
        Some(Dialect::Responses)
    } else if path.ends_with("/chat/completions") {
        Some(Dialect::Chat)
    } else {
        None
    }
}

fn has_key(headers: &HeaderMap) -> bool {
    let nonempty = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| !v.trim().is_empty())
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| !k.trim().is_empty());
    nonempty("x-api-key") || bearer
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn unauthorized(anthropic: bool) -> Response {
    let body = if anthropic {
        json!({"type": "error", "error": {"type": "authentication_error", "message": "mock model server: no API key sent"}})
    } else {
        json!({"error": {"message": "mock model server: no API key sent", "type": "invalid_request_error",
                         "param": null, "code": "invalid_api_key"}})
    };
    json_response(StatusCode::UNAUTHORIZED, &body)
}

async fn handle(
    shared: Arc<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let parsed: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    let recorded = RecordedRequest {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().unwrap_or_default().to_owned(),
        body: parsed.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    lock(&shared.requests).push(recorded);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::debug!(%method, %path, "mock model request");

    if method == Method::HEAD || method == Method::OPTIONS {
        return StatusCode::OK.into_response();
    }
    let anthropic = headers.contains_key("anthropic-version") || path.contains("/messages");
    if path.ends_with("/messages/count_tokens") {
        if !has_key(&headers) {
            return unauthorized(true);
        }
        return json_response(
            StatusCode::OK,
            &json!({"input_tokens": wire::tokens(&parsed.to_string())}),
        );
    }
    if path.ends_with("/models") || path.contains("/models/") {
        if !has_key(&headers) {
            return unauthorized(anthropic);
        }
        return json_response(StatusCode::OK, &models_list());
    }
    let Some(dialect) = dialect_of(&path) else {
        return json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": {"message": format!("mock: no route {path}")}}),
        );
    };
    if !has_key(&headers) {
        return unauthorized(dialect == Dialect::Anthropic);
    }
    let conv = Conversation::parse(dialect, &parsed);
    let plan = conv.plan(dialect);
    let model = parsed
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-model")
        .to_owned();
    let input_tokens = wire::tokens(&parsed.to_string());
    let stream = parsed
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if !stream {
        if let Some(d) = plan.delay {
            tokio::time::sleep(d).await;
        }
        let body = match dialect {
            Dialect::Anthropic => wire::anthropic_json(&plan.reply, id, &model, input_tokens),
            Dialect::Responses => wire::responses_json(&plan.reply, id, &model, input_tokens),
            Dialect::Chat => wire::chat_json(&plan.reply, id, &model, input_tokens),
        };
        return json_response(StatusCode::OK, &body);
    }
    let (head, rest) = match dialect {
        Dialect::Anthropic => wire::anthropic_stream(&plan.reply, id, &model, input_tokens),
        Dialect::Responses => wire::responses_stream(&plan.reply, id, &model, input_tokens),
        Dialect::Chat => wire::chat_stream(&plan.reply, id, &model, input_tokens),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let delay = plan.delay;
    tokio::spawn(async move {
        for f in head {
            if tx.send(Bytes::from(f)).await.is_err() {
                return;
            }
        }
        if let Some(d) = delay {
            // Stop early when the client goes away (an interrupted CLI closes the connection).
            tokio::select! {
                () = tokio::time::sleep(d) => {}
                () = tx.closed() => return,
            }
        }
        for f in rest {
            if tx.send(Bytes::from(f)).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, Infallible>(b), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("request-id", format!("req_mock{id}"))
        .header("x-request-id", format!("req_mock{id}"))
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// A model list in both the OpenAI (`data`) and the Codex (`models`) shape, so either parser finds a list.
fn models_list() -> Value {
    let ids = ["gpt-5.5", "mock-model", "claude-sonnet-4-5"];
    json!({
        "object": "list",
        "data": ids.iter().map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "mock",
                                           "type": "model", "display_name": id})).collect::<Vec<_>>(),
        "models": [],
        "has_more": false,
    })
}
