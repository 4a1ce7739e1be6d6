//! Machine setup: config files, logins and their modes, and the env a provider process gets.

use baton_testkit::clis::Clis;
use baton_testkit::rig::{Login, machine_env, service_env};
use std::os::unix::fs::PermissionsExt;

#[test]
fn machine_env_writes_configs_and_toggles_logins() {
    let home = tempfile::tempdir().expect("home");
    let clis = Clis {
        bin_dir: "/opt/clis/bin".into(),
    };
    let env = machine_env(&clis, "http://127.0.0.1:1234", home.path(), Login::LoggedIn);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert!(get("PATH").is_some_and(|p| p.starts_with("/opt/clis/bin")));
    assert_eq!(get("ANTHROPIC_BASE_URL"), Some("http://127.0.0.1:1234"));
    assert_eq!(get("ANTHROPIC_API_KEY"), Some("test"));
    assert_eq!(get("CLAUDE_CODE_MAX_RETRIES"), Some("0"));
    assert_eq!(get("HOME"), None);

    let config =
        std::fs::read_to_string(home.path().join(".codex/config.toml")).expect("codex config");
    assert!(config.contains(r#"base_url = "http://127.0.0.1:1234/v1""#));
    let oc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home.path().join(".config/opencode/opencode.json")).expect("oc config"),
    )
    .expect("json");
    assert_eq!(
        oc.pointer("/provider/mock/options/baseURL"),
        Some(&"http://127.0.0.1:1234/v1".into())
    );
    for auth in [".codex/auth.json", ".local/share/opencode/auth.json"] {
        let meta = std::fs::metadata(home.path().join(auth)).expect(auth);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{auth}");
    }

    let env = machine_env(
        &clis,
        "http://127.0.0.1:1234",
        home.path(),
        Login::LoggedOut,
    );
    assert!(env.iter().all(|(k, _)| k != "ANTHROPIC_API_KEY"));
    assert!(!home.path().join(".codex/auth.json").exists());
    assert!(!home.path().join(".local/share/opencode/auth.json").exists());
    assert_eq!(
        service_env("codex"),
        [("CODEX_API_KEY".to_owned(), "test".to_owned())]
    );
    assert_eq!(
        service_env("opencode"),
        [("MOCK_API_KEY".to_owned(), "test".to_owned())]
    );
    assert!(service_env("other").is_empty());
}
