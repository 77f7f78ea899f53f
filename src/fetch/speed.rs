//! The minimum average speed rule (DESIGN §5.4), shared by blob downloads and metadata
//! reads: a server that trickles bytes (TUF's slow retrieval attack) is cut off after a
//! window, where the idle-read timeout alone would wait as long as each read makes
//! progress.

use super::FetchOptions;
use crate::error::{Error, ErrorKind, Result};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The average speed over a sliding window, checked once the transfer is a window old.
pub(super) struct SpeedMeter {
    min: u64,
    window: Duration,
    started: Instant,
    /// (when, bytes so far), at least `window / 8` apart, the oldest at least a window
    /// old once there is such a sample: at most about ten entries.
    samples: VecDeque<(Instant, u64)>,
}

impl SpeedMeter {
    pub(super) fn new(options: &FetchOptions, now: Instant) -> SpeedMeter {
        SpeedMeter {
            min: options.min_speed_bytes_per_s,
            window: options.speed_window,
            started: now,
            samples: VecDeque::from([(now, 0)]),
        }
    }

    /// Fails with [`ErrorKind::SlowRetrieval`] once `bytes` (received since the meter
    /// started) have come in slower than the minimum over the last window.
    pub(super) fn check(&mut self, now: Instant, bytes: u64, url: &str) -> Result<()> {
        if self.min == 0 || self.window.is_zero() {
            return Ok(());
        }
        if let Some(horizon) = now.checked_sub(self.window) {
            while self.samples.len() > 1 && self.samples[1].0 <= horizon {
                self.samples.pop_front();
            }
        }
        let Some(&(since, base)) = self.samples.front() else {
            return Ok(());
        };
        if now.duration_since(self.started) >= self.window {
            // In integers: float formatting alone is 5 KB of a library that must fit 1 MiB.
            let elapsed = now.duration_since(since);
            let (got, nanos) = (u128::from(bytes - base), elapsed.as_nanos());
            if got * 1_000_000_000 < u128::from(self.min) * nanos {
                let speed = (got * 1_000_000_000 + nanos / 2) / nanos.max(1);
                return Err(Error::new(
                    ErrorKind::SlowRetrieval,
                    format!(
                        "{} {url}: expected at least {} bytes/s, found {speed} bytes/s \
                         ({got} bytes in the last {})",
                        super::fetch_verb(url),
                        self.min,
                        super::duration_words(elapsed)
                    ),
                ));
            }
        }
        if self
            .samples
            .back()
            .is_none_or(|(t, _)| now.duration_since(*t) >= self.window / 8)
        {
            self.samples.push_back((now, bytes));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter(min: u64, window_ms: u64, now: Instant) -> SpeedMeter {
        let options = FetchOptions {
            min_speed_bytes_per_s: min,
            speed_window: Duration::from_millis(window_ms),
            ..FetchOptions::default()
        };
        SpeedMeter::new(&options, now)
    }

    #[test]
    fn slow_start_is_forgiven_during_the_grace_period() {
        let t0 = Instant::now();
        let mut m = meter(1000, 1000, t0);
        assert!(m.check(t0 + Duration::from_millis(900), 1, "u").is_ok());
    }

    #[test]
    fn trickle_fails_after_the_window() {
        let t0 = Instant::now();
        let mut m = meter(1000, 1000, t0);
        for i in 1..10 {
            assert!(m.check(t0 + Duration::from_millis(i * 100), i, "u").is_ok());
        }
        let err = m
            .check(t0 + Duration::from_millis(1000), 10, "u")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SlowRetrieval);
    }

    #[test]
    fn window_slides_so_an_early_burst_does_not_hide_a_stall() {
        let t0 = Instant::now();
        let mut m = meter(1000, 1000, t0);
        assert!(m
            .check(t0 + Duration::from_millis(200), 1_000_000, "u")
            .is_ok());
        let mut t = 200;
        let mut outcome = Ok(());
        while t < 5000 && outcome.is_ok() {
            t += 100;
            outcome = m.check(t0 + Duration::from_millis(t), 1_000_000 + t / 10, "u");
        }
        assert_eq!(outcome.unwrap_err().kind(), ErrorKind::SlowRetrieval);
        assert!(t <= 1400, "stall noticed only at {t} ms");
        assert!(m.samples.len() <= 10);
    }
}
