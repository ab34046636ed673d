//! How fast the pool may be handed to clients it has never seen: a token bucket,
//! so a flood of DISCOVERs or REQUESTs with random MACs cannot drain the pool or
//! make the server fsync a lease per packet. Declared nodes (reservations) and
//! clients that already hold a lease never ask the bucket. Pure: `now` comes in.

/// `[dhcp] new_clients_per_minute` and `new_clients_burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Steady rate of allocations to new clients.
    pub per_minute: u32,
    /// How many may come at once (a rack powering on) before the rate applies.
    pub burst: u32,
}

impl From<&crate::config::DhcpConfig> for RateLimit {
    fn from(d: &crate::config::DhcpConfig) -> Self {
        RateLimit {
            per_minute: d.new_clients_per_minute,
            burst: d.new_clients_burst,
        }
    }
}

/// The config file's defaults.
impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::from(&crate::config::DhcpConfig::default())
    }
}

/// Tokens in thousandths, so a rate below one per second still refills smoothly
/// with a clock in whole seconds.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    limit: RateLimit,
    milli: u64,
    last: u64,
}

impl TokenBucket {
    /// A full bucket at time `now`.
    pub fn new(limit: RateLimit, now: u64) -> TokenBucket {
        TokenBucket {
            limit,
            milli: u64::from(limit.burst) * 1000,
            last: now,
        }
    }

    /// Takes one token if there is one at `now`.
    pub fn take(&mut self, now: u64) -> bool {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        let cap = u64::from(self.limit.burst) * 1000;
        let refill = elapsed
            .saturating_mul(u64::from(self.limit.per_minute))
            .saturating_mul(1000)
            / 60;
        self.milli = self.milli.saturating_add(refill).min(cap);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let mut b = TokenBucket::new(
            RateLimit {
                per_minute: 30,
                burst: 5,
            },
            1000,
        );
        let granted = (0..100).filter(|_| b.take(1000)).count();
        assert_eq!(granted, 5, "the burst, then nothing in the same second");
        // 30 a minute: one every two seconds.
        assert!(!b.take(1001));
        assert!(b.take(1002));
        assert!(!b.take(1002));
        // A long quiet spell refills to the burst, not beyond.
        let granted = (0..100).filter(|_| b.take(5000)).count();
        assert_eq!(granted, 5);
    }

    #[test]
    fn a_minute_of_flood_gets_burst_plus_rate() {
        let limit = RateLimit {
            per_minute: 60,
            burst: 10,
        };
        let mut b = TokenBucket::new(limit, 0);
        let granted: usize = (0..60u64)
            .map(|s| (0..1000).filter(|_| b.take(s)).count())
            .sum();
        assert_eq!(granted, 10 + 59);
        // A clock that steps back refills nothing and underflows nothing.
        assert!(b.take(120), "refilled to the burst after a quiet minute");
        let left = (0..100).filter(|_| b.take(10)).count();
        assert_eq!(left, 9);
    }

    #[test]
    fn huge_rates_and_clocks_do_not_overflow() {
        let mut b = TokenBucket::new(
            RateLimit {
                per_minute: u32::MAX,
                burst: u32::MAX,
            },
            0,
        );
        assert!(b.take(u64::MAX / 2));
        assert!(b.take(u64::MAX));
    }

    #[test]
    fn a_zero_rate_still_grants_the_burst_only() {
        let mut b = TokenBucket::new(
            RateLimit {
                per_minute: 0,
                burst: 2,
            },
            0,
        );
        assert!(b.take(0) && b.take(0));
        assert!(!b.take(1_000_000));
    }
}
