//! The arithmetic of the load's pacing: the open loop's fixed schedule (`--rate`), how far a run
//! kept to it, and the closed loop's expected interval for hdrhistogram's correction.

use std::time::Duration;

/// Started later than this after its due time, a request counts as late: the generator (or a
/// pool with every connection busy) fell behind the schedule.
pub const LATE: Duration = Duration::from_millis(10);

/// The open loop's schedule: request `i` is due `i / rate` seconds after its origin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Requests per second.
    pub rate: f64,
    /// Requests in the whole schedule.
    pub total: u64,
}

impl Schedule {
    /// `rate` for `seconds`, or `requests` in all, whichever is fewer (`None` when neither or
    /// when the rate is not a positive number).
    pub fn new(rate: f64, seconds: Option<u64>, requests: Option<u64>) -> Option<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return None;
        }
        // Floor: a run of S seconds holds only the requests due before its end.
        let by_time = seconds.map(|s| (rate * s as f64).floor() as u64);
        let total = match (by_time, requests) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some(Self { rate, total })
    }

    /// When request `i` is due, after the schedule's origin.
    pub fn due(&self, i: u64) -> Duration {
        Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// How long the schedule is meant to take.
    pub fn length(&self) -> Duration {
        Duration::from_secs_f64(self.total as f64 / self.rate)
    }

    /// No request starts after this (from the origin): a front far behind would otherwise keep
    /// the run going for as long as its backlog lasts. Twice the schedule, at least 5 s more.
    pub fn give_up_after(&self) -> Duration {
        (self.length() * 2).max(self.length() + Duration::from_secs(5))
    }

    /// Requests started per second: `started` of them, the last at `last_start` after the origin.
    /// On schedule this is the rate (the last of n starts at (n − 1) / rate).
    pub fn achieved_start_rate(&self, started: u64, last_start: Duration) -> f64 {
        if started == 0 {
            return 0.0;
        }
        started as f64 / (last_start.as_secs_f64() + 1.0 / self.rate)
    }

    /// Under 95 % of the rate: the generator could not keep to the schedule.
    pub fn fell_behind(&self, started: u64, last_start: Duration) -> bool {
        self.achieved_start_rate(started, last_start) < 0.95 * self.rate
    }
}

/// The closed loop's expected interval between one connection's requests, in microseconds, for
/// hdrhistogram's coordinated-omission correction: the connections over the achieved request
/// rate. `None` without any answered request.
pub fn expected_interval_micros(
    connections: usize,
    answered: u64,
    elapsed: Duration,
) -> Option<u64> {
    if answered == 0 || connections == 0 {
        return None;
    }
    let micros = connections as f64 * elapsed.as_secs_f64() * 1e6 / answered as f64;
    Some((micros.round() as u64).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_holds_the_requests_due_before_the_end_or_the_count_given() {
        let by_time = Schedule::new(2000.0, Some(10), None).expect("a schedule");
        assert_eq!(by_time.total, 20_000);
        assert_eq!(by_time.due(0), Duration::ZERO);
        assert_eq!(by_time.due(1), Duration::from_micros(500));
        assert_eq!(by_time.due(19_999), Duration::from_micros(9_999_500));
        assert_eq!(by_time.length(), Duration::from_secs(10));
        assert_eq!(by_time.give_up_after(), Duration::from_secs(20));
        let short = Schedule::new(100.0, Some(2), None).expect("a schedule");
        assert_eq!(short.give_up_after(), Duration::from_secs(7));

        assert_eq!(
            Schedule::new(3.0, Some(1), Some(100)).map(|s| s.total),
            Some(3)
        );
        assert_eq!(
            Schedule::new(3.0, Some(10), Some(5)).map(|s| s.total),
            Some(5)
        );
        assert_eq!(Schedule::new(3.0, None, Some(5)).map(|s| s.total), Some(5));
        // A fractional rate: 2.5 a second for 3 s is 7 whole requests, the 8th due at 3.2 s.
        assert_eq!(Schedule::new(2.5, Some(3), None).map(|s| s.total), Some(7));
        assert_eq!(Schedule::new(0.0, Some(3), None), None);
        assert_eq!(Schedule::new(f64::NAN, Some(3), None), None);
        assert_eq!(Schedule::new(10.0, None, None), None);
    }

    #[test]
    fn a_run_on_schedule_achieves_the_rate_and_one_behind_is_flagged() {
        let schedule = Schedule::new(1000.0, Some(10), None).expect("a schedule");
        let on_time = schedule.due(9_999);
        assert!((schedule.achieved_start_rate(10_000, on_time) - 1000.0).abs() < 1e-6);
        assert!(!schedule.fell_behind(10_000, on_time));
        // The same requests started over 12 s: 833/s.
        assert!(schedule.fell_behind(10_000, Duration::from_secs(12)));
        // 96 % of the rate is close enough.
        assert!(!schedule.fell_behind(9_600, on_time));
        assert_eq!(schedule.achieved_start_rate(0, Duration::ZERO), 0.0);
    }

    #[test]
    fn the_closed_loop_interval_is_connections_over_the_achieved_rate() {
        // 256 connections answered 150,000 requests in 10 s: 15,000/s, each connection one
        // request every 17.07 ms.
        assert_eq!(
            expected_interval_micros(256, 150_000, Duration::from_secs(10)),
            Some(17_067)
        );
        assert_eq!(
            expected_interval_micros(256, 0, Duration::from_secs(10)),
            None
        );
        assert_eq!(expected_interval_micros(1, 10, Duration::ZERO), Some(1));
    }
}
