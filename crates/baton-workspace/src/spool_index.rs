//! A chunk index of a scan kept on disk: per part, an 8-byte key of each chunk (sorted) says
//! which part may hold a hash; the indexes of the few parts used last stay in memory and others
//! are rebuilt from the spool when asked for. Memory: 8 bytes per chunk plus a few parts, where
//! a whole [`ChunkIndex`] holds about 60 bytes per chunk and every path.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use baton_proto::workspace::{ChunkParams, ContentHash};

use crate::error::Result;
use crate::index::{ChunkIndex, Located, Proof};
use crate::spool::{SpoolReader, SpooledScan};

/// Part indexes kept in memory by default.
pub const CACHED_PARTS: usize = 4;

/// Where a stager or a plan looks for chunks this machine already holds.
pub trait LocalChunks: Send + Sync {
    /// The chunk parameters of what is indexed.
    fn params(&self) -> ChunkParams;
    /// True when the chunk is indexed (it may still turn out stale when read).
    fn contains(&self, hash: &ContentHash) -> bool;
    /// Reads the chunk into `buf`, proved to be its bytes; `None` when not held (or stale).
    fn read_proved(&self, hash: &ContentHash, buf: &mut Vec<u8>) -> Option<Proof>;
    /// Where the chunk lies in a file of this machine, when that is known.
    fn locate(&self, hash: &ContentHash) -> Option<Located> {
        let _ = hash;
        None
    }
}

impl LocalChunks for ChunkIndex {
    fn params(&self) -> ChunkParams {
        ChunkIndex::params(self)
    }

    fn contains(&self, hash: &ContentHash) -> bool {
        ChunkIndex::contains(self, hash)
    }

    fn read_proved(&self, hash: &ContentHash, buf: &mut Vec<u8>) -> Option<Proof> {
        ChunkIndex::read_proved(self, hash, buf)
    }

    fn locate(&self, hash: &ContentHash) -> Option<Located> {
        ChunkIndex::locate(self, hash)
    }
}

/// See the module's documentation.
pub struct SpooledIndex {
    spool: SpoolReader,
    params: ChunkParams,
    cache_parts: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Per part indexed, its number in the spool and the sorted keys of its chunks.
    keys: Vec<(usize, Vec<u64>)>,
    /// Indexes of the parts used last, newest last.
    cached: VecDeque<(usize, Arc<ChunkIndex>)>,
}

impl SpooledIndex {
    /// An empty index over `spool`'s parts (added with [`SpooledIndex::push`] as they are
    /// written), keeping `cache_parts` part indexes in memory.
    pub fn new(spool: SpoolReader, params: ChunkParams, cache_parts: usize) -> Self {
        Self {
            spool,
            params,
            cache_parts: cache_parts.max(1),
            state: Mutex::default(),
        }
    }

    /// An index of a whole spooled scan, reading each part once.
    pub fn of_scan(scan: &SpooledScan) -> Result<Self> {
        let idx = Self::new(scan.reader().clone(), scan.head().params, CACHED_PARTS);
        for n in 0..scan.reader().parts() {
            idx.push(n, ChunkIndex::from_scan(&scan.reader().part(n)?));
        }
        Ok(idx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Indexes spool part `number`, whose index was just built.
    pub fn push(&self, number: usize, index: ChunkIndex) {
        let mut st = self.lock();
        st.keys.push((number, index.keys()));
        st.cache(number, Arc::new(index), self.cache_parts);
    }

    /// Part indexes in memory now.
    pub fn cached_parts(&self) -> Vec<usize> {
        self.lock().cached.iter().map(|(n, _)| *n).collect()
    }

    /// The index of a part that holds `hash`, if any (rebuilt from the spool when it is not in
    /// memory; a part that cannot be read counts as not holding it).
    pub fn find(&self, hash: &ContentHash) -> Option<Arc<ChunkIndex>> {
        let wanted = {
            let st = self.lock();
            if let Some((_, idx)) = st.cached.iter().rev().find(|(_, i)| i.contains(hash)) {
                return Some(Arc::clone(idx));
            }
            let key = ChunkIndex::key_of(hash);
            // The newest parts are likeliest (a source is asked for what it just sent).
            st.keys
                .iter()
                .rev()
                .filter(|(n, keys)| {
                    !st.cached.iter().any(|(c, _)| c == n) && keys.binary_search(&key).is_ok()
                })
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
        };
        for number in wanted {
            let Ok(part) = self.spool.part(number) else {
                continue;
            };
            let index = Arc::new(ChunkIndex::from_scan(&part));
            self.lock()
                .cache(number, Arc::clone(&index), self.cache_parts);
            if index.contains(hash) {
                return Some(index);
            }
        }
        None
    }

    /// Reads a chunk into `buf` (see [`ChunkIndex::read_into`]).
    pub fn read_into(&self, hash: &ContentHash, buf: &mut Vec<u8>) -> bool {
        self.find(hash).is_some_and(|i| i.read_into(hash, buf))
    }
}

impl State {
    fn cache(&mut self, number: usize, index: Arc<ChunkIndex>, keep: usize) {
        self.cached.retain(|(n, _)| *n != number);
        self.cached.push_back((number, index));
        while self.cached.len() > keep {
            self.cached.pop_front();
        }
    }
}

impl LocalChunks for SpooledIndex {
    fn params(&self) -> ChunkParams {
        self.params
    }

    fn contains(&self, hash: &ContentHash) -> bool {
        self.find(hash).is_some()
    }

    fn read_proved(&self, hash: &ContentHash, buf: &mut Vec<u8>) -> Option<Proof> {
        self.find(hash)?.read_proved(hash, buf)
    }

    fn locate(&self, hash: &ContentHash) -> Option<Located> {
        self.find(hash)?.locate(hash)
    }
}
