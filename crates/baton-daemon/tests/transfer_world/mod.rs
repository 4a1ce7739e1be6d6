//! A real server in this process (port 0, temp SQLite) with machines enrolled in one account,
//! each with its own authenticated client, plus in-memory chunk sources and sinks that record
//! what happens. Shared by `tests/transfer.rs` and `examples/transfer_bench.rs`.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_crypto::{AccountSecret, DataKey, MachineKeys, SessionCipher, TransferCipher};
use baton_daemon::client::Client;
use baton_daemon::identity::{Config, Identity};
use baton_daemon::transfer::{ChunkSink, ChunkSource, TransferConn, TransferTuning};
use baton_proto::workspace::{ChunkRef, ContentHash};
use baton_proto::{AccountId, HandoffId, MachineId, SessionId, now_millis};
use baton_server::{AppState, Hub, Timeouts, TransferLimits, TransferRegistry};
use baton_store::{MachineRow, SqliteStore, Store};
use tokio_util::sync::CancellationToken;

/// One enrolled machine.
pub struct Machine {
    /// Its id.
    pub id: MachineId,
    /// Its client, authenticated with its own keys.
    pub client: Client,
}

/// A server and machines `a`, `b`, `c` of one account, and `x` of another.
pub struct World {
    /// Server state (for the registry).
    pub state: Arc<AppState>,
    /// Server URL.
    pub url: String,
    /// The account of a, b, c.
    pub account: AccountId,
    /// Machines a, b, c.
    pub machines: Vec<Machine>,
    /// A machine of another account.
    pub outsider: Machine,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn machine_row(account: AccountId, name: &str, keys: &MachineKeys) -> MachineRow {
    MachineRow {
        id: MachineId::new(),
        account_id: account,
        name: name.into(),
        sign_pk: keys.sign_pk().to_vec(),
        box_pk: keys.box_pk().to_vec(),
        providers: Vec::new(),
        last_seen: None,
        kind: baton_proto::MachineKind::Daemon,
        created_at: now_millis(),
    }
}

fn client(url: &str, row: &MachineRow, keys: MachineKeys, secret: AccountSecret) -> Machine {
    let identity = Identity {
        config: Config {
            server: url.to_string(),
            account_id: row.account_id,
            machine_id: row.id,
            name: row.name.clone(),
        },
        keys,
        secret,
    };
    Machine {
        id: row.id,
        client: Client::new(Arc::new(identity), None).expect("client builds"),
    }
}

impl World {
    /// Starts the server with `limits` and enrols the machines.
    pub async fn start(limits: TransferLimits) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("baton.db"))
                .await
                .expect("store opens"),
        );
        let account = AccountId::new();
        let secret = AccountSecret::generate();
        let mut rows = Vec::new();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let keys = MachineKeys::generate();
            let row = machine_row(account, name, &keys);
            if i == 0 {
                store.create_account(account, &row).await.expect("account");
            } else {
                store.add_machine(&row).await.expect("machine");
            }
            rows.push((row, keys));
        }
        let other_account = AccountId::new();
        let outsider_keys = MachineKeys::generate();
        let outsider_row = machine_row(other_account, "x", &outsider_keys);
        store
            .create_account(other_account, &outsider_row)
            .await
            .expect("other account");

        let state = Arc::new(AppState {
            store,
            hub: Hub::default(),
            timeouts: Timeouts::default(),
            open_registration: false,
            transfers: TransferRegistry::new(limits),
            confirmations: baton_server::handoff::Confirmations::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let shutdown = CancellationToken::new();
        tokio::spawn(baton_server::serve(
            listener,
            state.clone(),
            shutdown.clone(),
        ));
        let machines = rows
            .into_iter()
            .map(|(row, keys)| {
                client(
                    &url,
                    &row,
                    keys,
                    AccountSecret::from_bytes(secret.to_bytes()),
                )
            })
            .collect();
        let outsider = client(
            &url,
            &outsider_row,
            outsider_keys,
            AccountSecret::generate(),
        );
        World {
            state,
            url,
            account,
            machines,
            outsider,
            shutdown,
            _dir: dir,
        }
    }

    /// Machine a, b or c.
    pub fn m(&self, i: usize) -> &Machine {
        &self.machines[i]
    }

    /// A transfer from a to b, allowed through the registry.
    pub fn allow_a_to_b(&self) -> HandoffId {
        let id = HandoffId::new();
        self.state
            .transfers
            .allow(id, self.account, self.m(0).id, self.m(1).id);
        id
    }

    /// Connection parameters of `machine` for `transfer`.
    pub fn conn(
        &self,
        machine: &Machine,
        transfer: HandoffId,
        tuning: TransferTuning,
    ) -> TransferConn {
        TransferConn {
            client: machine.client.clone(),
            transfer,
            tuning,
        }
    }
}

/// A cipher both ends share (they open the same session key).
pub fn cipher(transfer: HandoffId) -> TransferCipher {
    SessionCipher::new(DataKey::generate(), SessionId::new()).transfer(transfer)
}

