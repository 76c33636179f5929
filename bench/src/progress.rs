//! The line a run prints on stderr once a second while it goes: confirmed orders in the last
//! second, that second's p99 and the errors so far, so a run going wrong shows before its end.

use std::io::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::report::latency_histogram;

/// What the connections have seen so far, shared with the progress line.
#[derive(Debug)]
pub struct Live {
    pub confirmed: AtomicU64,
    /// Answers that are neither 201, 202 nor 303, and connections broken before an answer.
    pub errors: AtomicU64,
    /// Latencies (µs) since the last line: its p99 is the last second's, not the run's so far.
    window: Mutex<Histogram<u64>>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            confirmed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            window: Mutex::new(latency_histogram()),
        }
    }
}

impl Live {
    pub fn record(&self, micros: u64) {
        self.window
            .lock()
            .expect("not poisoned")
            .saturating_record(micros);
    }

    /// The last window's p99 in µs (`None` when nothing was answered in it); starts a new one.
    fn take_p99(&self) -> Option<u64> {
        let mut window = self.window.lock().expect("not poisoned");
        let p99 = (!window.is_empty()).then(|| window.value_at_quantile(0.99));
        window.reset();
        p99
    }
}

/// Writes the line every second from `origin` until its task is aborted. On a terminal each
/// line overwrites the last (`\r`); elsewhere (a log, CI) one line a second.
pub async fn print_every_second(live: std::sync::Arc<Live>, origin: Instant, terminal: bool) {
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::from_std(origin) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut confirmed_before = 0;
    let mut last = origin;
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let confirmed = live.confirmed.load(Ordering::Relaxed);
        // Per second of what actually passed: a tick delayed by a busy machine is not a spike.
        let per_second =
            (confirmed - confirmed_before) as f64 / (now - last).as_secs_f64().max(1e-3);
        let line = progress_line(
            (now - origin).as_secs_f64().round() as u64,
            per_second.round() as u64,
            live.take_p99(),
            live.errors.load(Ordering::Relaxed),
        );
        (confirmed_before, last) = (confirmed, now);
        let mut err = std::io::stderr().lock();
        let _ = if terminal {
            write!(err, "\r{line}   ")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
}

/// Ends the line a terminal was left on, so the report starts on a line of its own.
pub fn finish(terminal: bool) {
    if terminal {
        let _ = writeln!(std::io::stderr().lock());
    }
}

/// `  12s  9,870 orders/s  p99 14 ms  errors 0`.
pub fn progress_line(
    second: u64,
    orders_per_second: u64,
    p99_micros: Option<u64>,
    errors: u64,
) -> String {
    let p99 = match p99_micros {
        Some(us) if us >= 10_000 => format!("{:.0} ms", us as f64 / 1e3),
        Some(us) => format!("{:.1} ms", us as f64 / 1e3),
        None => "–".to_owned(),
    };
    format!(
        "{second:>4}s  {} orders/s  p99 {p99}  errors {}",
        thousands(orders_per_second),
        thousands(errors)
    )
}

/// 12345678 → "12,345,678", as README writes its figures.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reads_like_readme_figures() {
        assert_eq!(
            progress_line(12, 9_870, Some(14_200), 0),
            "  12s  9,870 orders/s  p99 14 ms  errors 0"
        );
        assert_eq!(
            progress_line(3, 0, None, 1_234),
            "   3s  0 orders/s  p99 –  errors 1,234"
        );
        assert_eq!(
            progress_line(1, 512, Some(2_345), 0),
            "   1s  512 orders/s  p99 2.3 ms  errors 0"
        );
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(294_738), "294,738");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }

    #[test]
    fn each_window_has_its_own_p99() {
        let live = Live::default();
        for _ in 0..100 {
            live.record(1_000);
        }
        assert_eq!(live.take_p99().map(|us| us / 10), Some(100));
        assert_eq!(live.take_p99(), None);
    }
}
