//! How often a credential was used recently: a counter per minute for the last hour, lock-free.
//! `/credentials` shows uses in the last 5 minutes and the last hour, so that a credential held
//! but unused stands out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const MINUTES: usize = 60;

/// Total uses and a ring of per-minute counts. Each bucket packs its minute (high 32 bits) and
/// its count (low 32 bits) in one atomic, so a bucket from an hour ago is never mistaken for
/// this minute's.
pub(crate) struct Uses {
    total: AtomicU64,
    minutes: [AtomicU64; MINUTES],
}

impl Default for Uses {
    fn default() -> Self {
        Uses {
            total: AtomicU64::new(0),
            minutes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn minute_now() -> u64 {
    minute_of(SystemTime::now())
}

fn minute_of(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
        & 0xffff_ffff
}

impl Uses {
    /// One use, now.
    pub fn add(&self) {
        self.add_at_time(SystemTime::now());
    }

    /// One use at `time` (a reading of the clock the caller made anyway).
    pub fn add_at_time(&self, time: SystemTime) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.add_at(minute_of(time));
    }

    fn add_at(&self, minute: u64) {
        let bucket = &self.minutes[(minute as usize) % MINUTES];
        let mut current = bucket.load(Ordering::Relaxed);
        loop {
            let next = if current >> 32 == minute {
                current + 1
            } else {
                (minute << 32) | 1
            };
            match bucket.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Uses in the last `minutes` minutes, this one included.
    pub fn recent(&self, minutes: u64) -> u64 {
        self.recent_at(minute_now(), minutes)
    }

    fn recent_at(&self, now: u64, minutes: u64) -> u64 {
        let minutes = minutes.min(MINUTES as u64);
        self.minutes
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .filter(|packed| {
                let minute = packed >> 32;
                minute <= now && now - minute < minutes
            })
            .map(|packed| packed & 0xffff_ffff)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_counts_only_the_window() {
        let uses = Uses::default();
        for (minute, n) in [(1000u64, 3), (1004, 2), (1030, 5), (1059, 1)] {
            for _ in 0..n {
                uses.add_at(minute);
            }
        }
        assert_eq!(uses.recent_at(1059, 5), 1);
        assert_eq!(uses.recent_at(1004, 5), 5);
        assert_eq!(uses.recent_at(1059, 60), 11);
        // An hour later the same buckets are reused, never added to the new minute's count.
        uses.add_at(1060);
        assert_eq!(uses.recent_at(1060, 60), 1 + 2 + 5 + 1);
        assert_eq!(uses.recent_at(1060, 1), 1);
    }
}
