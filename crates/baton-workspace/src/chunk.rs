//! Reading a file once to get both its BLAKE3 and its content-defined chunks.

use std::io::{self, Read};

use baton_proto::workspace::{ChunkParams, ChunkRef, ContentHash, FileData};
use fastcdc::v2020::{self, Normalization};

/// Cuts byte streams into chunks with fixed parameters, reusing one buffer across files.
pub(crate) struct Chunker {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    buf: Vec<u8>,
}

impl Chunker {
    /// A chunker for `params`, which must have passed [`ChunkParams::check`].
    pub(crate) fn new(params: &ChunkParams) -> Self {
        let level = match params.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        };
        let (mask_s, mask_l) = v2020::select_masks(params.avg_size as usize, level);
        let max = params.max_size as usize;
        Self {
            min: params.min_size as usize,
            avg: params.avg_size as usize,
            max,
            mask_s,
            mask_l,
            // Several chunks per read keeps syscalls few; at least `max` so every cut sees a full
            // window, which makes cut points independent of how reads happen to fall.
            buf: vec![0; (4 * max).max(1 << 20)],
        }
    }

    /// Reads `r` to its end; returns the size, the whole-stream BLAKE3 and the chunks.
    ///
    /// The bytes are read once. A stream that turns out to be a single chunk is hashed once, since
    /// its chunk hash is its file hash.
    pub(crate) fn digest(&mut self, mut r: impl Read) -> io::Result<FileData> {
        let mut file = blake3::Hasher::new();
        let mut chunks = Vec::new();
        let mut size = 0u64;
        let (mut start, mut len, mut eof) = (0usize, 0usize, false);
        // The first chunk is fed to the file hasher only once a second one exists.
        let mut first: Option<(usize, usize)> = None;
        loop {
            if !eof && len - start < self.max {
                if let Some((a, b)) = first.take() {
                    file.update(&self.buf[a..b]);
                }
                self.buf.copy_within(start..len, 0);
                len -= start;
                start = 0;
                while len < self.buf.len() {
                    match r.read(&mut self.buf[len..]) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => len += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if start == len {
                break;
            }
            let (_, cut) = v2020::cut(
                &self.buf[start..len],
                self.min,
                self.avg,
                self.max,
                self.mask_s,
                self.mask_l,
                self.mask_s << 1,
                self.mask_l << 1,
            );
            let end = start + cut;
            let bytes = &self.buf[start..end];
            if chunks.is_empty() {
                first = Some((start, end));
            } else {
                if let Some((a, b)) = first.take() {
                    file.update(&self.buf[a..b]);
                }
                file.update(bytes);
            }
            chunks.push(ChunkRef {
                hash: ContentHash(*blake3::hash(bytes).as_bytes()),
                len: cut as u32,
            });
            size += cut as u64;
            start = end;
        }
        let hash = match (&chunks[..], first) {
            ([only], Some(_)) => only.hash,
            _ => {
                if let Some((a, b)) = first {
                    file.update(&self.buf[a..b]);
                }
                ContentHash(*file.finalize().as_bytes())
            }
        };
        // Most files are one chunk, and a grown list keeps room for four: a manifest of 10⁵
        // files would carry megabytes of spare room.
        chunks.shrink_to_fit();
        Ok(FileData { size, hash, chunks })
    }
}

/// BLAKE3 of a byte slice as a [`ContentHash`].
pub(crate) fn hash_bytes(bytes: &[u8]) -> ContentHash {
    ContentHash(*blake3::hash(bytes).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Reads at most `step` bytes per call, to show cut points do not depend on read sizes.
    struct Dribble<'a>(&'a [u8], usize);
    impl Read for Dribble<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn matches_whole_buffer_chunking_and_b3sum() {
        let p = ChunkParams::DEFAULT;
        let data = noise(7, 3 * 1024 * 1024 + 12345);
        let expected: Vec<usize> = v2020::FastCDC::new(
            &data,
            p.min_size as usize,
            p.avg_size as usize,
            p.max_size as usize,
        )
        .map(|c| c.length)
        .collect();
        let mut c = Chunker::new(&p);
        for step in [data.len(), 1 << 20, 4096, 777] {
            let d = c.digest(Dribble(&data, step)).unwrap();
            let lens: Vec<usize> = d.chunks.iter().map(|c| c.len as usize).collect();
            assert_eq!(lens, expected, "read size {step}");
            assert_eq!(d.size, data.len() as u64);
            assert_eq!(d.hash, hash_bytes(&data));
            let mut off = 0;
            for ch in &d.chunks {
                assert_eq!(ch.hash, hash_bytes(&data[off..off + ch.len as usize]));
                off += ch.len as usize;
            }
        }
    }

    #[test]
    fn small_and_empty_files() {
        let mut c = Chunker::new(&ChunkParams::DEFAULT);
        let e = c.digest(&b""[..]).unwrap();
        assert_eq!((e.size, e.chunks.len()), (0, 0));
        assert_eq!(e.hash, hash_bytes(b""));
        let s = c.digest(&b"hello"[..]).unwrap();
        assert_eq!(s.chunks.len(), 1);
        assert_eq!(s.hash, hash_bytes(b"hello"));
        assert_eq!(s.chunks[0].hash, s.hash);
        // Just over `min` but below `max`: possibly one chunk, hashes still right.
        let data = noise(3, 100_000);
        let d = c.digest(&data[..]).unwrap();
        assert_eq!(d.hash, hash_bytes(&data));
    }

    #[test]
    fn chunks_respect_bounds() {
        let p = ChunkParams::DEFAULT;
        let mut c = Chunker::new(&p);
        let zeros = vec![0u8; 2 * 1024 * 1024 + 1];
        let d = c.digest(&zeros[..]).unwrap();
        let n = d.chunks.len();
        for (i, ch) in d.chunks.iter().enumerate() {
            assert!(ch.len <= p.max_size);
            if i + 1 < n {
                assert!(ch.len >= p.min_size);
            }
        }
    }
}
