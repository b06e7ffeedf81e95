//! Rendered pages of the user list, kept in memory.
//!
//! A page (`GET /api/users?limit=..&offset=..`) costs about a hundred rows
//! of SQLite and 20 kB of JSON; asked again with nothing changed, it is
//! the same bytes. Each page is kept with the `users_meta.changes` value
//! (see `schema.sql`, migration 6) of the read that rendered it, and is
//! served only to a read that finds the same value in its own read
//! transaction: the triggers bump it on every insert, update and delete of
//! a user, by this server or by any other writer of the file, so a kept
//! page is never older than the data it is served against. The first read
//! that finds another value drops every kept page.
//!
//! Bounded: at most [`PageCache::MAX_BYTES`] of bodies and
//! [`PageCache::MAX_PAGES`] pages; past either, the oldest kept go first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

use crate::db::users::ListQuery;

/// What a page is asked by: its filters and order, `limit` and `offset`.
pub type PageKey = (ListQuery, i64, i64);

/// A rendered page: its JSON body and how many users match its filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The JSON array of the page's users.
    pub body: Bytes,
    /// `X-Total-Count`: users matching the filters, on every page.
    pub total: i64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct PageCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The `users_meta.changes` every kept page was rendered at.
    changes: i64,
    pages: HashMap<PageKey, Page>,
    /// Keys in the order they were kept, oldest first.
    order: VecDeque<PageKey>,
    /// Sum of the kept bodies' lengths.
    bytes: usize,
}

impl PageCache {
    /// The most body bytes kept at once.
    pub const MAX_BYTES: usize = 4 << 20;
    /// The most pages kept at once.
    pub const MAX_PAGES: usize = 1_024;
    /// A body longer than this is not kept (it would push out many pages).
    pub const MAX_PAGE_BYTES: usize = Self::MAX_BYTES / 8;

    /// The page kept for `key`, if it was rendered at `changes`. A read
    /// at another `changes` than the kept pages' drops them all.
    pub fn get(&self, changes: i64, key: &PageKey) -> Option<Page> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.restamp(changes);
        inner.pages.get(key).cloned()
    }

    /// Keeps `page`, rendered at `changes`, for `key`. A page rendered at
    /// another `changes` than the kept ones replaces them all: whichever
    /// way the value moved (a read that began before a write and ends
    /// after one that began later, or a database put back from a copy),
    /// only pages of one value are ever kept.
    pub fn put(&self, changes: i64, key: PageKey, page: Page) {
        if page.body.len() > Self::MAX_PAGE_BYTES {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.restamp(changes);
        if inner.pages.contains_key(&key) {
            return;
        }
        while inner.bytes + page.body.len() > Self::MAX_BYTES
            || inner.pages.len() >= Self::MAX_PAGES
        {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(gone) = inner.pages.remove(&oldest) {
                inner.bytes -= gone.body.len();
            }
        }
        inner.bytes += page.body.len();
        inner.order.push_back(key.clone());
        inner.pages.insert(key, page);
    }
}

impl Inner {
    /// Drops every kept page unless they were rendered at `changes`.
    fn restamp(&mut self, changes: i64) {
        if changes != self.changes {
            self.pages.clear();
            self.order.clear();
            self.bytes = 0;
            self.changes = changes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(offset: i64) -> PageKey {
        (ListQuery::default(), 100, offset)
    }

    fn page(len: usize, total: i64) -> Page {
        Page {
            body: Bytes::from(vec![b'x'; len]),
            total,
        }
    }

    #[test]
    fn a_page_is_served_only_at_the_changes_it_was_rendered_at() {
        let cache = PageCache::default();
        assert_eq!(cache.get(3, &key(0)), None);
        cache.put(3, key(0), page(10, 7));
        assert_eq!(cache.get(3, &key(0)), Some(page(10, 7)));
        assert_eq!(cache.get(4, &key(0)), None);
        assert_eq!(cache.get(3, &key(100)), None);
        let filtered = (
            ListQuery {
                search: Some("a".to_owned()),
                ..ListQuery::default()
            },
            100,
            0,
        );
        assert_eq!(cache.get(3, &filtered), None);
    }

    #[test]
    fn pages_of_one_changes_value_only_are_kept() {
        let cache = PageCache::default();
        cache.put(3, key(0), page(10, 7));
        cache.put(5, key(100), page(20, 8));
        assert_eq!(cache.get(5, &key(0)), None);
        assert_eq!(cache.get(5, &key(100)), Some(page(20, 8)));
        // A read that began before a change ends late: its page replaces
        // the newer ones, and the next read at the newer value drops it.
        cache.put(4, key(0), page(10, 7));
        assert_eq!(cache.inner.lock().unwrap().bytes, 10);
        assert_eq!(cache.get(5, &key(100)), None);
        assert_eq!(cache.get(4, &key(0)), None);
        // The value went back (a database put back from a copy) and then
        // forward again: nothing of before survives the read that saw it
        // go back.
        cache.put(9, key(0), page(10, 1));
        assert_eq!(cache.get(2, &key(0)), None);
        assert_eq!(cache.get(9, &key(0)), None);
        let inner = cache.inner.lock().unwrap();
        assert_eq!(
            (inner.bytes, inner.order.len(), inner.pages.len()),
            (0, 0, 0)
        );
    }

    #[test]
    fn the_oldest_pages_go_first_past_the_byte_bound() {
        let cache = PageCache::default();
        let len = PageCache::MAX_PAGE_BYTES;
        let fit = PageCache::MAX_BYTES / len;
        for i in 0..fit as i64 + 2 {
            cache.put(1, key(i), page(len, i));
        }
        assert_eq!(cache.get(1, &key(0)), None);
        assert_eq!(cache.get(1, &key(1)), None);
        for i in 2..fit as i64 + 2 {
            assert_eq!(cache.get(1, &key(i)), Some(page(len, i)));
        }
        let inner = cache.inner.lock().unwrap();
        assert_eq!(inner.bytes, fit * len);
        assert_eq!(inner.order.len(), fit);
    }

    #[test]
    fn the_page_count_is_bounded_and_a_huge_page_is_not_kept() {
        let cache = PageCache::default();
        for i in 0..PageCache::MAX_PAGES as i64 + 1 {
            cache.put(1, key(i), page(2, i));
        }
        assert_eq!(cache.get(1, &key(0)), None);
        assert!(cache.get(1, &key(1)).is_some());
        assert_eq!(
            cache.inner.lock().unwrap().pages.len(),
            PageCache::MAX_PAGES
        );
        cache.put(1, key(-1), page(PageCache::MAX_PAGE_BYTES + 1, 0));
        assert_eq!(cache.get(1, &key(-1)), None);
    }

    #[test]
    fn keeping_a_key_twice_counts_its_bytes_once() {
        let cache = PageCache::default();
        cache.put(1, key(0), page(10, 1));
        cache.put(1, key(0), page(10, 1));
        let inner = cache.inner.lock().unwrap();
        assert_eq!((inner.bytes, inner.order.len()), (10, 1));
    }
}
