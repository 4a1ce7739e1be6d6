//! The stager's table of chunks: every distinct chunk of the staged manifest, where it goes and
//! whether it is written, in the order the manifest first uses it.
//!
//! A big tree has hundreds of thousands of chunks, so this is kept to one record per chunk
//! (no separate order list or written set, each holding the hash again) and a hash table of
//! record numbers, hashed by the BLAKE3 digest itself.

use baton_proto::workspace::ContentHash;
use hashbrown::HashTable;

/// One place a chunk goes: an entry, an offset, and whether it holds the bytes yet.
#[derive(Clone, Copy, Debug)]
pub(super) struct Placement {
    pub(super) entry: u32,
    pub(super) offset: u64,
    pub(super) done: bool,
}

/// The places of one chunk: most chunks have one, which then takes no allocation of its own.
/// The list of several is boxed so that a place fits in 16 bytes, and a slot in 56.
#[derive(Debug)]
pub(super) enum Places {
    One(Placement),
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Placement>>),
}

impl Places {
    pub(super) fn iter(&self) -> std::slice::Iter<'_, Placement> {
        match self {
            Places::One(p) => std::slice::from_ref(p).iter(),
            Places::Many(v) => v.iter(),
        }
    }

    pub(super) fn iter_mut(&mut self) -> std::slice::IterMut<'_, Placement> {
        match self {
            Places::One(p) => std::slice::from_mut(p).iter_mut(),
            Places::Many(v) => v.iter_mut(),
        }
    }

    fn push(&mut self, p: Placement) {
        match self {
            Places::One(first) => *self = Places::Many(Box::new(vec![*first, p])),
            Places::Many(v) => v.push(p),
        }
    }
}

/// One distinct chunk.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) hash: ContentHash,
    pub(super) len: u32,
    /// Every place holds the chunk's bytes (and the journal says so).
    pub(super) written: bool,
    pub(super) at: Places,
}

/// Every distinct chunk of a manifest, in first-use order.
#[derive(Debug, Default)]
pub(super) struct ChunkTable {
    slots: Vec<Slot>,
    by_hash: HashTable<u32>,
    written: usize,
}

/// The table's hash of a chunk: its digest is uniformly random already.
fn key(hash: &ContentHash) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&hash.0[..8]);
    u64::from_le_bytes(k)
}

impl ChunkTable {
    fn find(&self, hash: &ContentHash) -> Option<usize> {
        let slots = &self.slots;
        self.by_hash
            .find(key(hash), |&i| slots[i as usize].hash == *hash)
            .map(|&i| i as usize)
    }

    pub(super) fn get(&self, hash: &ContentHash) -> Option<&Slot> {
        self.find(hash).map(|i| &self.slots[i])
    }

    pub(super) fn get_mut(&mut self, hash: &ContentHash) -> Option<&mut Slot> {
        self.find(hash).map(|i| &mut self.slots[i])
    }

    /// Adds a place of `hash`: to its record, or to a new one of length `len` (not written).
    /// Returns the record.
    pub(super) fn place(&mut self, hash: ContentHash, len: u32, p: Placement) -> &mut Slot {
        match self.find(&hash) {
            Some(i) => {
                let slot = &mut self.slots[i];
                slot.at.push(p);
                slot
            }
            None => {
                let i = self.slots.len();
                let n = u32::try_from(i).expect("a manifest's entries are counted in u32");
                let slots = &self.slots;
                self.by_hash
                    .insert_unique(key(&hash), n, |&j| key(&slots[j as usize].hash));
                self.slots.push(Slot {
                    hash,
                    len,
                    written: false,
                    at: Places::One(p),
                });
                &mut self.slots[i]
            }
        }
    }

    /// True when the chunk is in the table and written.
    pub(super) fn is_written(&self, hash: &ContentHash) -> bool {
        self.get(hash).is_some_and(|s| s.written)
    }

    /// Marks a chunk of the table written or not.
    pub(super) fn set_written(&mut self, hash: &ContentHash, written: bool) {
        let Some(i) = self.find(hash) else { return };
        let slot = &mut self.slots[i];
        if slot.written != written {
            slot.written = written;
            if written {
                self.written += 1;
            } else {
                self.written -= 1;
            }
        }
    }

    /// Marks written every chunk all of whose places hold their bytes.
    pub(super) fn mark_complete_written(&mut self) {
        for slot in &mut self.slots {
            if !slot.written && slot.at.iter().all(|p| p.done) {
                slot.written = true;
                self.written += 1;
            }
        }
    }

