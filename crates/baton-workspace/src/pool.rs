//! A tiny scoped worker pool: hashing is CPU-bound and the daemon runs us on a blocking thread,
//! so a few std threads pulling from a shared counter are all the parallelism needed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;

/// Threads to use when the caller does not say: the machine's parallelism, at most 8.
pub(crate) fn default_threads() -> usize {
    thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8)
}

/// Threads for work that mostly waits on the disk (hashing files whose pages are not cached):
/// twice the cores, since a cold read keeps a thread waiting and the disk serves several
/// reads at once faster than one after another.
pub(crate) fn io_threads() -> usize {
    (default_threads() * 2).clamp(2, 16)
}

/// Applies `f` to every item on one thread per state of `states` (at most one per item), each
/// thread with a state of its own; results come back in item order. The states outlive the
/// call, so a caller that maps batch after batch keeps their buffers warm instead of
/// allocating and faulting in new ones for every batch.
pub(crate) fn map<T, S, R>(
    items: &[T],
    states: &mut [S],
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R>
where
    T: Sync,
    S: Send,
    R: Send,
{
    let threads = states.len().min(items.len());
    if threads <= 1 {
        let Some(state) = states.first_mut() else {
            assert!(items.is_empty(), "pool::map needs a state for its items");
            return Vec::new();
        };
        return items.iter().map(|it| f(state, it)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<R>> = Vec::with_capacity(items.len());
    slots.resize_with(items.len(), || None);
    thread::scope(|s| {
        let workers: Vec<_> = states[..threads]
            .iter_mut()
            .map(|state| {
                let (next, f) = (&next, &f);
                s.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        out.push((i, f(state, item)));
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

/// Runs `f` on every index below `n` on up to `threads` threads, each with its own state from
/// `init`, and stops at the first error: the error returned is that of the lowest index that
/// failed. Unlike [`map`] it keeps nothing per item, so a pass over a million files holds no
/// list of a million results.
pub(crate) fn try_each<S, E: Send>(
    n: usize,
    threads: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let threads = threads.clamp(1, n.max(1));
    if threads == 1 {
        let mut state = init();
        return (0..n).try_for_each(|i| f(&mut state, i));
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let failed: Mutex<Option<(usize, E)>> = Mutex::new(None);
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut state = init();
                // Checked only before taking an index, so every index below a failed one is
                // taken and run to its end: the lowest failure is always seen.
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    if let Err(err) = f(&mut state, i) {
                        stop.store(true, Ordering::Relaxed);
                        let mut first = failed.lock().unwrap_or_else(PoisonError::into_inner);
                        if first.as_ref().is_none_or(|(j, _)| i < *j) {
                            *first = Some((i, err));
                        }
                        break;
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap_or_else(PoisonError::into_inner) {
        Some((_, err)) => Err(err),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_across_threads() {
        let items: Vec<u64> = (0..1000).collect();
        let mut counts = [0u64; 3];
        let out = super::map(&items, &mut counts, |n, x| {
            *n += 1;
            x * 2
        });
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        // The states are the caller's: together they saw every item once.
        assert_eq!(counts.iter().sum::<u64>(), 1000);
        assert!(super::map(&[] as &[u8], &mut [(), ()], |_, x| *x).is_empty());
        assert!(super::map(&[] as &[u8], &mut [] as &mut [()], |_, x| *x).is_empty());
        let mut one = [0u64];
        assert_eq!(
            super::map(&[1u8, 2], &mut one, |n, x| {
                *n += 1;
                *x
            }),
            vec![1, 2]
        );
        assert_eq!(one[0], 2);
    }

    #[test]
    fn try_each_runs_every_index_and_reports_the_lowest_failure() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        for threads in [1, 3] {
            let seen = AtomicUsize::new(0);
            let all = super::try_each(
                1000,
                threads,
                || (),
                |_, i| {
                    seen.fetch_add(i, Ordering::Relaxed);
                    Ok::<(), usize>(())
                },
            );
            assert_eq!(all, Ok(()));
            assert_eq!(seen.into_inner(), (0..1000).sum::<usize>());
            let failed = super::try_each(
                1000,
                threads,
                || (),
                |_, i| if i % 100 == 37 { Err(i) } else { Ok(()) },
            );
            assert_eq!(failed, Err(37), "{threads} threads");
            assert_eq!(super::try_each(0, threads, || (), |_, i| Err(i)), Ok(()));
        }
    }
}
