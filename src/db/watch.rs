//! Whether the database has changed, told without SQLite and without a
//! read transaction: one `pread` of the WAL-index header.
//!
//! In WAL mode every connection that commits, in this process or any
//! other (`rosterd user ...`, the `sqlite3` shell, a backup tool), first
//! writes the new WAL-index header into the `-shm` file beside the
//! database, which every connection maps; a reader starting a transaction
//! reads that header to learn what it may see (sqlite.org/walformat.html,
//! "The WAL-Index Header"). The header holds the last commit's frame
//! number, the WAL's salts and checksums, so it differs after every
//! commit, and after every restart of the WAL (new salts). Two equal
//! headers therefore mean no commit happened in between: what a read saw
//! after the first is still what a read would see now.
//!
//! SQLite writes the header twice, the second copy first; a reader takes
//! it only when both copies agree, as SQLite's own readers do. Anything
//! else (the copies differ mid-commit, the header is not yet initialised,
//! the file cannot be read) reads as "unknown", and the caller asks SQLite.
//!
//! The watch keeps a connection of its own open for as long as it lives:
//! SQLite removes the `-shm` file only when the last connection to the
//! database closes, so the file read here is always the live one.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

/// The WAL-index header at one moment.
pub type Stamp = [u8; HEADER];

/// The size of one copy of the WAL-index header.
const HEADER: usize = 48;

/// The byte of the header that is non-zero once it has been written.
const IS_INIT: usize = 12;

/// Reads the database's WAL-index header.
pub struct Watch {
    shm: File,
    /// Holds the `-shm` file open (see the module comment); never used.
    _keeper: Mutex<Connection>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    /// Watches the database at `path`, which must already be in WAL mode
    /// (as [`super::open_limited`] leaves it). Blocks: opens a connection
    /// and reads the schema once.
    pub fn open(path: &Path) -> anyhow::Result<Watch> {
        let keeper = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // The first read maps the WAL-index, creating `-shm` if need be.
        let mode: String = keeper.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
        anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "not in WAL mode");
        let mut name = path.as_os_str().to_owned();
        name.push("-shm");
        let shm = File::open(Path::new(&name))?;
        Ok(Watch {
            shm,
            _keeper: Mutex::new(keeper),
        })
    }

    /// The header now, or `None` when it cannot be told (see the module
    /// comment). One system call, no lock: cheap enough for every request.
    pub fn stamp(&self) -> Option<Stamp> {
        let mut both = [0u8; 2 * HEADER];
        self.shm.read_exact_at(&mut both, 0).ok()?;
        let (first, second) = both.split_at(HEADER);
        if first != second || first[IS_INIT] == 0 {
            return None;
        }
        first.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn open(dir: &Path) -> (super::super::Pool, std::path::PathBuf) {
        let path = dir.join("w.sqlite3");
        let pool = super::super::open(&super::super::Options {
            path: path.clone(),
            busy_timeout: Duration::from_secs(1),
            pool_size: 2,
        })
        .unwrap();
        (pool, path)
    }

    #[test]
    fn the_stamp_changes_with_every_commit_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, path) = open(dir.path());
        let watch = Watch::open(&path).unwrap();
        let writer = pool.get().unwrap();
        let insert = "INSERT INTO users (username, email, password_hash, created_at, updated_at)
                      VALUES (?1, ?1 || '@example.com', 'x', '2026', '2026')";
        writer.execute(insert, ["first"]).unwrap();
        let before = watch.stamp().expect("a written header");
        // Reads and a rolled-back write leave it as it was.
        let _: i64 = writer
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        writer
            .execute_batch("BEGIN IMMEDIATE; DELETE FROM users; ROLLBACK;")
            .unwrap();
        assert_eq!(watch.stamp(), Some(before));
        // A commit from another connection (another process would do the
        // same to the shared file) changes it; each commit anew.
        let other = Connection::open(&path).unwrap();
        other.execute(insert, ["second"]).unwrap();
        let after = watch.stamp().unwrap();
        assert_ne!(after, before);
        other
            .execute("UPDATE users SET level = 2 WHERE username = 'second'", [])
            .unwrap();
        let again = watch.stamp().unwrap();
        assert_ne!(again, after);
        // A checkpoint that empties the WAL, then a commit into the
        // restarted WAL: still a new header, never an old one.
        other
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        other
            .execute("UPDATE users SET level = 3 WHERE username = 'second'", [])
            .unwrap();
        let restarted = watch.stamp().unwrap();
        for old in [before, after, again] {
            assert_ne!(restarted, old);
        }
    }

    #[test]
    fn copies_that_disagree_read_as_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, path) = open(dir.path());
        let watch = Watch::open(&path).unwrap();
        pool.get()
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        assert!(watch.stamp().is_some());
        // A header caught mid-commit: the second copy written, the first
        // not yet. Simulated on a copy of the file.
        let mut name = path.as_os_str().to_owned();
        name.push("-shm");
        let mut bytes = std::fs::read(Path::new(&name)).unwrap();
        bytes[HEADER + 8] ^= 1;
        let torn = dir.path().join("torn-shm");
        std::fs::write(&torn, &bytes).unwrap();
        let mut torn_watch = Watch::open(&path).unwrap();
        torn_watch.shm = File::open(&torn).unwrap();
        assert_eq!(torn_watch.stamp(), None);
        // And one never written reads as unknown too.
        std::fs::write(&torn, vec![0u8; 2 * HEADER]).unwrap();
        assert_eq!(torn_watch.stamp(), None);
    }
}
