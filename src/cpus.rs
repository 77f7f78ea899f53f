//! The CPUs this process may run on, for the work split over threads (extraction, the
//! hash beside a manifest's parse): a thread beyond them only waits its turn.

/// The CPUs this process may run on: its affinity mask, so a cpuset is respected, else
/// (a mask the kernel will not give, or an empty one, as some old kernels return) the
/// CPUs online. Not `available_parallelism`, which also reads cgroup CPU quotas: 8.7 KB
/// of the library that is linked into firmware, where quotas are rare, and a thread
/// beyond a quota only waits its turn.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn usable() -> usize {
    // SAFETY: `set` is a plain bit array the kernel fills, of the size passed.
    let in_mask = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        match libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) {
            0 => libc::CPU_COUNT(&set),
            _ => 0,
        }
    };
    match in_mask {
        // SAFETY: a query without arguments.
        0 => unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize,
        n => n as usize,
    }
}

/// The CPUs this process may run on.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn usable() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// The affinity mask is Linux's.
#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;

    /// A thread pinned to one CPU counts one, and one free to use them all counts at
    /// least what std counts (which also applies cgroup quotas).
    #[test]
    fn usable_follows_the_affinity_mask() {
        let all = std::thread::available_parallelism().unwrap().get();
        assert!(usable() >= all, "{} < {all}", usable());
        let pinned = std::thread::spawn(|| {
            // SAFETY: plain bit arrays of the size passed; this thread's mask only.
            unsafe {
                let size = std::mem::size_of::<libc::cpu_set_t>();
                let mut allowed: libc::cpu_set_t = std::mem::zeroed();
                assert_eq!(libc::sched_getaffinity(0, size, &mut allowed), 0);
                // The first CPU the process may use (a cpuset need not hold CPU 0).
                let first = (0..libc::CPU_SETSIZE as usize)
                    .find(|&c| libc::CPU_ISSET(c, &allowed))
                    .unwrap();
                let mut one: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(first, &mut one);
                assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
            }
            usable()
        });
        assert_eq!(pinned.join().unwrap(), 1);
    }
}
