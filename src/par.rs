//! Two pieces of CPU work at once, on the second core when the work is worth a thread.
//!
//! A manifest of a thousand releases is hundreds of KiB: decoding its base64 and hashing it
//! take a few hundred microseconds each, and a thread costs tens. Small documents, the
//! usual case, and single-core devices run both pieces here, one after the other.

/// Below this many bytes of input, a thread costs more than it saves.
pub(crate) const MIN_PARALLEL_BYTES: usize = 64 << 10;

/// Whether work over `bytes` bytes is worth a second thread on this machine.
pub(crate) fn worth_it(bytes: usize) -> bool {
    bytes >= MIN_PARALLEL_BYTES && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
}

/// Runs `a` on this thread and `b` on a second one when `parallel`, else both here; returns
/// both results. A panic in `b` is raised again here.
pub(crate) fn join<A: Send, B: Send>(
    parallel: bool,
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    if !parallel {
        let first = a();
        return (first, b());
    }
    std::thread::scope(|s| {
        let second = s.spawn(b);
        let first = a();
        match second.join() {
            Ok(second) => (first, second),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ways_give_both_results_in_order() {
        for parallel in [false, true] {
            let data: Vec<u32> = (0..1000).collect();
            let (low, high) = join(
                parallel,
                || data[..500].iter().sum::<u32>(),
                || data[500..].iter().sum::<u32>(),
            );
            assert_eq!((low, high), (124_750, 374_750));
        }
    }

    #[test]
    fn only_large_inputs_are_worth_a_thread() {
        assert!(!worth_it(MIN_PARALLEL_BYTES - 1));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(worth_it(MIN_PARALLEL_BYTES), cores > 1);
    }
}
