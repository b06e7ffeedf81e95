//! Throttling of password guessing (POST /api/token, the password change),
//! per username and per client address, with governor's GCRA limiters.
//!
//! Per account, failed attempts are what is counted (OWASP: throttle failed
//! logins, so a user logging in from many devices is never slowed): the
//! attempts for one account are checked one at a time ([`Throttle::turn`]),
//! each failure takes a cell, and when the limiter refuses one the account
//! is blocked until governor says a cell is free again. Per address, every
//! attempt takes its cell before its hash is spent ([`Throttle::admit`]), as
//! DRF's throttles count every request: attempts for many usernames sent at
//! once from one address cannot overdraw its budget while they hash. Every
//! attempt for a blocked key, right password or not, is refused before any
//! hash is spent.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use crate::config::{RateLimitConfig, ServerConfig};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The limiters and the proxies whose `X-Forwarded-For` is believed.
pub struct Throttle {
    enabled: bool,
    by_account: DefaultKeyedRateLimiter<Who>,
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    /// Keys a limiter refused, until when (governor's own answer).
    blocked: Mutex<HashMap<Key, Instant>>,
    trusted_proxies: Vec<IpAddr>,
    checks: AtomicU64,
    /// One attempt at a time per account (see [`Throttle::turn`]).
    turns: Mutex<HashMap<Who, Arc<tokio::sync::Mutex<()>>>>,
}

/// Whose password is being tried: a username as typed at login, or a
/// signed-in user (the password change), who keeps their budget whatever
/// they rename themselves to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Who {
    /// A username: ASCII case ignored, no longer than any valid username
    /// can be, whatever a client sends.
    Name(String),
    /// A user's id.
    Id(i64),
}

impl Who {
    /// The account named `username` at login.
    pub fn name(username: &str) -> Who {
        Who::Name(
            username
                .chars()
                .take(150)
                .collect::<String>()
                .to_lowercase(),
        )
    }
}

/// What is throttled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(Who),
    Address(IpAddr),
}

/// Forget idle keys every this many attempts, so the maps stay bounded.
const PRUNE_EVERY: u64 = 1024;

/// `n` failures a minute: the cell of the n-th failure is the one governor
/// refuses, which blocks the key, so the attempt after it is throttled.
fn failures_per_minute(n: u32) -> Quota {
    per_minute(n, n - 1)
}

/// `n` attempts a minute, each taking its cell before it is checked: the
/// attempt whose cell governor refuses is itself refused.
fn attempts_per_minute(n: u32) -> Quota {
    per_minute(n, n)
}

fn per_minute(n: u32, burst: u32) -> Quota {
    let period = std::time::Duration::from_secs(60) / n.max(1);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
}

impl Throttle {
    /// Limiters from the config.
    pub fn new(limits: &RateLimitConfig, server: &ServerConfig) -> Throttle {
        Throttle {
            enabled: limits.enabled,
            by_account: RateLimiter::keyed(failures_per_minute(limits.per_username_per_minute)),
            by_address: RateLimiter::keyed(attempts_per_minute(limits.per_address_per_minute)),
            blocked: Mutex::new(HashMap::new()),
            trusted_proxies: server
                .trusted_proxies
                .iter()
                .filter_map(|p| p.parse::<IpAddr>().ok())
                .map(|ip| ip.to_canonical())
                .collect(),
            checks: AtomicU64::new(0),
            turns: Mutex::new(HashMap::new()),
        }
    }

