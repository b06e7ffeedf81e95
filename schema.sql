-- rosterd's SQLite schema. Each `-- migration N` block runs once, in order,
-- inside one transaction; `PRAGMA user_version` records the last one applied.
-- Never edit a block that has shipped: add the next one.

-- migration 1
CREATE TABLE users (
    -- AUTOINCREMENT: ids are never reused, also after a delete, so a token
    -- naming a deleted id can never match a new account.
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    -- NOCASE: "Alice" and "alice" are one account name (see the index below).
    username        TEXT    NOT NULL COLLATE NOCASE
                            CHECK (length(username) BETWEEN 1 AND 150),
    email           TEXT    NOT NULL COLLATE NOCASE
                            CHECK (length(email) BETWEEN 1 AND 254),
    -- PBKDF2-HMAC-SHA256 in PHC string form; never rendered.
    password_hash   TEXT    NOT NULL,
    level           INTEGER NOT NULL DEFAULT 1 CHECK (level >= 0),
    status          TEXT    NOT NULL DEFAULT 'offline'
                            CHECK (status IN ('online', 'offline', 'busy')),
    profile_picture TEXT    NOT NULL DEFAULT ''
                            CHECK (length(profile_picture) <= 2048),
    -- Staff may edit any user; not part of the public JSON.
    is_staff        INTEGER NOT NULL DEFAULT 0 CHECK (is_staff IN (0, 1)),
    -- An inactive user cannot log in, refresh or use a token.
    is_active       INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    -- RFC 3339 UTC with microseconds: sorts as text in time order.
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL
);

-- Uniqueness is the database's job, ignoring ASCII case: two concurrent
-- registrations of one name cannot both succeed.
CREATE UNIQUE INDEX users_username_unique ON users (username COLLATE NOCASE);
CREATE UNIQUE INDEX users_email_unique ON users (email COLLATE NOCASE);

-- migration 2
-- Every token whose `iat` is before this instant (seconds since the epoch)
-- is void: bumped by a password change, "log out everywhere" and
-- deactivation, so no stolen token outlives them. Checked on every request.
ALTER TABLE users ADD COLUMN tokens_valid_after INTEGER NOT NULL DEFAULT 0;

-- Refresh tokens the server has to remember: blacklisted ones (log out),
-- and with rotation on, every one issued, grouped by the login (`family`)
-- they descend from, so reuse of a retired one can revoke the family.
-- Rows are deleted once `expires_at` has passed: the token is dead anyway.
CREATE TABLE refresh_tokens (
    jti        TEXT    PRIMARY KEY,
    -- Deleting a user deletes their rows; their tokens fail on the user
    -- lookup anyway.
    user_id    INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    -- When rotation replaced it (NULL: still current).
    retired_at INTEGER,
    -- 1: never accepted again (blacklisted or its family revoked).
    revoked    INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1))
) WITHOUT ROWID;

CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

-- migration 3
-- Listing at scale: each `ordering` of GET /api/users and the `status`
-- filter walk an index instead of sorting the table; `id` last makes every
-- order total, which keyset paging needs. (username has its unique NOCASE
-- index already.)
CREATE INDEX users_level_id ON users (level, id);
CREATE INDEX users_created_at_id ON users (created_at, id);
CREATE INDEX users_updated_at_id ON users (updated_at, id);
CREATE INDEX users_status_id ON users (status, id);

-- migration 4
-- Deep pages by id (`?limit=100&offset=99900`): the offset is stepped over
-- in this narrow index (ids only) instead of the table's full rows, several
-- times faster. The other orderings step over their (column, id) indexes.
CREATE INDEX users_id_seek ON users (id);

