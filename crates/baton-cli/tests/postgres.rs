//! The whole system on PostgreSQL: a server started with `--database-url`, two daemons, a
//! session handed off and answered. Skips (saying why) when PostgreSQL is absent, unless
//! `BATON_REQUIRE_POSTGRES=1`.

mod common;

use std::time::Duration;

use baton_cli::harness::Cluster;
use baton_store::PostgresStore;
use common::{World, assert_dense, exe};

fn base_url() -> String {
    std::env::var("BATON_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

#[test]
fn handoff_on_a_postgres_server() {
    let url = base_url();
    let schema = format!("baton_e2e_{}", uuid::Uuid::new_v4().simple());
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Creates the schema and migrates it, so the server starts on a database of its own.
    let store = match rt.block_on(PostgresStore::connect_with_schema(&url, &schema)) {
        Ok(s) => s,
        Err(e) => {
            if std::env::var("BATON_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!(
                    "PostgreSQL required (BATON_REQUIRE_POSTGRES=1) but unreachable at {url}: {e}"
                );
            }
            eprintln!("skipping: PostgreSQL unreachable at {url}: {e}");
            return;
        }
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let server_url = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    let tmp = tempfile::Builder::new()
        .prefix("baton-pg-")
        .tempdir()
        .unwrap();
    let mut c = Cluster::start_with(
        &exe(),
        tmp.path(),
        vec!["--database-url".into(), server_url],
    )
    .unwrap();
    for n in ["laptop", "desktop"] {
        let i = c.add_machine(n, true).unwrap();
        c.start_daemon(i).unwrap();
    }
    c.wait_online(&["laptop", "desktop"], true, Duration::from_secs(30))
        .unwrap();
    let w = World { c, tmp };
    let ws = w.dir("ws");
    let s = w.new_session(0, &ws);
    assert!(w.send(0, &s, "on postgres").starts_with("Turn 1."));
    let (code, h) = w.handoff(0, &s, "desktop", &[]);
    assert_eq!(code, 0, "{h}");
    assert_eq!(h["epoch_after"], 2);
    let reply = w.send(0, &s, "still on postgres");
    assert!(
        reply.starts_with("Turn 2.") && reply.contains("on postgres"),
        "{reply}"
    );
    assert_dense(&w.log(1, &s));
    // Nothing was written to SQLite: the server really ran on PostgreSQL.
    assert!(!w.tmp.path().join("server/baton.db").exists());
    drop(w);
    rt.block_on(async {
        store.close().await;
        PostgresStore::drop_schema(&url, &schema).await.unwrap();
    });
}
