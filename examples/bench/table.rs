//! Samples, medians and the printed table.

use std::time::{Duration, Instant};

/// One line of the table.
pub struct Row {
    pub what: String,
    pub measured: String,
    pub baseline: String,
    pub target: String,
    /// `None` when the row could not be measured (a tool is missing, say).
    pub pass: Option<bool>,
    /// Why it missed, or what else is worth knowing.
    pub note: String,
    /// The step went wrong (not a tool that is missing): the run exits non-zero.
    pub failed: bool,
}

impl Row {
    pub fn new(what: impl Into<String>, target: impl Into<String>) -> Row {
        Row {
            what: what.into(),
            measured: "—".into(),
            baseline: "—".into(),
            target: target.into(),
            pass: None,
            note: String::new(),
            failed: false,
        }
    }

    /// A row left out on purpose (a tool is missing, or `--quick`).
    pub fn skipped(what: impl Into<String>, target: impl Into<String>, why: String) -> Row {
        Row {
            note: why,
            ..Row::new(what, target)
        }
    }

    /// A row whose measurement failed with `error`.
    /// Marks a row already under way as failed: its step went wrong.
    pub fn fail(&mut self, error: String) {
        self.note = format!("failed: {error}");
        self.failed = true;
    }

    pub fn failed(what: impl Into<String>, target: impl Into<String>, error: String) -> Row {
        Row {
            failed: true,
            ..Row::skipped(what, target, format!("failed: {error}"))
        }
    }
}

pub fn median(samples: &[f64]) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs `f` `runs` times, each after `setup` (untimed), and returns the seconds taken.
pub fn time_runs<S>(
    runs: usize,
    mut setup: impl FnMut() -> S,
    mut f: impl FnMut(S) -> Result<(), String>,
) -> Result<Vec<f64>, String> {
    (0..runs)
        .map(|_| {
            let s = setup();
            let t = Instant::now();
            f(s)?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

pub fn secs(s: f64) -> String {
    let d = Duration::from_secs_f64(s.max(0.0));
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.0} µs", d.as_secs_f64() * 1e6)
    }
}

pub fn bytes(n: f64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    if n >= MIB {
        format!("{:.2} MiB", n / MIB)
    } else if n >= 1024.0 {
        format!("{:.1} KiB", n / 1024.0)
    } else {
        format!("{n:.0} B")
    }
}

/// The table in Markdown, ready for docs/benchmarks.md.
pub fn print(rows: &[Row]) {
    println!("| what | measured (median) | baseline (same run) | target | result |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let result = match r.pass {
            Some(true) => "pass".to_string(),
            Some(false) => "**miss**".to_string(),
            None => "not measured".to_string(),
        };
        let result = if r.note.is_empty() {
            result
        } else {
            format!("{result}: {}", r.note)
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            r.what, r.measured, r.baseline, r.target, result
        );
    }
}
