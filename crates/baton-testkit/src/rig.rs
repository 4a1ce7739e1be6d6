//! Simulated machines: per-HOME provider configuration that points the real CLIs at the mock model server with no
//! network, and the environment their processes need.

use std::path::Path;

/// Whether a simulated machine's provider login is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// Machine-local logins are written (Codex and OpenCode `auth.json`, Claude's env key).
    LoggedIn,
    /// No machine-local login; a connected service must inject a key ([`service_env`]).
    LoggedOut,
}

/// The key every fake login uses.
pub const TEST_KEY: &str = "test";

/// Environment variable names to remove from every provider process in tests for isolation.
pub const ISOLATE: &[&str] = &[
    "XDG_CONFIG_HOME",
    "XDG_DATA_HOME",
    "XDG_CACHE_HOME",
    "XDG_STATE_HOME",
    "CLAUDE_CONFIG_DIR",
    "CLAUDECODE",
    "CLAUDE_CODE_ENTRYPOINT",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "CLAUDE_CODE_USE_BEDROCK",
    "CLAUDE_CODE_USE_VERTEX",
    "CLAUDE_CODE_SSE_PORT",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_MODEL",
    "CODEX_HOME",
    "CODEX_API_KEY",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENCODE",
    "OPENCODE_CONFIG",
    "OPENCODE_CONFIG_DIR",
    "OPENCODE_CONFIG_CONTENT",
    "OPENCODE_SERVER_PASSWORD",
    "OPENCODE_SERVER_USERNAME",
    "MOCK_API_KEY",
];

/// The Codex `config.toml` for a machine talking to `model_url` (every key accepted by `--strict-config`).
pub fn codex_config(model_url: &str) -> String {
    format!(
        r#"model = "gpt-5.5"
model_provider = "mock"
cli_auth_credentials_store = "file"

[model_providers.mock]
name = "mock"
base_url = "{model_url}/v1"
wire_api = "responses"
requires_openai_auth = true
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[features]
plugins = false
unbounded_connection_retries = false
"#
    )
}

/// The OpenCode config JSON for a machine talking to `model_url`.
pub fn opencode_config(model_url: &str) -> serde_json::Value {
    serde_json::json!({
        "model": "mock/mock-model",
        "autoupdate": false,
        "share": "disabled",
        "provider": {"mock": {
            "npm": "@ai-sdk/openai-compatible",
            "name": "Mock",
            "env": ["MOCK_API_KEY"],
            "options": {"baseURL": format!("{model_url}/v1")},
            "models": {"mock-model": {"name": "Mock model"}},
        }},
    })
}

/// Prepares provider config under `home` for talking to `model_url` offline (Codex `~/.codex/config.toml` with a
/// `mock` provider, OpenCode `~/.config/opencode/opencode.json`), writes machine-local logins when `LoggedIn`
/// (Codex `~/.codex/auth.json` 0600, OpenCode `~/.local/share/opencode/auth.json` 0600; `LoggedOut` removes them),
/// and returns the environment a provider process on that machine needs: PATH with the CLIs first,
/// ANTHROPIC_BASE_URL, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1, CLAUDE_CODE_MAX_RETRIES=0,
/// OPENCODE_DISABLE_MODELS_FETCH=1, OPENCODE_DISABLE_AUTOUPDATE=1, and when `LoggedIn` ANTHROPIC_API_KEY=test
/// (Claude's login is an env key here). Does not set HOME.
///
/// Panics when `home` cannot be written (test setup failure).
pub fn machine_env(
    clis: &super::clis::Clis,
    model_url: &str,
    home: &Path,
    login: Login,
) -> Vec<(String, String)> {
    let codex = home.join(".codex");
    let oc_config = home.join(".config/opencode");
    let oc_data = home.join(".local/share/opencode");
    for dir in [&codex, &oc_config, &oc_data] {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    }
    write(&codex.join("config.toml"), &codex_config(model_url), 0o644);
    let oc = serde_json::to_string_pretty(&opencode_config(model_url))
        .expect("a json! value serializes");
    write(&oc_config.join("opencode.json"), &oc, 0o644);
    let codex_auth = codex.join("auth.json");
    let oc_auth = oc_data.join("auth.json");
    match login {
        Login::LoggedIn => {
            write(
                &codex_auth,
                &serde_json::json!({"OPENAI_API_KEY": TEST_KEY}).to_string(),
                0o600,
            );
            write(
                &oc_auth,
                &serde_json::json!({"mock": {"type": "api", "key": TEST_KEY}}).to_string(),
                0o600,
            );
        }
        Login::LoggedOut => {
            for f in [&codex_auth, &oc_auth] {
                match std::fs::remove_file(f) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("cannot remove {}: {e}", f.display()),
                }
            }
        }
    }
    let mut env = vec![
        (
            "PATH".to_owned(),
            clis.path_var().to_string_lossy().into_owned(),
        ),
        ("ANTHROPIC_BASE_URL".to_owned(), model_url.to_owned()),
        (
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".to_owned(),
            "1".to_owned(),
        ),
        ("CLAUDE_CODE_MAX_RETRIES".to_owned(), "0".to_owned()),
        ("OPENCODE_DISABLE_MODELS_FETCH".to_owned(), "1".to_owned()),
        ("OPENCODE_DISABLE_AUTOUPDATE".to_owned(), "1".to_owned()),
        // OpenCode looks up `@opencode-ai/plugin` on the npm registry with no switch to stop it; a closed loopback
        // port makes that fail at once instead of leaving the machine.
        (
            "NPM_CONFIG_REGISTRY".to_owned(),
            "http://127.0.0.1:9/".to_owned(),
        ),
    ];
    if login == Login::LoggedIn {
        env.push(("ANTHROPIC_API_KEY".to_owned(), TEST_KEY.to_owned()));
    }
    env
}

/// Env that a *connected service* would add per provider so a LoggedOut machine works:
/// claude -> ANTHROPIC_API_KEY, codex -> CODEX_API_KEY, opencode -> MOCK_API_KEY (the mock provider's env key).
pub fn service_env(provider: &str) -> Vec<(String, String)> {
    let var = match provider {
        "claude" => "ANTHROPIC_API_KEY",
        "codex" => "CODEX_API_KEY",
        "opencode" => "MOCK_API_KEY",
        _ => return Vec::new(),
    };
    vec![(var.to_owned(), TEST_KEY.to_owned())]
}

/// Writes a whole file with the given mode (the mode is set before any content lands, so a key is never readable).
fn write(path: &Path, content: &str, mode: u32) {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let result = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| {
            // `mode` only applies on creation; an existing file keeps its old bits otherwise.
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.write_all(content.as_bytes())
        });
    result.unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
