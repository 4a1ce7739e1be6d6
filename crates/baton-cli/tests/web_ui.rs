//! The web UI in a real headless Chromium (Debian's `chromium` and `chromium-driver`), driven
//! over WebDriver: the browser's WebCrypto speaks the daemons' envelope (the crate's shared test
//! vectors, and values sealed afresh on each side), and a browser enrolled with
//! `baton pair --browser` sees the account's machines live.
//!
//! Skipped, saying why, when `chromedriver` is not installed, unless `BATON_REQUIRE_BROWSER` is
//! set (CI sets it, so there a missing browser fails the test).

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_cli::harness::Cluster;
use baton_crypto::{AccountSecret, PairingCode};
use baton_proto::Sealed;
use common::{World, agent_conversation, exe, wait_for};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const DRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const WAIT: Duration = Duration::from_secs(20);

/// One browser test at a time: each starts a Chromium beside a server and daemons, and on two
/// cores a dozen of them at once would test the machine's patience, not the page.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A headless Chromium behind its WebDriver, on a phone-sized window; ends both when dropped.
struct Browser {
    _turn: std::sync::MutexGuard<'static, ()>,
    driver: Child,
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self.rt.block_on(c.close());
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    /// Starts one, or says why it cannot and returns `None` (a failure under
    /// `BATON_REQUIRE_BROWSER`).
    fn start() -> Option<Self> {
        Self::start_as(true)
    }

    /// [`Browser::start`], on a 390-px phone viewport or a 1280×800 desktop window.
    fn start_as(phone: bool) -> Option<Self> {
        if !Path::new(DRIVER).exists() || !Path::new(CHROMIUM).exists() {
            let why = format!(
                "{DRIVER} or {CHROMIUM} is missing (apt-get install chromium chromium-driver)"
            );
            if std::env::var_os("BATON_REQUIRE_BROWSER").is_some() {
                panic!("BATON_REQUIRE_BROWSER is set but {why}");
            }
            eprintln!("skipping the browser test: {why}");
            return None;
        }
        // A test that failed holding the lock poisons it; the next one may still run.
        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(DRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let mut caps = serde_json::Map::new();
        let mut options = json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        });
        if phone {
            // A phone's viewport: headless windows are never narrower than 500 px.
            options["mobileEmulation"] =
                json!({ "deviceMetrics": { "width": 390, "height": 844, "pixelRatio": 1.0 } });
        } else {
            options["args"]
                .as_array_mut()
                .expect("args")
                .push(json!("--window-size=1280,800"));
        }
        caps.insert("goog:chromeOptions".into(), options);
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let client = rt
            .block_on(
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .expect("a WebDriver session");
        Some(Self {
            _turn: turn,
            driver,
            rt,
            client: Some(client),
            _profile: profile,
        })
    }

    fn c(&self) -> &Client {
        self.client.as_ref().expect("open")
    }

    fn goto(&self, url: &str) {
        self.rt.block_on(self.c().goto(url)).expect("page loads");
    }

    /// The text of the first element matching `css`, if any.
    fn text(&self, css: &str) -> Option<String> {
        self.rt.block_on(async {
            let e = self.c().find(Locator::Css(css)).await.ok()?;
            e.text().await.ok()
        })
    }

    /// Waits until the element matching `css` reads `want`.
    fn wait_text(&self, css: &str, want: &str) {
        let got = wait_for(WAIT, || self.text(css).filter(|t| t.trim() == want));
        assert!(
            got.is_some(),
            "{css} never read {want:?} (last: {:?})",
            self.text(css)
        );
    }

    fn fill(&self, css: &str, text: &str) {
        self.rt.block_on(async {
            let e = self.c().find(Locator::Css(css)).await.expect("field");
            e.clear().await.expect("clear");
            e.send_keys(text).await.expect("type");
        });
    }

    fn click(&self, css: &str) {
        self.rt.block_on(async {
            self.c()
                .find(Locator::Css(css))
                .await
                .expect("button")
                .click()
                .await
                .expect("click");
        });
    }

    fn url(&self) -> String {
        self.rt
            .block_on(self.c().current_url())
            .expect("url")
            .to_string()
    }

    /// Runs `script` (which ends by calling its last argument) and returns what it passed.
    fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.rt
            .block_on(self.c().execute_async(script, args))
            .expect("the script runs")
    }

    /// Asserts that the page is no wider than its viewport (nothing to scroll sideways).
    fn assert_fits(&self) {
        let got = self.run(
            "arguments[0]([document.documentElement.scrollWidth, document.documentElement.clientWidth])",
            vec![],
        );
        let (wide, viewport) = (got[0].as_i64().unwrap_or(0), got[1].as_i64().unwrap_or(0));
        assert!(
            wide <= viewport,
            "the page is {wide} px wide in a {viewport} px viewport"
        );
    }

    /// Saves a screenshot under `target/ui-screenshots/` for a reviewer to look at.
    fn screenshot(&self, name: &str) {
        self.assert_fits();
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let png = self.rt.block_on(self.c().screenshot()).expect("screenshot");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }
}

