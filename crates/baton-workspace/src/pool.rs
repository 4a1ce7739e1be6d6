//! A tiny scoped worker pool: hashing is CPU-bound and the daemon runs us on a blocking thread,
//! so a few std threads pulling from a shared counter are all the parallelism needed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

/// Threads to use when the caller does not say: the machine's parallelism, at most 8.
pub(crate) fn default_threads() -> usize {
    thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Applies `f` to every item on up to `threads` threads, each with its own state from `init`;
/// results come back in item order.
pub(crate) fn map<T, S, R>(
    items: &[T],
    threads: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R>
where
    T: Sync,
    R: Send,
{
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        let mut state = init();
        return items.iter().map(|it| f(&mut state, it)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<R>> = Vec::with_capacity(items.len());
    slots.resize_with(items.len(), || None);
    thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut state = init();
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        out.push((i, f(&mut state, item)));
                    }
                    out
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(done) => {
                    for (i, r) in done {
                        slots[i] = Some(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    slots
        .into_iter()
        .map(|r| r.expect("every index below len is taken by exactly one worker"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_across_threads() {
        let items: Vec<u64> = (0..1000).collect();
        let out = super::map(
            &items,
            3,
            || 0u64,
            |n, x| {
                *n += 1;
                x * 2
            },
        );
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        assert!(super::map(&[] as &[u8], 4, || (), |_, x| *x).is_empty());
    }
}
