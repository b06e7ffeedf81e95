//! Throttling of password guessing (POST /api/token, the password change),
//! per username and per client address, with governor's GCRA limiters.
//!
//! Failed attempts are what is counted (OWASP: throttle failed logins, so a
//! legitimate user logging in from many devices is never slowed): each
//! failure takes a cell from both limiters; when one refuses, the key is
//! blocked until governor says a cell is free again, and every attempt for
//! a blocked key, right password or not, is refused before any hash is
//! spent.

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

/// Forget idle keys every this many checks, so the maps stay bounded.
const PRUNE_EVERY: u64 = 1024;

/// `n` failures a minute: the cell of the n-th failure is the one governor
/// refuses, which blocks the key, so the attempt after it is throttled.
fn per_minute(n: u32) -> Quota {
    let n = n.max(1);
    let period = std::time::Duration::from_secs(60) / n;
    let burst = NonZeroU32::new(n - 1).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
        .allow_burst(burst)
}

impl Throttle {
    /// Limiters from the config.
    pub fn new(limits: &RateLimitConfig, server: &ServerConfig) -> Throttle {
        Throttle {
            enabled: limits.enabled,
            by_account: RateLimiter::keyed(per_minute(limits.per_username_per_minute)),
            by_address: RateLimiter::keyed(per_minute(limits.per_address_per_minute)),
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

    fn keys(who: &Who, address: Option<IpAddr>) -> impl Iterator<Item = Key> {
        std::iter::once(Key::Account(who.clone())).chain(address.map(Key::Address))
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

    /// Refuses an attempt for a blocked account or address with the time
    /// until it is allowed.
    pub fn check(&self, who: &Who, address: Option<IpAddr>) -> Result<(), Duration> {
        if !self.enabled {
            return Ok(());
        }
        let now = Instant::now();
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let wait = Self::keys(who, address)
            .filter_map(|key| blocked.get(&key).copied())
            .filter(|until| *until > now)
            .max();
        match wait {
            Some(until) => Err(until - now),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt for `who` from `address`; a key whose limit
    /// is spent is blocked until its next cell.
    pub fn failed(&self, who: &Who, address: Option<IpAddr>) {
        if !self.enabled {
            return;
        }
        let checks = self.checks.fetch_add(1, Ordering::Relaxed);
        let clock = DefaultClock::default();
        let mut refusals = Vec::new();
        for key in Self::keys(who, address) {
            let verdict = match &key {
                Key::Account(who) => self.by_account.check_key(who),
                Key::Address(ip) => self.by_address.check_key(ip),
            };
            if let Err(not_until) = verdict {
                refusals.push((key, not_until.wait_time_from(clock.now())));
            }
        }
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        for (key, wait) in refusals {
            blocked.insert(key, now + wait);
        }
        if checks % PRUNE_EVERY == PRUNE_EVERY - 1 {
            blocked.retain(|_, until| *until > now);
            self.by_account.retain_recent();
            self.by_address.retain_recent();
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
            t.check(&Who::name("Alice"), None).unwrap();
            t.failed(&Who::name("alice"), None);
        }
        assert!(t.check(&Who::name("ALICE"), None).is_err());
        t.check(&Who::name("bob"), None).unwrap();
    }

    #[test]
    fn a_username_never_stands_for_a_user_id() {
        let t = throttle(2, &[]);
        for _ in 0..3 {
            t.failed(&Who::name("#5"), None);
            t.failed(&Who::name("5"), None);
        }
        assert!(t.check(&Who::name("#5"), None).is_err());
        t.check(&Who::Id(5), None).unwrap();
    }

    #[test]
    fn successes_are_not_counted() {
        let t = throttle(2, &[]);
        for _ in 0..10 {
            t.check(&Who::name("alice"), None).unwrap();
        }
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