-- migration 5
-- What listing pages need without scanning the table: how many users there
-- are (X-Total-Count), and a counter bumped whenever users change places in
-- id order (a delete, an insert below the largest id, an id changed), so a
-- server may keep every 1,000th id in memory as a seek point for deep
-- pages and know when those went stale. Triggers keep both exact for every
-- writer, the command line and other tools included.
CREATE TABLE users_meta (
    only     INTEGER PRIMARY KEY CHECK (only = 1),
    users    INTEGER NOT NULL CHECK (users >= 0),
    reorders INTEGER NOT NULL
);
INSERT INTO users_meta (only, users, reorders) SELECT 1, count(*), 0 FROM users;
CREATE TRIGGER users_meta_insert AFTER INSERT ON users BEGIN
    UPDATE users_meta SET users = users + 1,
        reorders = reorders + (NEW.id < (SELECT max(id) FROM users));
END;
CREATE TRIGGER users_meta_delete AFTER DELETE ON users BEGIN
    UPDATE users_meta SET users = users - 1, reorders = reorders + 1;
END;
CREATE TRIGGER users_meta_move AFTER UPDATE OF id ON users BEGIN
    UPDATE users_meta SET reorders = reorders + 1;
END;

-- migration 6
-- A counter bumped by every insert, update and delete of a user, by any
-- writer (the command line and other tools included): a server keeping
-- rendered pages of the user list in memory serves one only while this
-- counter, read in the same read transaction, still says what it said
-- when the page was rendered.
-- The insert and delete triggers of migration 5 take the bump into their
-- one UPDATE (replaced, not joined by a second trigger per event).
ALTER TABLE users_meta ADD COLUMN changes INTEGER NOT NULL DEFAULT 0;
DROP TRIGGER users_meta_insert;
CREATE TRIGGER users_meta_insert AFTER INSERT ON users BEGIN
    UPDATE users_meta SET users = users + 1,
        reorders = reorders + (NEW.id < (SELECT max(id) FROM users)),
        changes = changes + 1;
END;
DROP TRIGGER users_meta_delete;
CREATE TRIGGER users_meta_delete AFTER DELETE ON users BEGIN
    UPDATE users_meta SET users = users - 1, reorders = reorders + 1,
        changes = changes + 1;
END;
CREATE TRIGGER users_meta_changes AFTER UPDATE ON users BEGIN
    UPDATE users_meta SET changes = changes + 1;
END;

-- migration 7
-- REPLACE conflict resolution (an outside `INSERT OR REPLACE` or `UPDATE OR
-- REPLACE`) deletes the rows a write clashes with without firing the delete
-- trigger, unless that connection turned `recursive_triggers` on. So each
-- write first counts the rows it clashes with (BEFORE), a delete trigger
-- that does fire takes its row off that count, and the write (AFTER) takes
-- off the users still counted. A write that is ignored or fails leaves a
-- stale count, which the next BEFORE overwrites. The count and the
-- seek-point counter are recomputed once here, for drift already made.
ALTER TABLE users_meta ADD COLUMN clashes INTEGER NOT NULL DEFAULT 0;
UPDATE users_meta SET users = (SELECT count(*) FROM users), reorders = reorders + 1;
CREATE TRIGGER users_meta_insert_clashes BEFORE INSERT ON users BEGIN
    UPDATE users_meta SET clashes = (SELECT count(*) FROM users
        WHERE id = NEW.id OR username = NEW.username OR email = NEW.email);
END;
DROP TRIGGER users_meta_insert;
CREATE TRIGGER users_meta_insert AFTER INSERT ON users BEGIN
    UPDATE users_meta SET users = users + 1 - clashes,
        reorders = reorders + (NEW.id < (SELECT max(id) FROM users)) + clashes,
        changes = changes + 1 + clashes, clashes = 0;
END;
DROP TRIGGER users_meta_delete;
CREATE TRIGGER users_meta_delete AFTER DELETE ON users BEGIN
    UPDATE users_meta SET users = users - 1, reorders = reorders + 1,
        changes = changes + 1, clashes = max(clashes - 1, 0);
END;
CREATE TRIGGER users_meta_update_clashes BEFORE UPDATE OF id, username, email ON users BEGIN
    UPDATE users_meta SET clashes = (SELECT count(*) FROM users WHERE id != OLD.id
        AND (id = NEW.id OR username = NEW.username OR email = NEW.email));