    /// The client's address: the socket peer, unless the peer is a trusted
    /// proxy; then the right-most entry of its `X-Forwarded-For` headers
    /// (`forwarded`, in order) that is not one.
    pub fn client_address<'a>(
        &self,
        peer: Option<IpAddr>,
        forwarded: impl Iterator<Item = &'a str>,
    ) -> Option<IpAddr> {
        // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let peer = peer?.to_canonical();
        if !self.trusted_proxies.contains(&peer) {
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = forwarded
            .flat_map(|v| v.split(','))
            .filter_map(|item| item.trim().parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .collect();
        forwarded
            .iter()
            .rev()
            .find(|ip| !self.trusted_proxies.contains(ip))
            .or(forwarded.first())
            .copied()
            .or(Some(peer))
    }

    /// Waits until no other attempt for `who` is being checked, and
    /// holds that turn until dropped: attempts sent at once are checked one
    /// after another, each seeing the failures before it, so none slips
    /// past a spent budget while the ones before it are still hashing.
    pub async fn turn(&self, who: &Who) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        if !self.enabled {
            return None;
        }
        let turn = {
            let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            if turns.len() >= PRUNE_EVERY as usize {
                turns.retain(|_, turn| Arc::strong_count(turn) > 1);
            }
            turns.entry(who.clone()).or_default().clone()
        };
        Some(turn.lock_owned().await)
    }

    /// Admits an attempt for `who` from `address`, taking the address's
    /// cell, or refuses it with the time until it is allowed: when the
    /// account or the address is blocked, or the address's budget is spent.
    pub fn admit(&self, who: &Who, address: Option<IpAddr>) -> Result<(), Duration> {
        if !self.enabled {
            return Ok(());
        }
        let checks = self.checks.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        if checks % PRUNE_EVERY == PRUNE_EVERY - 1 {
            blocked.retain(|_, until| *until > now);
            self.by_account.retain_recent();
            self.by_address.retain_recent();
        }
        let keys = std::iter::once(Key::Account(who.clone())).chain(address.map(Key::Address));
        let wait = keys
            .filter_map(|key| blocked.get(&key).copied())
            .filter(|until| *until > now)
            .max();
        if let Some(until) = wait {
            return Err(until - now);
        }
        let Some(ip) = address else { return Ok(()) };
        self.by_address
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// Counts a failed attempt for `who`; an account whose limit is spent
    /// is blocked until its next cell.
    pub fn failed(&self, who: &Who) {
        if !self.enabled {
            return;
        }
        if let Err(not_until) = self.by_account.check_key(who) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
            blocked.insert(Key::Account(who.clone()), Instant::now() + wait);
        }
    }
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
    fn a_username_is_blocked_after_its_failures_and_others_are_not() {
        let t = throttle(3, &[]);
        for _ in 0..3 {
            t.admit(&Who::name("Alice"), None).unwrap();
            t.failed(&Who::name("alice"));
        }
        assert!(t.admit(&Who::name("ALICE"), None).is_err());
        t.admit(&Who::name("bob"), None).unwrap();
    }

    #[test]
    fn a_username_never_stands_for_a_user_id() {
        let t = throttle(2, &[]);
        for _ in 0..3 {
            t.failed(&Who::name("#5"));
            t.failed(&Who::name("5"));
        }
        assert!(t.admit(&Who::name("#5"), None).is_err());
        t.admit(&Who::Id(5), None).unwrap();
    }

    #[test]
    fn successes_are_not_counted_for_the_account() {
        let t = throttle(2, &[]);
        for _ in 0..10 {
            t.admit(&Who::name("alice"), None).unwrap();
        }
    }

    #[test]
    fn every_attempt_takes_its_address_cell_when_admitted() {
        let t = Throttle::new(
            &RateLimitConfig {
                enabled: true,
                per_username_per_minute: 1000,
                per_address_per_minute: 3,
            },
            &ServerConfig::default(),
        );
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        for name in ["a", "b", "c"] {
            t.admit(&Who::name(name), Some(ip)).unwrap();
        }
        let wait = t.admit(&Who::name("d"), Some(ip)).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(20));
        t.admit(&Who::name("d"), Some("192.0.2.8".parse().unwrap()))
            .unwrap();
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let forwarded = || ["203.0.113.9, 10.0.0.2"].into_iter();
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let untrusted = throttle(1, &[]);
        assert_eq!(
            untrusted.client_address(Some(peer), forwarded()),
            Some(peer)
        );
        let trusted = throttle(1, &["10.0.0.1", "10.0.0.2"]);
        assert_eq!(
            trusted.client_address(Some(peer), forwarded()),
            Some("203.0.113.9".parse().unwrap())
        );
    }
}
