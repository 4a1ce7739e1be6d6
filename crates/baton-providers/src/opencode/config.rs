//! Reading OpenCode's configuration and logins offline: which provider the default model uses,
//! and whether this machine has a credential for it (providers.md §4.5).

use std::path::{Path, PathBuf};

use baton_proto::AuthState;
use serde_json::Value;

use crate::ProviderEnv;

/// `$XDG_DATA_HOME/opencode`, else `~/.local/share/opencode`.
pub(super) fn data_dir(env: &ProviderEnv) -> PathBuf {
    xdg(env, "XDG_DATA_HOME", ".local/share").join("opencode")
}

/// `$XDG_CONFIG_HOME/opencode`, else `~/.config/opencode`.
pub(super) fn config_dir(env: &ProviderEnv) -> PathBuf {
    xdg(env, "XDG_CONFIG_HOME", ".config").join("opencode")
}

fn xdg(env: &ProviderEnv, var: &str, default: &str) -> PathBuf {
    env.var(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| env.home.join(default))
}

/// The merged configuration as OpenCode would see it outside any project: the global file
/// (`opencode.json`, `opencode.jsonc`, `config.json`), then `$OPENCODE_CONFIG`, then
/// `$OPENCODE_CONFIG_CONTENT`, later ones overriding earlier ones key by key. Unreadable or
/// malformed layers are skipped (OpenCode would refuse to start; detect only reports).
pub(super) fn load(env: &ProviderEnv) -> Value {
    let mut merged = Value::Object(Default::default());
    let dir = config_dir(env);
    for name in ["config.json", "opencode.json", "opencode.jsonc"] {
        if let Some(v) = read_jsonc_file(&dir.join(name)) {
            merge(&mut merged, v);
        }
    }
    if let Some(path) = env.var("OPENCODE_CONFIG")
        && let Some(v) = read_jsonc_file(Path::new(&path))
    {
        merge(&mut merged, v);
    }
    if let Some(text) = env.var("OPENCODE_CONFIG_CONTENT")
        && let Some(v) = parse_jsonc(&text)
    {
        merge(&mut merged, v);
    }
    merged
}

fn read_jsonc_file(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    let v = parse_jsonc(&text);
    if v.is_none() {
        tracing::debug!(path = %path.display(), "OpenCode config is not valid JSONC, skipped");
    }
    v
}

/// Deep-merges objects; anything else in `over` replaces what was there.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Parses JSON with comments (`//`, `/* */`) and trailing commas, as OpenCode's config allows.
pub(super) fn parse_jsonc(text: &str) -> Option<Value> {
    serde_json::from_str(&strip_jsonc(text)).ok()
}