END;
CREATE TRIGGER users_meta_update_replaced AFTER UPDATE OF id, username, email ON users BEGIN
    UPDATE users_meta SET users = users - clashes, reorders = reorders + clashes,
        changes = changes + clashes, clashes = 0;
END;

-- migration 8
-- Users brought in by `rosterd import`: the account each one became, keyed
-- by where it came from ('django' or 'pocketbase') and its id there, so a
-- re-run adds nobody twice and a PocketBase id can be looked up.
CREATE TABLE imported_users (
    source    TEXT    NOT NULL,
    source_id TEXT    NOT NULL,
    user_id   INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (source, source_id)
) WITHOUT ROWID;
CREATE INDEX imported_users_user ON imported_users (user_id);

-- migration 9
-- Every committed change to a user, by any writer (the API, the command
-- line, other tools), as a row written in the change's own transaction: the
-- stream of GET /api/events reads them in id order, which is commit order,
-- and a client resumes from an id, across restarts too. Each row holds the
-- user as rendered at that commit (the same eight keys as the API's JSON;
-- a unit test holds the two renderings equal). `user.updated` is
-- written only when something rendered changed; `user.auth` (never sent to
-- clients) when a user was deactivated or activated or their tokens voided,
-- so that their open streams are checked again.
CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT    NOT NULL
            CHECK (kind IN ('user.created', 'user.updated', 'user.deleted', 'user.auth')),
    user_id INTEGER NOT NULL,
    -- The event's data: the user as the API renders it at this commit
    -- (`{"id": N}` for a deletion, nothing for `user.auth`).
    data    TEXT    NOT NULL DEFAULT ''
);
CREATE TRIGGER events_user_created AFTER INSERT ON users BEGIN
    INSERT INTO events (kind, user_id, data) VALUES ('user.created', NEW.id,
        json_object('id', NEW.id, 'username', NEW.username, 'email', NEW.email,
        'level', NEW.level, 'status', NEW.status, 'profilePicture', NEW.profile_picture,
        'created_at', NEW.created_at, 'updated_at', NEW.updated_at));
END;
CREATE TRIGGER events_user_updated AFTER UPDATE ON users
WHEN OLD.id IS NOT NEW.id OR OLD.username IS NOT NEW.username
  OR OLD.email IS NOT NEW.email OR OLD.level IS NOT NEW.level
  OR OLD.status IS NOT NEW.status OR OLD.profile_picture IS NOT NEW.profile_picture
  OR OLD.updated_at IS NOT NEW.updated_at
BEGIN
    INSERT INTO events (kind, user_id, data) VALUES ('user.updated', NEW.id,
        json_object('id', NEW.id, 'username', NEW.username, 'email', NEW.email,
        'level', NEW.level, 'status', NEW.status, 'profilePicture', NEW.profile_picture,
        'created_at', NEW.created_at, 'updated_at', NEW.updated_at));
END;
CREATE TRIGGER events_user_auth AFTER UPDATE ON users
WHEN OLD.is_active IS NOT NEW.is_active OR OLD.tokens_valid_after IS NOT NEW.tokens_valid_after
BEGIN
    INSERT INTO events (kind, user_id) VALUES ('user.auth', NEW.id);
END;
CREATE TRIGGER events_user_deleted AFTER DELETE ON users BEGIN
    INSERT INTO events (kind, user_id, data)
        VALUES ('user.deleted', OLD.id, json_object('id', OLD.id));
END;
-- The last 10,000 events are kept (a resume needs at most the last 1,000).
CREATE TRIGGER events_keep_recent AFTER INSERT ON events BEGIN
    DELETE FROM events WHERE id = NEW.id - 10000;
END;

-- Users who are `online` because they have an open event stream: when the
-- last one closes (and after a restart, when none reopens) within the grace
-- window, they go `offline`. A status a user sets without a stream is not
-- listed here and is left alone.
CREATE TABLE presence (
    user_id INTEGER PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE
);