/// Tuning without the environment's test hook.
pub fn tuning() -> TransferTuning {
    TransferTuning {
        drop_after_bytes: None,
        reconnect_timeout: Duration::from_secs(20),
        ..TransferTuning::default()
    }
}

/// Deterministic bytes (xorshift), so runs are reproducible.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The name of a chunk.
pub fn name(data: &[u8]) -> ContentHash {
    ContentHash(*blake3::hash(data).as_bytes())
}

/// A tree's chunks: `small` chunks of 1–20 KiB and `large` of 64–256 KiB, interleaved.
pub fn tree(small: usize, large: usize, seed: u64) -> Vec<Vec<u8>> {
    let n = small + large;
    let every = n.checked_div(large).unwrap_or(usize::MAX).max(1);
    (0..n)
        .map(|i| {
            let r: [u8; 8] = bytes(seed ^ ((i as u64) << 20), 8)
                .try_into()
                .expect("8 bytes");
            let pick = u64::from_le_bytes(r);
            let len = if i % every == 0 && i / every < large {
                64 * 1024 + (pick % (192 * 1024)) as usize
            } else {
                1024 + (pick % (19 * 1024)) as usize
            };
            bytes(seed.wrapping_mul(1_000_003) + i as u64, len)
        })
        .collect()
}

/// The manifest's view: name and length of each chunk.
pub fn refs(chunks: &[Vec<u8>]) -> Vec<ChunkRef> {
    chunks
        .iter()
        .map(|c| ChunkRef {
            hash: name(c),
            len: c.len() as u32,
        })
        .collect()
}

/// Shared counters of both ends, to check the window from outside.
#[derive(Default)]
pub struct Meter {
    /// Event clock.
    pub clock: AtomicU64,
    /// Bytes read by the source.
    pub read: AtomicU64,
    /// Bytes stored by the sink.
    pub stored: AtomicU64,
    /// Highest `read - stored` seen.
    pub peak_in_flight: AtomicU64,
}

impl Meter {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
}

/// A source serving chunks from memory, recording each read.
pub struct MemSource {
    chunks: HashMap<ContentHash, Vec<u8>>,
    /// Chunks that are gone (`None`).
    pub missing: HashSet<ContentHash>,
    /// Chunks whose content changed since the manifest (read, found not to match, gone).
    pub changed: HashSet<ContentHash>,
    /// (clock, hash) of each read.
    pub reads: Mutex<Vec<(u64, ContentHash)>>,
    meter: Arc<Meter>,
}

impl MemSource {
    /// Serves `chunks`.
    pub fn new(chunks: &[Vec<u8>], meter: Arc<Meter>) -> Self {
        Self {
            chunks: chunks.iter().map(|c| (name(c), c.clone())).collect(),
            missing: HashSet::new(),
            changed: HashSet::new(),
            reads: Mutex::new(Vec::new()),
            meter,
        }
    }
}

impl ChunkSource for MemSource {
    fn read(&self, hash: &ContentHash) -> io::Result<Option<Vec<u8>>> {
        let at = self.meter.tick();
        self.reads.lock().expect("lock").push((at, *hash));
        if self.missing.contains(hash) {
            return Ok(None);
        }
        let Some(data) = self.chunks.get(hash) else {
            return Ok(None);
        };
        let read = self
            .meter
            .read
            .fetch_add(data.len() as u64, Ordering::SeqCst)
            + data.len() as u64;
        let stored = self.meter.stored.load(Ordering::SeqCst);
        self.meter
            .peak_in_flight
            .fetch_max(read.saturating_sub(stored), Ordering::SeqCst);
        let mut read = data.clone();
        if self.changed.contains(hash) {
            read[0] ^= 0xff;
        }
        // As a real source does: what no longer has its name is gone.
        Ok((name(&read) == *hash).then_some(read))
    }
}

/// A sink keeping chunks in memory (or only counting them), recording each put.
pub struct MemSink {
    /// Stored chunks.
    pub got: Mutex<HashMap<ContentHash, Vec<u8>>>,
    /// (clock, hash) of each put.
    pub puts: Mutex<Vec<(u64, ContentHash)>>,
    /// Sleep per put, to play a slow disk.
    pub delay: Duration,
    /// Keep the bytes (off for benchmarks).
    pub keep: bool,
    meter: Arc<Meter>,
}

impl MemSink {
    /// An empty sink.
    pub fn new(meter: Arc<Meter>) -> Self {
        Self {
            got: Mutex::new(HashMap::new()),
            puts: Mutex::new(Vec::new()),
            delay: Duration::ZERO,
            keep: true,
            meter,
        }
    }
}

impl ChunkSink for MemSink {
    fn put(&self, hash: &ContentHash, data: &[u8]) -> io::Result<()> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let at = self.meter.tick();
        self.meter
            .stored
            .fetch_add(data.len() as u64, Ordering::SeqCst);
        if self.keep {
            self.puts.lock().expect("lock").push((at, *hash));
            self.got.lock().expect("lock").insert(*hash, data.to_vec());
        }
        Ok(())
    }
}
