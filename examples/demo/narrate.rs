//! How the demo talks: numbered step headings, indented lines and events, a progress bar,
//! and the checks that decide whether a step behaved as the story says it must.

use evergreen::Event;
use indicatif::{ProgressBar, ProgressStyle};
use std::fmt::Debug;
use std::sync::Mutex;

/// Why a step did not go as expected: printed under the step, and the demo exits 1.
#[derive(Debug)]
pub struct Failure(pub String);

impl From<evergreen::Error> for Failure {
    fn from(e: evergreen::Error) -> Failure {
        Failure(format!("unexpected error[{}]: {}", e.kind(), e.message()))
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure(format!("unexpected I/O error: {e}"))
    }
}

/// The result of a step or of one of its parts.
pub type Outcome<T = ()> = Result<T, Failure>;

/// Fails with "`what`: expected …, found …" unless `found == expected`.
pub fn expect_eq<T: PartialEq + Debug>(what: &str, found: T, expected: T) -> Outcome {
    if found == expected {
        Ok(())
    } else {
        Err(Failure(format!(
            "{what}: expected {expected:?}, found {found:?}"
        )))
    }
}

/// Fails with `message` unless `condition` holds.
pub fn ensure(condition: bool, message: impl FnOnce() -> String) -> Outcome {
    if condition {
        Ok(())
    } else {
        Err(Failure(message()))
    }
}

/// The terminal, shared by the steps and the updater's event callback (which may fire
/// while a progress bar is drawn, so every line goes through the bar when there is one).
#[derive(Default)]
pub struct Console {
    bar: Mutex<Option<ProgressBar>>,
    events: Mutex<Vec<Event>>,
}

impl Console {
    /// A step's heading.
    pub fn heading(&self, number: usize, title: &str) {
        self.line(&format!("\n{number}. {title}"));
        self.line(&"─".repeat(title.chars().count() + 3));
    }

    /// A line of narrative under the current step.
    pub fn say(&self, text: impl AsRef<str>) {
        self.line(&format!("   {}", text.as_ref()));
    }

    /// A check that passed.
    pub fn ok(&self, text: impl AsRef<str>) {
        self.line(&format!("   ✓ {}", text.as_ref()));
    }

    /// An event from the updater, indented under the step, and kept for the checks.
    pub fn event(&self, event: &Event) {
        self.line(&format!("       event {}: {event}", event_name(event)));
        lock(&self.events).push(event.clone());
    }

    /// The events seen since the last call, oldest first.
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut *lock(&self.events))
    }

    /// Starts a download bar of `total` bytes; lines printed meanwhile go above it.
    pub fn start_bar(&self, total: u64) -> ProgressBar {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("   {bar:40.green/white} {bytes:>9}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        *lock(&self.bar) = Some(bar.clone());
        bar
    }

    /// Leaves the finished bar on screen; the step then prints what was downloaded.
    pub fn finish_bar(&self) {
        if let Some(bar) = lock(&self.bar).take() {
            bar.finish();
            // indicatif leaves the cursor at the end of the bar's line.
            if !bar.is_hidden() {
                eprintln!();
            }
        }
    }

    fn line(&self, text: &str) {
        let bar = lock(&self.bar).clone();
        match bar {
            Some(bar) => bar.suspend(|| println!("{text}")),
            None => println!("{text}"),
        }
    }
}

/// The event's stable name, as its JSON `event` tag spells it.
fn event_name(event: &Event) -> String {
    serde_json::from_str::<serde_json::Value>(&event.to_json())
        .ok()
        .and_then(|v| v["event"].as_str().map(str::to_string))
        .unwrap_or_else(|| "event".to_string())
}

/// A poisoned lock only means a print panicked earlier; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
