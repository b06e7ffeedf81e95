//! What reads found, kept for as long as the database stays unchanged, so
//! that the most frequent requests (reading a user, refreshing a token)
//! can be answered without a read on a reader thread.
//!
//! Everything kept carries the database's [`Stamp`] taken *before* the
//! read that found it was queued, so the read saw at least that state; it
//! is used only by a request that finds the very same stamp, i.e. when no
//! commit at all (by this server or any other program on the file) has
//! happened since. Then nothing the read saw can have changed, and the
//! answer is the one a read now would give. A different stamp drops it all.
//! Without a stamp (see [`crate::db::watch`]) nothing is kept or used.
//!
//! Each map holds at most [`MOST`] entries; past that it starts again
//! empty (a few MiB at most).

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use crate::db::users::AuthState;
use crate::db::watch::{Stamp, Watch};

/// Entries kept per map.
pub const MOST: usize = 16_384;

/// What reads found, at one stamp of the database.
#[derive(Debug, Default)]
pub struct Kept {
    /// A user's auth state, or `None` when missing or inactive.
    pub auth: HashMap<i64, Option<AuthState>>,
    /// A user's JSON, or `None` when there is no such user.
    pub users: HashMap<i64, Option<Bytes>>,
    /// Whether a refresh token (by `jti`) is blacklisted.
    pub revoked: HashMap<String, bool>,
}

impl Kept {
    fn trim(&mut self) {
        if self.auth.len() > MOST {
            self.auth.clear();
        }
        if self.users.len() > MOST {
            self.users.clear();
        }
        if self.revoked.len() > MOST {
            self.revoked.clear();
        }
    }
}

/// The kept reads and the database's watch.
#[derive(Debug)]
pub struct Known {
    watch: Option<Watch>,
    inner: Mutex<(Option<Stamp>, Kept)>,
}

impl Known {
    /// Keeps reads while `watch` says the database is unchanged; with no
    /// watch, keeps nothing.
    pub fn new(watch: Option<Watch>) -> Known {
        Known {
            watch,
            inner: Mutex::new((None, Kept::default())),
        }
    }

    /// What `look` finds among the reads kept at the database's stamp now;
    /// on a miss, that stamp (`None` when it cannot be told), to [`keep`]
    /// what a read queued after this call finds.
    ///
    /// [`keep`]: Known::keep
    pub fn look<R>(&self, look: impl FnOnce(&Kept) -> Option<R>) -> Result<R, Option<Stamp>> {
        let Some(stamp) = self.watch.as_ref().and_then(Watch::stamp) else {
            return Err(None);
        };
        self.look_at(&stamp, look).ok_or(Some(stamp))
    }

    /// `look` at what is kept, if it was kept at `stamp`.
    fn look_at<R>(&self, stamp: &Stamp, look: impl FnOnce(&Kept) -> Option<R>) -> Option<R> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match &inner.0 {
            Some(kept_at) if kept_at == stamp => look(&inner.1),
            _ => None,
        }
    }

    /// Keeps what a read queued after [`Known::look`] answered `at` found
    /// (`keep` adds it), dropping everything kept at another stamp; with
    /// no stamp, keeps nothing.
    pub fn keep(&self, at: Option<Stamp>, keep: impl FnOnce(&mut Kept)) {
        let Some(stamp) = at else { return };
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.0 != Some(stamp) {
            inner.0 = Some(stamp);
            inner.1 = Kept::default();
        }
        keep(&mut inner.1);
        inner.1.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(valid_after: i64) -> AuthState {
        AuthState {
            username: "u".into(),
            is_staff: false,
            tokens_valid_after: valid_after,
        }
    }

    #[test]
    fn kept_reads_serve_only_their_own_stamp() {
        let known = Known::new(None);
        let (one, two) = ([1u8; 48], [2u8; 48]);
        assert_eq!(known.look_at(&one, |k| k.auth.get(&1).cloned()), None);
        known.keep(Some(one), |k| {
            k.auth.insert(1, Some(auth(5)));
            k.auth.insert(2, None);
        });
        assert_eq!(
            known.look_at(&one, |k| k.auth.get(&1).cloned()),
            Some(Some(auth(5)))
        );
        assert_eq!(known.look_at(&one, |k| k.auth.get(&2).cloned()), Some(None));
        assert_eq!(known.look_at(&one, |k| k.auth.get(&3).cloned()), None);
        // Another stamp sees nothing, and keeping at it drops the rest.
        assert_eq!(known.look_at(&two, |k| k.auth.get(&1).cloned()), None);
        known.keep(Some(two), |k| {
            k.users.insert(7, None);
        });
        assert_eq!(known.look_at(&two, |k| k.auth.get(&1).cloned()), None);
        assert_eq!(
            known.look_at(&two, |k| k.users.get(&7).cloned()),
            Some(None)
        );
        assert_eq!(known.look_at(&one, |k| k.users.get(&7).cloned()), None);
        // No watch, no stamp: nothing found, nothing to keep at.
        assert_eq!(known.look(|k| k.auth.get(&1).cloned()), Err(None));
    }

    #[test]
    fn a_full_map_starts_again() {
        let known = Known::new(None);
        let stamp = [3u8; 48];
        for id in 0..=MOST as i64 {
            known.keep(Some(stamp), |k| {
                k.users.insert(id, Some(Bytes::from_static(b"{}")));
            });
        }
        assert_eq!(known.look_at(&stamp, |k| Some(k.users.len())), Some(0));
        known.keep(Some(stamp), |k| {
            k.users.insert(1, None);
        });
        assert_eq!(known.look_at(&stamp, |k| Some(k.users.len())), Some(1));
    }
}
