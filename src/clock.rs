//! The hot path's clock: microseconds on the monotonic clock, as a plain
//! integer. A transaction reads it a few times; everything else is integer
//! arithmetic (with `Instant`, each subtraction cost about as much as a
//! reading, and a transaction made seven).

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A reading: microseconds since the process first read this clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Micros(u64);

/// The first reading, and the wall-clock time then.
struct Origin {
    instant: Instant,
    epoch_us: u64,
}

fn origin() -> &'static Origin {
    static ORIGIN: OnceLock<Origin> = OnceLock::new();
    ORIGIN.get_or_init(|| Origin {
        instant: Instant::now(),
        epoch_us: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
    })
}

/// Reads the clock.
pub fn now() -> Micros {
    let since = origin().instant.elapsed();
    Micros(since.as_secs() * 1_000_000 + u64::from(since.subsec_micros()))
}

impl Micros {
    /// Microseconds from `earlier` to this reading (0 if `earlier` is later).
    pub fn micros_since(self, earlier: Micros) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Whether at least `span` has passed from `earlier` to this reading.
    pub fn passed(self, earlier: Micros, span: Duration) -> bool {
        u128::from(self.micros_since(earlier)) >= span.as_micros()
    }

    /// Time from `earlier` to this reading (zero if `earlier` is later).
    pub fn duration_since(self, earlier: Micros) -> Duration {
        Duration::from_micros(self.micros_since(earlier))
    }

    /// Time from this reading to now.
    pub fn elapsed(self) -> Duration {
        now().duration_since(self)
    }

    /// This reading as a std `Instant` (for deadlines kept as `Instant`s),
    /// without reading the clock again.
    pub fn instant(self) -> Instant {
        origin().instant + Duration::from_micros(self.0)
    }

    /// This reading as wall-clock microseconds since the Unix epoch (the
    /// wall clock at the first reading, plus monotonic time since), for
    /// SHOW CLIENTS and SHOW SERVERS.
    pub fn epoch_us(self) -> u64 {
        origin().epoch_us + self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_count_microseconds_and_never_go_back() {
        let a = now();
        std::thread::sleep(Duration::from_millis(20));
        let b = now();
        assert!(b >= a);
        let us = b.micros_since(a);
        assert!(
            (20_000..2_000_000).contains(&us),
            "{us} µs for a 20 ms sleep"
        );
        assert_eq!(
            a.micros_since(b),
            0,
            "an earlier reading is not after a later one"
        );
        assert!(b.passed(a, Duration::from_millis(20)));
        assert!(!b.passed(a, Duration::from_secs(5)));
        assert!(a.elapsed() >= Duration::from_millis(20));
        let (ia, ib) = (a.instant(), b.instant());
        assert_eq!(
            ib - ia,
            Duration::from_micros(us),
            "as Instants, as far apart"
        );
        assert!(ib <= Instant::now());
    }

    #[test]
    fn epoch_time_follows_the_wall_clock() {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as u64;
        let diff = now().epoch_us().abs_diff(wall);
        assert!(diff < 1_000_000, "{diff} µs off the wall clock");
    }
}