/// Removes comments and trailing commas outside strings.
fn strip_jsonc(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' => {
                out.push(c);
                i += 1;
                while i < chars.len() {
                    out.push(chars[i]);
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        out.push(chars[i + 1]);
                        i += 2;
                        continue;
                    }
                    i += 1;
                    if chars[i - 1] == '"' {
                        break;
                    }
                }
            }
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i < chars.len() && !(chars[i] == '*' && chars.get(i + 1) == Some(&'/')) {
                    i += 1;
                }
                i += 2;
            }
            ',' => {
                // A comma followed (after whitespace and comments) by `}` or `]` is dropped.
                let mut j = i + 1;
                loop {
                    while j < chars.len() && chars[j].is_whitespace() {
                        j += 1;
                    }
                    if chars.get(j) == Some(&'/') && chars.get(j + 1) == Some(&'/') {
                        while j < chars.len() && chars[j] != '\n' {
                            j += 1;
                        }
                    } else if chars.get(j) == Some(&'/') && chars.get(j + 1) == Some(&'*') {
                        j += 2;
                        while j < chars.len()
                            && !(chars[j] == '*' && chars.get(j + 1) == Some(&'/'))
                        {
                            j += 1;
                        }
                        j += 2;
                    } else {
                        break;
                    }
                }
                if !matches!(chars.get(j), Some('}' | ']')) {
                    out.push(c);
                }
                i += 1;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The provider id of the configured default model (`"provider/model"` → `provider`).
pub(super) fn model_provider(config: &Value) -> Option<String> {
    let model = config.get("model")?.as_str()?;
    let (provider, _) = model.split_once('/')?;
    (!provider.is_empty()).then(|| provider.to_string())
}

/// Environment variable names that carry the key of `provider`: its `env` list in the config,
/// else the well-known name of a built-in provider.
pub(super) fn provider_env_vars(config: &Value, provider: &str) -> Vec<String> {
    let configured: Vec<String> = config
        .pointer(&format!("/provider/{}/env", escape_pointer(provider)))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if !configured.is_empty() {
        return configured;
    }
    // A few built-ins from the models.dev catalogue, which is not read offline.
    let known: &[&str] = match provider {
        "anthropic" => &["ANTHROPIC_API_KEY"],
        "openai" => &["OPENAI_API_KEY"],
        "opencode" => &["OPENCODE_API_KEY"],
        "openrouter" => &["OPENROUTER_API_KEY"],
        "google" => &["GOOGLE_GENERATIVE_AI_API_KEY", "GEMINI_API_KEY"],
        "groq" => &["GROQ_API_KEY"],
        "mistral" => &["MISTRAL_API_KEY"],
        "xai" => &["XAI_API_KEY"],
        "deepseek" => &["DEEPSEEK_API_KEY"],
        _ => &[],
    };
    known.iter().map(|s| s.to_string()).collect()
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The provider ids that have an entry in `auth.json` (or `$OPENCODE_AUTH_CONTENT`).
fn logins(env: &ProviderEnv) -> Vec<String> {
    let text = env
        .var("OPENCODE_AUTH_CONTENT")
        .or_else(|| std::fs::read_to_string(data_dir(env).join("auth.json")).ok());
    let Some(text) = text else {
        return Vec::new();
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(o)) => o
            .into_iter()
            .filter(|(_, v)| v.is_object())
            .map(|(k, _)| k)
            .collect(),
        _ => {
            tracing::debug!("OpenCode auth.json is not a JSON object, ignored");
            Vec::new()
        }
    }
}

/// Whether OpenCode on this machine has a credential for the configured model's provider: an
/// `auth.json` entry, a set variable from the provider's `env` list, or `options.apiKey` in its
/// config. Without a configured model OpenCode picks one from the providers it has keys for, so
/// any `auth.json` entry counts then.
pub(super) fn auth_state(env: &ProviderEnv) -> AuthState {
    let config = load(env);
    let logins = logins(env);
    let Some(provider) = model_provider(&config) else {
        return if logins.is_empty() {
            AuthState::Missing
        } else {
            AuthState::MachineLocal
        };
    };
    let inline_key = config
        .pointer(&format!(
            "/provider/{}/options/apiKey",
            escape_pointer(&provider)
        ))
        .and_then(Value::as_str)
        .is_some_and(|k| !k.is_empty());
    let env_key = provider_env_vars(&config, &provider)
        .iter()
        .any(|name| env.var(name).is_some());
    if logins.contains(&provider) || inline_key || env_key {
        AuthState::MachineLocal
    } else {
        AuthState::Missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jsonc() {
        let text = r#"{
            // comment with "quote"
            "model": "mock/m", /* block, */
            "s": "a // not a comment, /* nor this */",
            "list": [1, 2,],
            "o": {"x": "\",}"  , },
        }"#;
        assert_eq!(
            parse_jsonc(text),
            Some(json!({
                "model": "mock/m",
                "s": "a // not a comment, /* nor this */",
                "list": [1, 2],
                "o": {"x": "\",}"},
            }))
        );
    }

    #[test]
    fn merge_layers() {
        let mut a = json!({"model": "a/x", "provider": {"a": {"env": ["A"]}}});
        merge(
            &mut a,
            json!({"model": "b/y", "provider": {"b": {"env": ["B"]}}}),
        );
        assert_eq!(model_provider(&a).as_deref(), Some("b"));
        assert_eq!(provider_env_vars(&a, "a"), vec!["A"]);
        assert_eq!(provider_env_vars(&a, "b"), vec!["B"]);
        assert_eq!(
            provider_env_vars(&a, "anthropic"),
            vec!["ANTHROPIC_API_KEY"]
        );
        assert!(provider_env_vars(&a, "unknown").is_empty());
    }

    fn env_with(home: &Path, vars: &[(&str, &str)]) -> ProviderEnv {
        let mut env = ProviderEnv::new(home);
        // Shadow whatever the test process has, so the result depends on `vars` only.
        for name in [
            "XDG_DATA_HOME",
            "XDG_CONFIG_HOME",
            "OPENCODE_CONFIG",
            "OPENCODE_CONFIG_CONTENT",
            "OPENCODE_AUTH_CONTENT",
            "MOCK_API_KEY",
        ] {
            env.extra_env.push((name.into(), String::new()));
        }
        env.extra_env
            .extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    const CONFIG: &str =
        r#"{"model": "mock/mock-model", "provider": {"mock": {"env": ["MOCK_API_KEY"]}}}"#;

    #[test]
    fn auth_sources() {
        let home = tempfile::tempdir().unwrap();
        let with = |vars: &[(&str, &str)]| auth_state(&env_with(home.path(), vars));
        assert_eq!(
            with(&[("OPENCODE_CONFIG_CONTENT", CONFIG)]),
            AuthState::Missing
        );
        assert_eq!(
            with(&[("OPENCODE_CONFIG_CONTENT", CONFIG), ("MOCK_API_KEY", "k")]),
            AuthState::MachineLocal
        );
        let inline = r#"{"model": "mock/m", "provider": {"mock": {"options": {"apiKey": "k"}}}}"#;
        assert_eq!(
            with(&[("OPENCODE_CONFIG_CONTENT", inline)]),
            AuthState::MachineLocal
        );
        // A login for another provider does not count.
        assert_eq!(
            with(&[
                ("OPENCODE_CONFIG_CONTENT", CONFIG),
                (
                    "OPENCODE_AUTH_CONTENT",
                    r#"{"other":{"type":"api","key":"k"}}"#
                )
            ]),
            AuthState::Missing
        );

        // auth.json under XDG_DATA_HOME, config file under XDG_CONFIG_HOME.
        let data = home.path().join("d");
        let cfg = home.path().join("c");
        std::fs::create_dir_all(data.join("opencode")).unwrap();
        std::fs::create_dir_all(cfg.join("opencode")).unwrap();
        std::fs::write(
            cfg.join("opencode/opencode.jsonc"),
            format!("// jsonc\n{CONFIG}"),
        )
        .unwrap();
        let (d, c) = (data.to_str().unwrap(), cfg.to_str().unwrap());
        let xdg = [("XDG_DATA_HOME", d), ("XDG_CONFIG_HOME", c)];
        assert_eq!(with(&xdg), AuthState::Missing);
        std::fs::write(
            data.join("opencode/auth.json"),
            r#"{"mock":{"type":"api","key":"test"}}"#,
        )
        .unwrap();
        assert_eq!(with(&xdg), AuthState::MachineLocal);
        // The default locations are not used when XDG says otherwise.
        assert_eq!(
            with(&[("OPENCODE_CONFIG_CONTENT", CONFIG)]),
            AuthState::Missing
        );
    }
}