    /// Moves every place to the entry `entry` maps it to, dropping the places it maps to `None`
    /// and the chunks left with no place; a chunk whose remaining places all hold their bytes
    /// becomes written. First-use order is kept.
    pub(super) fn remap(&mut self, entry: impl Fn(u32) -> Option<u32>) {
        for slot in &mut self.slots {
            match &mut slot.at {
                Places::One(p) => match entry(p.entry) {
                    Some(e) => p.entry = e,
                    None => slot.at = Places::Many(Box::default()),
                },
                Places::Many(v) => v.retain_mut(|p| match entry(p.entry) {
                    Some(e) => {
                        p.entry = e;
                        true
                    }
                    None => false,
                }),
            }
        }
        self.slots.retain(|s| s.at.iter().next().is_some());
        self.written = self.slots.iter().filter(|s| s.written).count();
        self.by_hash.clear();
        let slots = &self.slots;
        for (i, s) in slots.iter().enumerate() {
            let n = u32::try_from(i).expect("a manifest's entries are counted in u32");
            self.by_hash
                .insert_unique(key(&s.hash), n, |&j| key(&slots[j as usize].hash));
        }
        self.mark_complete_written();
    }

    /// Distinct chunks.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Distinct chunks written.
    pub(super) fn written_count(&self) -> usize {
        self.written
    }

    /// Every chunk, in first-use order.
    pub(super) fn iter(&self) -> std::slice::Iter<'_, Slot> {
        self.slots.iter()
    }

    /// Chunk number `i` in first-use order.
    pub(super) fn slot(&self, i: usize) -> Option<&Slot> {
        self.slots.get(i)
    }

    /// The hashes of the written chunks.
    pub(super) fn written_hashes(&self) -> impl Iterator<Item = ContentHash> + '_ {
        self.slots.iter().filter(|s| s.written).map(|s| s.hash)
    }

    /// Gives back the memory a growing table keeps in reserve.
    pub(super) fn shrink(&mut self) {
        self.slots.shrink_to_fit();
        let slots = &self.slots;
        self.by_hash
            .shrink_to_fit(|&j| key(&slots[j as usize].hash));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(entry: u32) -> Placement {
        Placement {
            entry,
            offset: 0,
            done: false,
        }
    }

    #[test]
    fn chunks_keep_first_use_order_and_gather_their_places() {
        let mut t = ChunkTable::default();
        // Two hashes sharing their first 8 bytes: the table tells them apart all the same.
        let (a, mut b) = (ContentHash([1; 32]), ContentHash([1; 32]));
        b.0[31] = 2;
        let c = ContentHash([3; 32]);
        t.place(a, 10, at(0));
        t.place(b, 20, at(1));
        t.place(a, 10, at(2));
        t.place(c, 30, at(3));
        assert_eq!(t.len(), 3);
        let order: Vec<_> = t.iter().map(|s| s.hash).collect();
        assert_eq!(order, [a, b, c]);
        let places: Vec<u32> = t.get(&a).unwrap().at.iter().map(|p| p.entry).collect();
        assert_eq!(places, [0, 2]);
        assert_eq!(t.get(&b).unwrap().len, 20);

        t.set_written(&b, true);
        t.set_written(&b, true);
        t.set_written(&ContentHash([9; 32]), true);
        assert_eq!(t.written_count(), 1);
        assert!(t.is_written(&b) && !t.is_written(&a));
        assert_eq!(t.written_hashes().collect::<Vec<_>>(), [b]);
        t.set_written(&b, false);
        assert_eq!(t.written_count(), 0);
        let done = Placement {
            done: true,
            ..at(4)
        };
        t.place(c, 30, done);
        t.mark_complete_written();
        assert_eq!(
            t.written_count(),
            0,
            "c still has a place without its bytes"
        );
        t.get_mut(&c)
            .unwrap()
            .at
            .iter_mut()
            .for_each(|p| p.done = true);
        t.mark_complete_written();
        assert_eq!(t.written_hashes().collect::<Vec<_>>(), [c]);
        t.shrink();
        assert_eq!(t.get(&c).unwrap().len, 30);
    }

    #[test]
    fn a_slot_takes_56_bytes() {
        // The table holds one per distinct chunk: a million of them for a big tree.
        assert_eq!(std::mem::size_of::<Places>(), 16);
        assert_eq!(std::mem::size_of::<Slot>(), 56);
    }
}