fn screenshots_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots")
}

fn vector(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../baton-crypto/tests/vectors")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("vector file")).expect("JSON")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A server alone (no machine, no account) with the browser on its page, for tests of the
/// page's own code; dropping it stops the server.
fn bare_page(b: &Browser) -> (Cluster, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tmp");
    let cluster = Cluster::start(&exe(), tmp.path()).expect("server starts");
    b.goto(&format!("{}/", cluster.url));
    // The server first, then its directory (tuple fields drop in order).
    (cluster, tmp)
}

const CRYPTO_SCRIPT: &str = r#"
const [v, live, done] = arguments;
import('/ui/crypto.js').then(async (bc) => {
  const H = bc.hex, U = bc.unhex, out = {};
  out.aes = [];
  for (const c of v.aes.cases) {
    out.aes.push({
      sealed: H(await bc.seal(U(c.key), U(c.ad), U(c.plaintext), U(c.nonce))),
      opened: H(await bc.open(U(c.key), U(c.ad), U(c.sealed))),
    });
  }
  const s = v.seal_to;
  const recipient = await bc.x25519Private(U(s.recipient_secret));
  out.seal_to = {
    sealed: H(await bc.sealTo(U(s.recipient_pk), U(s.ad), U(s.plaintext), U(s.eph_secret), U(s.nonce))),
    opened: H(await bc.openFrom(recipient, U(s.ad), U(s.sealed))),
    recipient_pk: H(await bc.publicOf(recipient)),
  };
  const p = v.pairing;
  const code = bc.parsePairingCode(p.display);
  out.pairing = { code: H(code), id: await bc.pairingId(code), box_pk: await bc.pairingBoxPk(code) };
  const w = v.wrap;
  out.wrap = {
    data_key: H(await bc.openDataKey(U(w.account_secret), w.session_id, U(w.sealed))),
    sealed: H(await bc.sealDataKey(U(w.account_secret), w.session_id, U(w.data_key), U(w.sealed).subarray(1, 13))),
  };
  const c0 = v.aes.cases[0], bad = U(c0.sealed);
  bad[bad.length - 1] ^= 1;
  try { await bc.open(U(c0.key), U(c0.ad), bad); out.tampered = "opened"; }
  catch (e) { out.tampered = e.constructor.name; }
  try { await bc.open(U(c0.key), U("00"), U(c0.sealed)); out.other_ad = "opened"; }
  catch (e) { out.other_ad = e.constructor.name; }
  out.live_open = H(await bc.open(U(live.key), U(live.ad), bc.unb64(live.sealed)));
  out.live_secret = H(await bc.openPairingSecret(bc.parsePairingCode(live.code), bc.unb64(live.pairing_sealed)));
  const secretKey = await bc.secretKey(U(live.secret));
  out.record = bc.b64(await bc.sealRecord(secretKey, "settings", "handoff", { workspace: true, conflict: "sibling" }));
  done({ ok: out });
}).catch((e) => done({ error: String((e && e.stack) || e) }));
"#;

#[test]
fn the_browsers_webcrypto_speaks_the_daemons_envelope() {
    let Some(b) = Browser::start() else { return };
    let _server = bare_page(&b);

    let vectors = json!({
        "aes": vector("aes256gcm.json"),
        "seal_to": vector("seal_to.json"),
        "pairing": vector("pairing.json"),
        "wrap": vector("session_key_wrap.json"),
    });
    // Sealed here with fresh random nonces and keys, opened there; and the other way round.
    let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    let plain = b"sealed by a daemon, opened by a browser";
    let ad = b"baton.meta.v1 some record";
    let sealed = baton_crypto::seal(&key, ad, plain);
    let secret = AccountSecret::generate();
    let code = PairingCode::generate();
    let live = json!({
        "key": hex(&key),
        "ad": hex(ad),
        "sealed": base64_of(&sealed),
        "code": code.display(),
        "pairing_sealed": base64_of(&code.seal_secret(&secret)),
        "secret": hex(&secret.to_bytes()),
    });
    let got = b.run(CRYPTO_SCRIPT, vec![vectors.clone(), live]);
    let out = match got.get("ok") {
        Some(out) => out,
        None => panic!("the crypto script failed: {got}"),
    };

    for (case, res) in vectors["aes"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .zip(out["aes"].as_array().unwrap())
    {
        assert_eq!(res["sealed"], case["sealed"], "{}", case["comment"]);
        assert_eq!(res["opened"], case["plaintext"], "{}", case["comment"]);
    }
    let s = &vectors["seal_to"];
    assert_eq!(out["seal_to"]["sealed"], s["sealed"]);
    assert_eq!(out["seal_to"]["opened"], s["plaintext"]);
    assert_eq!(out["seal_to"]["recipient_pk"], s["recipient_pk"]);
    let p = &vectors["pairing"];
    assert_eq!(out["pairing"]["code"], p["code"]);
    assert_eq!(out["pairing"]["id"], p["pairing_id"]);
    assert_eq!(out["pairing"]["box_pk"], p["box_pk"]);
    let w = &vectors["wrap"];
    assert_eq!(out["wrap"]["data_key"], w["data_key"]);
    assert_eq!(out["wrap"]["sealed"], w["sealed"]);
    assert_eq!(out["tampered"], "OpenError", "a flipped tag bit is refused");
    assert_eq!(
        out["other_ad"], "OpenError",
        "another record's identity is refused"
    );

    assert_eq!(out["live_open"], hex(plain));
    assert_eq!(out["live_secret"], hex(&secret.to_bytes()));
    let record = Sealed(base64_decode(out["record"].as_str().expect("record")));
    let settings: Value = secret
        .open_record("settings", "handoff", &record)
        .expect("the daemon's crate opens what the browser sealed");
    assert_eq!(
        settings,
        json!({ "workspace": true, "conflict": "sibling" })
    );
    // The key is bound to the record's identity here too.
    assert!(
        secret
            .open_record::<Value>("settings", "other", &record)
            .is_err()
    );
}

#[test]
fn a_browser_enrolled_with_a_link_sees_both_machines_live_and_is_listed_as_a_browser() {
    let Some(b) = Browser::start() else { return };
    let mut w = World::new(&["laptop", "desktop"]);
    let pairing = w.c.json(0, &["pair", "--browser"]).expect("pair --browser");
    let url = pairing["url"].as_str().expect("url").to_string();
    assert!(url.starts_with(&format!("{}/#pair=", w.c.url)), "{url}");

    b.goto(&url);
    b.wait_text("#pair-title", "Enroll this browser");
    b.fill("#browser-name", "chromium-test");
    b.click("button[type=submit]");
    b.wait_text(r#"section[data-machine="laptop"] .online-state"#, "online");
    b.wait_text(r#"section[data-machine="desktop"] .online-state"#, "online");
    b.wait_text("#live-state", "live");
    assert!(
        !b.url().contains("pair="),
        "the spent code is gone from the address bar: {}",
        b.url()
    );
    b.screenshot("machines");

    let machines = w.c.json(0, &["machines"]).expect("machines");
    let me = machines
        .as_array()
        .expect("list")
        .iter()
        .find(|m| m["name"] == "chromium-test")
        .unwrap_or_else(|| panic!("the browser is enrolled: {machines}"));
    assert_eq!(me["kind"], "browser");
    let text = w.c.baton(0, &["machines"]).expect("machines text");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Browsers enrolled for the web UI: chromium-test"),
        "{text}"
    );

    // Live: a daemon going away shows up without a reload.
    w.c.stop_daemon(1);
    b.wait_text(
        r#"section[data-machine="desktop"] .online-state"#,
        "offline",
    );
    // The enrolment outlives the page: keys stay in this browser's IndexedDB. (A `goto` to the
    // same URL would only change the fragment, not load the page again.)
    b.rt.block_on(b.c().refresh()).expect("reload");
    b.wait_text(r#"section[data-machine="laptop"] .online-state"#, "online");
    b.wait_text(
        r#"section[data-machine="desktop"] .online-state"#,
        "offline",
    );

    // Nor can it pass for a daemon on the WebSocket: the server closes that connection at once.
    let answered = b.run(
        r#"
const [done] = arguments;
Promise.all([import('/ui/api.js')]).then(async ([api]) => {
  const c = new api.Client(await api.loadIdentity());
  await c.login();
  const first = (role) => new Promise((resolve) => {
    const ws = new WebSocket(`ws://${location.host}/v1/ws?token=${c.token}`);
    ws.onopen = () => ws.send(JSON.stringify({ type: "hello", role, protocol: 1, providers: [] }));
    ws.onmessage = (m) => { resolve(JSON.parse(m.data).type); ws.close(); };
    ws.onclose = () => resolve("closed");
  });
  done({ daemon: await first("daemon"), client: await first("client") });
}).catch((e) => done({ error: String(e) }));
"#,
        vec![],
    );
    assert_eq!(answered["daemon"], "closed", "{answered}");
    assert_eq!(answered["client"], "welcome", "{answered}");

    // A browser is never a handoff target.
    let ws = w.dir("ws");
    let s = w.new_session(0, &ws);
    let (code, out) = w.handoff(0, &s, "chromium-test", &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.to_string()
            .contains("is a browser enrolled for the web UI"),
        "{out}"
    );
}

/// Enrolls the browser in `w`'s account through machine `idx`'s `baton pair --browser` link.
fn enroll(b: &Browser, w: &World, idx: usize, name: &str) {
    let pairing =
        w.c.json(idx, &["pair", "--browser"])
            .expect("pair --browser");
    b.goto(pairing["url"].as_str().expect("url"));
    b.wait_text("#pair-title", "Enroll this browser");
    b.fill("#browser-name", name);
    b.click("button[type=submit]");
    b.wait_text("#live-state", "live");
}

/// The texts of the transcript's entries of `role` shown now.
fn entries(b: &Browser, role: &str) -> Vec<String> {
    b.rt.block_on(async {
        let mut out = Vec::new();
        let found = b
            .c()
            .find_all(Locator::Css(&format!(
                ".transcript .entry.role-{role}:not(.queued) .text"
            )))
            .await
            .unwrap_or_default();
        for e in found {
            out.push(e.text().await.unwrap_or_default());
        }
        out
    })
}

/// A world of a laptop with a session told `first`, and the browser enrolled and showing it.
fn session_page(b: &Browser, names: &[&str], first: &str) -> (World, String) {
    let w = World::new(names);
    let ws = w.dir("ws");
    let s = w.new_session(0, &ws);
    w.send(0, &s, first);
    enroll(b, &w, 0, "phone");
    b.goto(&format!("{}/#/session/{s}", w.c.url));
    b.wait_text("#session-owner", "laptop");
    (w, s)
}

/// Waits for the assistant's answer to `said`; returns its text.
fn answer_to(b: &Browser, said: &str) -> Option<String> {
    let want = format!(r#"You said: "{said}""#);
    wait_for(WAIT, || {
        entries(b, "assistant")
            .into_iter()
            .find(|t| t.contains(&want))
    })
}

#[test]
fn a_browser_follows_a_session_live_and_a_message_sent_from_it_is_answered() {
    let Some(b) = Browser::start() else { return };
    let (w, s) = session_page(&b, &["laptop"], "hello from the CLI");
    let shown = wait_for(WAIT, || {
        let a = entries(&b, "assistant");
        (!a.is_empty()).then_some(a)
    })
    .expect("the earlier answer is shown, decrypted");
    assert!(
        shown[0].contains(r#"You said: "hello from the CLI""#),
        "{shown:?}"
    );
    assert!(
        entries(&b, "user")
            .iter()
            .any(|t| t == "hello from the CLI")
    );

    b.fill("#message", "and hello from the browser");
    b.click(".composer button[type=submit]");
    let answered = answer_to(&b, "and hello from the browser");
    let answer = answered.unwrap_or_else(|| {
        panic!(
            "the browser's message was answered live; shown: {:?}",
            entries(&b, "assistant")
        )
    });
    assert!(
        answer.contains(r#"Your first message was: "hello from the CLI""#),
        "the same conversation: {answer}"
    );
    assert!(
        b.text(".entry.queued").is_none(),
        "nothing is left queued once delivered"
    );
    b.screenshot("session");

    // The CLI sees the message the browser sealed, in order, once.
    let log = w.log(0, &s);
    let users: Vec<_> = log
        .iter()
        .filter(|e| e["role"] == "user")
        .map(|e| e["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(users, ["hello from the CLI", "and hello from the browser"]);
}

/// Whether the element matching `css` is there and disabled.
fn disabled(b: &Browser, css: &str) -> bool {
    b.rt.block_on(async {
        match b.c().find(Locator::Css(css)).await {
            Ok(e) => !e.is_enabled().await.unwrap_or(true),
            Err(_) => false,
        }
    })
}

/// Hands the open session off to `to` through the dialog, and waits for the result.
fn hand_off_in_dialog(b: &Browser, to: &str, shot: Option<&str>) {
    b.wait_text("#handoff-title", "Hand off to another machine");
    b.click(&format!(r#"label[data-machine="{to}"] input"#));
    if let Some(name) = shot {
        b.screenshot(&format!("{name}-modal"));
    }
    b.click("#handoff-continue");
    if let Some(name) = shot {
        // The first phases, while the handoff runs.
        let _ = wait_for(WAIT, || b.text(".phases .phase"));
        b.screenshot(&format!("{name}-progress"));
    }
    let result = wait_for(WAIT, || b.text("#handoff-result"));
    let result = result.unwrap_or_else(|| panic!("the handoff ended in the dialog"));
    assert!(
        result.contains(&format!("the session now runs on {to}")),
        "{result}"
    );
    for phase in ["preflight", "quiesce_source", "commit", "activate", "done"] {
        assert!(
            b.text(&format!(r#".phase.ok[data-phase="{phase}"]"#))
                .is_some(),
            "phase {phase} is shown done"
        );
    }
    b.click(".modal .buttons button");
}

#[test]
fn a_browser_hands_a_session_off_from_the_header_menu_and_from_session_info() {
    let Some(b) = Browser::start() else { return };
    let mut w = World::new(&["laptop", "desktop", "tablet"]);
    let ws = w.dir("ws");
    let s = w.new_session(0, &ws);
    w.send(0, &s, "before the move");
    w.c.stop_daemon(2);
    w.c.wait_online(&["tablet"], false, WAIT)
        .expect("tablet offline");
    enroll(&b, &w, 0, "phone");

    open_dialog(&b, &w, &s);
    assert!(
        b.text(r#"label[data-machine="tablet"]"#)
            .is_some_and(|t| t.contains("(offline)")),
        "an offline machine says why it cannot be picked"
    );
    assert!(disabled(&b, r#"label[data-machine="tablet"] input"#));
    assert!(
        b.text(r#"label[data-machine="laptop"]"#).is_none(),
        "the owner is not offered"
    );
    assert!(
        !disabled(&b, "#transfer-workspace"),
        "a project directory may travel"
    );
    hand_off_in_dialog(&b, "desktop", Some("handoff"));
    b.wait_text("#session-owner", "desktop");
    let after = w.session(0, &s);
    assert_eq!(after["owner"]["name"], "desktop", "{after}");

    // The conversation goes on there, from the browser.
    b.fill("#message", "after the move");
    b.click(".composer button[type=submit]");
    let answered = answer_to(&b, "after the move").expect("answered on desktop");
    assert!(answered.contains(r#"Your first message was: "before the move""#));

    // The same from Session info, back to laptop; the history lists both moves.
    b.goto(&format!("{}/#/info/{s}", w.c.url));
    b.wait_text("#info-owner", "desktop");
    b.click("#session-actions");
    b.click("#action-handoff");
    hand_off_in_dialog(&b, "laptop", None);
    b.wait_text("#info-owner", "laptop");
    let rows = wait_for(WAIT, || {
        b.rt.block_on(async {
            let n = b
                .c()
                .find_all(Locator::Css("table.history tbody tr"))
                .await
                .map(|v| v.len())
                .unwrap_or(0);
            (n == 2).then_some(n)
        })
    });
    assert_eq!(rows, Some(2), "both handoffs are in the history");
    b.screenshot("session-info");
}

/// The value of the form control matching `css` (`checked` for a checkbox).
fn value(b: &Browser, css: &str, prop: &str) -> String {
    b.rt.block_on(async {
        let e = b.c().find(Locator::Css(css)).await.expect("control");
        e.prop(prop).await.ok().flatten().unwrap_or_default()
    })
}

fn select(b: &Browser, css: &str, value: &str) {
    b.rt.block_on(async {
        let e = b.c().find(Locator::Css(css)).await.expect("select");
        e.select_by_value(value).await.expect("option");
    });
}

#[test]
fn handoff_defaults_saved_in_settings_are_sealed_in_the_account_and_preset_the_dialog() {
    let Some(b) = Browser::start() else { return };
    let w = World::new(&["laptop", "desktop"]);
    let ws = w.dir("project");
    let s = w.new_session(0, &ws);
    enroll(&b, &w, 0, "phone");

    b.goto(&format!("{}/#/settings", w.c.url));
    b.wait_text("#settings-handoff", "Session handoff");
    b.click("#set-workspace");
    select(&b, "#set-conflict", "replace");
    select(&b, "#set-ignored", "globs");
    b.fill("#set-globs", ".env, *.local");
    select(&b, "#set-direct", "sync");
    b.click("#settings-save");
    b.wait_text("#settings-state", "Saved.");

    // Stored sealed in the account: a machine of the account opens it, the server cannot.
    let identity = baton_daemon::identity::Identity::load(&w.c.machines[0].baton_home)
        .expect("laptop's identity");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client =
        baton_daemon::client::Client::new(std::sync::Arc::new(identity), None).expect("client");
    let stored: Value = rt
        .block_on(client.get("/v1/settings/handoff"))
        .expect("the setting is stored");
    let sealed: Sealed = serde_json::from_value(stored["sealed"].clone()).expect("sealed");
    assert!(
        !String::from_utf8_lossy(&sealed.0).contains(".env"),
        "the server holds ciphertext only"
    );
    let opened: Value = client
        .identity()
        .secret
        .open_record("settings", "handoff", &sealed)
        .expect("the account secret opens it");
    assert_eq!(opened["conflict"], "replace");
    assert_eq!(opened["globs"], ".env, *.local");
    assert_eq!(opened["workspace"], true);

    // The dialog starts from them.
    open_dialog(&b, &w, &s);
    assert_eq!(value(&b, "#transfer-workspace", "checked"), "true");
    assert_eq!(value(&b, "#conflict", "value"), "replace");
    assert_eq!(value(&b, "#ignored", "value"), "globs");
    assert_eq!(value(&b, "#globs", "value"), ".env, *.local");
    b.screenshot("handoff-modal-defaults");
}

#[test]
fn a_workspace_handed_off_with_replace_shows_its_plan_and_needs_a_second_confirmation() {
    let Some(b) = Browser::start() else { return };
    let w = World::new(&["laptop", "desktop"]);
    let src = w.dir("proj");
    std::fs::write(Path::new(&src).join("main.rs"), "fn main() {}\n").expect("write");
    std::fs::create_dir_all(Path::new(&src).join("src")).expect("mkdir");
    std::fs::write(Path::new(&src).join("src/lib.rs"), "pub fn f() {}\n").expect("write");
    let dest = w.dir("dest");
    std::fs::write(Path::new(&dest).join("main.rs"), "old\n").expect("write");
    std::fs::write(Path::new(&dest).join("stale.txt"), "stale\n").expect("write");
    let s = w.new_session(0, &src);
    enroll(&b, &w, 0, "phone");

    open_dialog(&b, &w, &s);
    b.click(r#"label[data-machine="desktop"] input"#);
    b.click("#transfer-workspace");
    select(&b, "#conflict", "replace");
    b.fill("#target-path", &dest);
    b.click("#handoff-continue");

    // The plan comes before anything moves; replacing needs its own confirmation.
    let shown = wait_for(WAIT, || b.text("#plan-destination"));
    let shown = shown.expect("the plan is shown");
    assert!(
        shown.contains("exists on desktop: it is replaced"),
        "{shown}"
    );
    let overwritten = b.text(".plan details").unwrap_or_default();
    assert!(overwritten.contains("main.rs"), "{overwritten}");
    assert!(
        disabled(&b, "#handoff-confirm"),
        "Confirm waits for the second confirmation"
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(&dest).join("main.rs")).expect("read"),
        "old\n",
        "nothing moved before Confirm"
    );
    b.screenshot("handoff-plan");
    b.click("#confirm-replace");
    b.click("#handoff-confirm");
    let result = wait_for(WAIT, || b.text("#handoff-result")).expect("the handoff ends");
    assert!(
        result.contains("the session now runs on desktop"),
        "{result}"
    );
    assert_eq!(
        std::fs::read_to_string(Path::new(&dest).join("main.rs")).expect("read"),
        "fn main() {}\n"
    );
    assert!(Path::new(&dest).join("src/lib.rs").exists());
    assert!(
        !Path::new(&dest).join("stale.txt").exists(),
        "replaced, not merged"
    );
    let after = w.session(0, &s);
    assert_eq!(after["owner"]["name"], "desktop");
    assert_eq!(after["workspace"], dest.as_str(), "{after}");
}

#[test]
fn a_refused_handoff_says_why_in_plain_words_and_what_to_do_next() {
    let Some(b) = Browser::start() else { return };
    let w = World::new(&["laptop", "desktop"]);
    // A session working in the machine's home directory: its workspace must not travel.
    let home = std::fs::canonicalize(w.home(0)).expect("home");
    let home = home.to_string_lossy().into_owned();
    let s = w.new_session(0, &home);
    enroll(&b, &w, 0, "phone");

    open_dialog(&b, &w, &s);
    b.click(r#"label[data-machine="desktop"] input"#);
    b.click("#transfer-workspace");
    b.click("#handoff-continue");
    let shown = wait_for(WAIT, || {
        b.text("#handoff-result")
            .filter(|t| t.contains("did not happen"))
    })
    .expect("the refusal is shown");
    assert!(shown.contains("home"), "names the cause: {shown}");
    assert!(
        shown.contains(&home) && !shown.contains("<path>"),
        "with the path the page decrypted: {shown}"
    );
    assert!(
        shown.contains("hand off without the workspace"),
        "and the next step: {shown}"
    );
    b.screenshot("handoff-refused");
    b.click(".modal .buttons button");
    b.wait_text("#session-owner", "laptop");
    assert_eq!(w.session(0, &s)["owner"]["name"], "laptop", "nothing moved");
}

#[test]
fn the_page_reconnects_by_itself_when_the_server_comes_back() {
    let Some(b) = Browser::start() else { return };
    let mut w = World::new(&["laptop", "desktop"]);
    enroll(&b, &w, 0, "phone");
    b.wait_text(r#"section[data-machine="desktop"] .online-state"#, "online");
    w.c.kill_server();
    b.wait_text("#live-state", "offline, reconnecting…");
    w.c.restart_server().expect("server back");
    w.c.wait_online(&["laptop", "desktop"], true, WAIT)
        .expect("daemons back");
    // A session started around the reconnect is listed (read again once live, or its event).
    let ws = w.dir("ws");
    let s = w.new_session(0, &ws);
    b.wait_text("#live-state", "live");
    b.goto(&format!("{}/#/sessions", w.c.url));
    assert!(
        wait_for(WAIT, || b.text(&format!(r#"tr[data-session="{s}"]"#))).is_some(),
        "the session started meanwhile is listed"
    );
    b.goto(&format!("{}/#/machines", w.c.url));
    // Live again: a change after the restart reaches the page without a reload.
    w.c.stop_daemon(1);
    b.wait_text(
        r#"section[data-machine="desktop"] .online-state"#,
        "offline",
    );
}

#[test]
fn a_session_forked_from_the_header_menu_continues_the_conversation_apart() {
    let Some(b) = Browser::start() else { return };
    let (w, s) = session_page(&b, &["laptop"], "the parent's first words");
    b.click("#session-actions");
    b.click("#action-fork");
    let child = wait_for(WAIT, || {
        let url = b.url();
        let id = url.rsplit("#/session/").next()?.to_string();
        (id != s && id.len() == 36).then_some(id)
    })
    .expect("the page moves to the fork");
    b.wait_text("#session-owner", "laptop");
    b.fill("#message", "in the fork");
    b.click(".composer button[type=submit]");
    let answer = answer_to(&b, "in the fork").expect("the fork answers");
    assert!(
        answer.contains(r#"Your first message was: "the parent's first words""#),
        "the fork carries the parent's context: {answer}"
    );
    let parent_users: Vec<_> = w
        .log(0, &s)
        .iter()
        .filter(|e| e["role"] == "user")
        .map(|e| e["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        parent_users,
        ["the parent's first words"],
        "the parent is untouched"
    );
    let listed = w.c.json(0, &["sessions"]).expect("sessions");
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x["id"] == child.as_str())),
        "{listed}"
    );
}

#[test]
fn a_message_typed_while_the_owner_is_away_shows_as_queued_until_it_is_delivered() {
    let Some(b) = Browser::start_as(false) else {
        return;
    };
    let (mut w, _session) = session_page(&b, &["laptop"], "first");
    w.c.stop_daemon(0);
    w.c.wait_online(&["laptop"], false, WAIT)
        .expect("laptop away");
    b.fill("#message", "while you were away");
    b.click(".composer button[type=submit]");
    b.wait_text(".entry.queued .text", "while you were away");
    b.screenshot("session-queued-desktop");
    w.c.start_daemon(0).expect("laptop back");
    let answer = answer_to(&b, "while you were away");
    assert!(
        answer.is_some(),
        "delivered and answered once the owner is back"
    );
    assert!(b.text(".entry.queued").is_none(), "no longer queued");
    assert_eq!(
        entries(&b, "user"),
        ["first", "while you were away"],
        "shown once, in order"
    );
}

#[test]
fn a_direct_session_is_read_from_its_owner_and_converted_to_synced_from_the_dialog() {
    let Some(b) = Browser::start() else { return };
    let w = World::new(&["laptop", "desktop"]);
    let ws = w.dir("ws");
    agent_conversation(&w, 0, &ws, "conv-a", &["hello direct", "second turn"]);
    let opened =
        w.c.json(1, &["open", "conv-a", "--machine", "laptop"])
            .expect("open as direct");
    let s = opened["session_id"].as_str().expect("id").to_string();
    assert_eq!(opened["mode"], "direct");
    enroll(&b, &w, 0, "phone");

    b.goto(&format!("{}/#/session/{s}", w.c.url));
    b.wait_text("#session-owner", "laptop");
    let read = wait_for(WAIT, || {
        let a = entries(&b, "assistant");
        (a.len() == 2).then_some(a)
    })
    .expect("the provider's own transcript, read on laptop and decrypted here");
    assert!(read[1].contains("Turn 2"), "{read:?}");
    assert!(
        b.text("#direct-note").is_some(),
        "a Direct session is not steered from here"
    );
    assert!(b.text(".composer").is_none());

    b.click("#session-actions");
    b.click("#action-handoff");
    b.wait_text("#handoff-title", "Hand off to another machine");
    b.click(r#"input[name="direct"][value="sync"]"#);
    hand_off_in_dialog(&b, "desktop", None);
    b.wait_text("#session-owner", "desktop");
    let row = w.session(0, &s);
    assert_eq!(row["mode"], "synced", "{row}");
    // Now synced: Baton holds the transcript, and the page steers it.
    let composer = wait_for(WAIT, || b.text(".composer").map(|_| ()));
    assert!(composer.is_some(), "the input box appears once synced");
    b.fill("#message", "after converting");
    b.click(".composer button[type=submit]");
    let reply = answer_to(&b, "after converting").expect("answered on desktop");
    assert!(
        reply.contains("Turn 3") && reply.contains(r#"first message was: "hello direct""#),
        "the provider's context came along: {reply}"
    );
}

#[test]
fn the_dialogs_rules_give_each_reason_and_hide_the_action_for_an_unsupported_provider() {
    let Some(b) = Browser::start() else { return };
    let _server = bare_page(&b);
    let got = b.run(
        r#"
const [done] = arguments;
import('/ui/handoff.js').then((h) => {
  const p = (handoff, extra = {}) => ({ name: "codex", installed: true, version: "1", auth: "machine_local", handoff, ...extra });
  const m = (id, online, providers) => ({ id, name: id, online, providers, kind: "daemon" });
  const session = { id: "s", owner: "a", provider: "codex" };
  done({
    owner: h.ineligible(m("a", true, [p("supported")]), session),
    offline: h.ineligible(m("b", false, [p("supported")]), session),
    missing: h.ineligible(m("b", true, []), session),
    not_installed: h.ineligible(m("b", true, [p("supported", { installed: false })]), session),
    logged_out: h.ineligible(m("b", true, [p("supported", { auth: "missing" })]), session),
    unsupported: h.ineligible(m("b", true, [p("unsupported")]), session),
    ok: h.ineligible(m("b", true, [p("experimental")]), session),
    action_shown: h.handoffSupported(session, [m("a", true, [p("experimental")])]),
    action_hidden: h.handoffSupported(session, [m("a", true, [p("unsupported")])]),
    root: h.unsafeWorkspace("/"),
    home: h.unsafeWorkspace("/home/ada/"),
    root_home: h.unsafeWorkspace("/root"),
    relative: h.unsafeWorkspace("code/app"),
    project: h.unsafeWorkspace("/home/ada/code/app"),
  });
}).catch((e) => done({ error: String(e) }));
"#,
        vec![],
    );
    assert_eq!(got["owner"], "owns the session now", "{got}");
    assert_eq!(got["offline"], "offline");
    assert_eq!(got["missing"], "codex is not installed");
    assert_eq!(got["not_installed"], "codex is not installed");
    assert_eq!(got["logged_out"], "codex is not logged in");
    assert_eq!(
        got["unsupported"],
        "handoff of codex sessions is not supported there"
    );
    assert_eq!(
        got["ok"],
        Value::Null,
        "an experimental provider can be picked"
    );
    assert_eq!(got["action_shown"], true);
    assert_eq!(got["action_hidden"], false, "no Hand off action at all");
    assert_eq!(got["root"], "the workspace is the root directory");
    assert_eq!(got["home"], "the workspace is a home directory");
    assert_eq!(got["root_home"], "the workspace is a home directory");
    assert_eq!(got["relative"], "the workspace path is not absolute");
    assert_eq!(got["project"], Value::Null);
}

#[test]
fn the_sessions_list_decrypts_each_workspace_and_shows_new_sessions_live() {
    let Some(b) = Browser::start_as(false) else {
        return;
    };
    let (w, s) = session_page(&b, &["laptop", "desktop"], "hello");
    b.goto(&format!("{}/#/sessions", w.c.url));
    let row = format!(r#"tr[data-session="{s}"]"#);
    let shown = wait_for(WAIT, || b.text(&row)).expect("the session is listed");
    assert!(
        shown.contains("scripted") && shown.contains("synced"),
        "{shown}"
    );
    assert!(shown.contains("laptop"), "its owner: {shown}");
    assert!(
        shown.contains(&w.dir("ws")),
        "its workspace, decrypted here: {shown}"
    );
    // A session started elsewhere appears without a reload.
    let other = w.dir("other");
    let t = w.new_session(1, &other);
    let row = format!(r#"tr[data-session="{t}"]"#);
    let shown = wait_for(WAIT, || b.text(&row)).expect("the new session shows up live");
    assert!(
        shown.contains("desktop") && shown.contains(&other),
        "{shown}"
    );
    b.screenshot("sessions-desktop");
}

/// Shows session `s` (owned by laptop) and opens its handoff dialog from the Actions menu.
fn open_dialog(b: &Browser, w: &World, s: &str) {
    b.goto(&format!("{}/#/session/{s}", w.c.url));
    b.wait_text("#session-owner", "laptop");
    b.click("#session-actions");
    b.click("#action-handoff");
    b.wait_text("#handoff-title", "Hand off to another machine");
}

/// The id of the focused element.
fn focused(b: &Browser) -> String {
    b.run(
        "arguments[0](document.activeElement.id || document.activeElement.tagName)",
        vec![],
    )
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// Waits until the element with id `id` has the focus (the page moves it after rendering).
fn wait_focus(b: &Browser, id: &str, why: &str) {
    let got = wait_for(WAIT, || (focused(b) == id).then_some(()));
    assert!(
        got.is_some(),
        "{why}: the focus is on {:?}, not {id:?}",
        focused(b)
    );
}

/// Sends `keys` (WebDriver key codes) to the focused element.
fn press(b: &Browser, keys: &str) {
    b.rt.block_on(async {
        let e = b.c().active_element().await.expect("focused element");
        e.send_keys(keys).await.expect("keys");
    });
}

#[test]
fn the_action_menu_and_the_dialog_work_from_the_keyboard_and_give_focus_back() {
    const ENTER: &str = "\u{E007}";
    const ESCAPE: &str = "\u{E00C}";
    const UP: &str = "\u{E013}";
    const DOWN: &str = "\u{E015}";
    let Some(b) = Browser::start() else { return };
    let (_w, _s) = session_page(&b, &["laptop", "desktop"], "hello");
    b.click("#session-actions");
    wait_focus(&b, "action-handoff", "the menu takes the focus");
    press(&b, DOWN);
    wait_focus(&b, "action-stop", "ArrowDown moves on");
    press(&b, UP);
    wait_focus(&b, "action-handoff", "ArrowUp moves back");
    press(&b, ENTER);
    b.wait_text("#handoff-title", "Hand off to another machine");
    let inside = wait_for(WAIT, || {
        let v = b.run(
            "arguments[0](!!document.activeElement.closest('[role=dialog]'))",
            vec![],
        );
        (v == json!(true)).then_some(())
    });
    assert!(inside.is_some(), "the dialog takes the focus");
    press(&b, ESCAPE);
    let closed = wait_for(WAIT, || b.text("#handoff-title").is_none().then_some(()));
    assert!(closed.is_some(), "Escape closes the dialog");
    wait_focus(&b, "session-actions", "the focus goes back to the menu");
}

fn base64_of(s: &Sealed) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .expect("Sealed is base64 in JSON")
}

fn base64_decode(s: &str) -> Vec<u8> {
    serde_json::from_value::<Sealed>(Value::String(s.to_string()))
        .expect("base64")
        .0
}
