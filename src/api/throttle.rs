//! Throttling of password attempts (POST /api/token, the password change),
//! per username and per client address, with governor's GCRA limiters.
//! A throttled attempt is refused before any hash is spent.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use warp::http::HeaderMap;

use super::error::ApiError;
use crate::config::{RateLimitConfig, ServerConfig};

/// The limiters and the proxies whose `X-Forwarded-For` is believed.
pub struct Throttle {
    enabled: bool,
    by_username: DefaultKeyedRateLimiter<String>,
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    trusted_proxies: Vec<IpAddr>,
    checks: AtomicU64,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// Forget idle keys every this many checks, so the maps stay bounded.
const PRUNE_EVERY: u64 = 1024;

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

impl Throttle {
    /// Limiters from the config.
    pub fn new(limits: &RateLimitConfig, server: &ServerConfig) -> Throttle {
        Throttle {
            enabled: limits.enabled,
            by_username: RateLimiter::keyed(per_minute(limits.per_username_per_minute)),
            by_address: RateLimiter::keyed(per_minute(limits.per_address_per_minute)),
            trusted_proxies: server
                .trusted_proxies
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect(),
            checks: AtomicU64::new(0),
        }
    }

    /// The client's address: the socket peer, unless the peer is a trusted
    /// proxy; then the right-most `X-Forwarded-For` entry that is not one.
    pub fn client_address(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.ip();
        if !self.trusted_proxies.contains(&peer) {
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|item| item.trim().parse().ok())
            .collect();
        forwarded
            .iter()
            .rev()
            .find(|ip| !self.trusted_proxies.contains(ip))
            .or(forwarded.first())
            .copied()
            .or(Some(peer))
    }

    /// Counts one password attempt for `username` from `address`; `Err`
    /// with the wait when either limit is spent.
    pub fn attempt(&self, username: &str, address: Option<IpAddr>) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.by_username.retain_recent();
            self.by_address.retain_recent();
        }
        let now = DefaultClock::default().now();
        let wait = |not_until: governor::NotUntil<_>| ApiError::Throttled {
            wait: not_until.wait_time_from(now),
        };
        if let Some(address) = address {
            self.by_address.check_key(&address).map_err(wait)?;
        }
        self.by_username
            .check_key(&username.to_lowercase())
            .map_err(wait)
    }
}

/// Whole seconds to announce in `Retry-After`: never 0.
pub fn retry_after_seconds(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(per_username: u32, proxies: &[&str]) -> Throttle {
        Throttle::new(
            &RateLimitConfig {
                enabled: true,
                per_username_per_minute: per_username,
                per_address_per_minute: 1000,
            },
            &ServerConfig {
                trusted_proxies: proxies.iter().map(|p| (*p).to_owned()).collect(),
                ..ServerConfig::default()
            },
        )
    }

    #[test]
    fn a_username_is_throttled_after_its_burst_and_others_are_not() {
        let t = throttle(3, &[]);
        for _ in 0..3 {
            t.attempt("Alice", None).unwrap();
        }
        assert!(matches!(
            t.attempt("alice", None),
            Err(ApiError::Throttled { .. })
        ));
        t.attempt("bob", None).unwrap();
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.0.0.2".parse().unwrap());
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let untrusted = throttle(1, &[]);
        assert_eq!(
            untrusted.client_address(Some(peer), &headers),
            Some(peer.ip())
        );
        let trusted = throttle(1, &["10.0.0.1", "10.0.0.2"]);
        assert_eq!(
            trusted.client_address(Some(peer), &headers),
            Some("203.0.113.9".parse().unwrap())
        );
    }

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(11_500)), 12);
        assert_eq!(retry_after_seconds(Duration::from_secs(12)), 12);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    }
}
