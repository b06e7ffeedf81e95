//! GET /api/users at scale: the whole listing streamed in chunks, `search`,
//! `status`, `ordering`, `limit`/`offset` with `X-Total-Count` and `Link`,
//! and the 400s of bad parameters.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    Listing, SeedUser, TestApp, TestUser, assert_401, assert_field_errors, assert_reply,
    assert_user_json, expect_json, spawn_app,
};

const STATUSES: [&str; 3] = ["online", "offline", "busy"];

/// `2023-01-01T00:00:00.000000Z` plus `minutes`, in the server's own format.
fn stamp(minutes: usize) -> String {
    let (day, hour, minute) = (1 + minutes / 1440, minutes / 60 % 24, minutes % 60);
    format!("2023-01-{day:02}T{hour:02}:{minute:02}:00.000000Z")
}

/// `n` users whose username, level and stamps are shuffled against their id
/// with many ties (7 levels, 50 creation and 40 update stamps); the status
/// cycles, so each status has exactly n/3 users when 3 divides n.
fn varied(n: usize, prefix: &str) -> Vec<SeedUser> {
    (0..n)
        .map(|i| SeedUser {
            // 7919 is prime: a permutation of 0..n for every n used here.
            username: format!("{prefix}{:05}", i * 7919 % n),
            email: format!("{prefix}{i:05}@example.com"),
            level: (i * 31 % 7) as i64,
            status: STATUSES[i % 3],
            created_at: stamp(i * 17 % 50 * 97),
            updated_at: stamp(i * 23 % 40 * 61 + 7),
        })
        .collect()
}

/// A seed user with these names, level 1, offline.
fn named(username: &str, email: &str) -> SeedUser {
    SeedUser {
        username: username.to_owned(),
        email: email.to_owned(),
        level: 1,
        status: "offline",
        created_at: stamp(0),
        updated_at: stamp(0),
    }
}

/// A server holding `seeds` and, last, a logged-in caller: the app, the
/// caller's access token, and every user as the API renders it, by id.
async fn seeded_with(seeds: &[SeedUser]) -> (TestApp, String, Vec<Value>) {
    let app = spawn_app().await;
    let mut all = app.seed_users(seeds);
    let (id, token, _) = app.create_user(&TestUser::generate()).await;
    all.push(expect_json(app.get_user(id, &token).await, StatusCode::OK).await);
    (app, token, all)
}

/// [`seeded_with`] `n` varied users (`n + 1` users in all).
async fn seeded(n: usize) -> (TestApp, String, Vec<Value>) {
    seeded_with(&varied(n, "m")).await
}

/// `/api/users?` and the encoded query.
fn users_path(query: &[(&str, &str)]) -> String {
    let encoded = serde_urlencoded::to_string(query).expect("encode the query");
    format!("/api/users?{encoded}")
}

fn ids(users: &[Value]) -> Vec<i64> {
    users
        .iter()
        .map(|u| u["id"].as_i64().expect("id"))
        .collect()
}

/// `users` sorted as `ordering` says, ties broken by id ascending.
fn sorted(users: &[Value], ordering: &str) -> Vec<Value> {
    let mut users = users.to_vec();
    users.sort_by(|a, b| {
        let by_terms = ordering.split(',').map(|term| {
            let (field, desc) = term.strip_prefix('-').map_or((term, false), |f| (f, true));
            let order = match (a[field].as_i64(), b[field].as_i64()) {
                (Some(x), Some(y)) => x.cmp(&y),
                _ => a[field].as_str().cmp(&b[field].as_str()),
            };
            if desc { order.reverse() } else { order }
        });
        by_terms
            .fold(Ordering::Equal, Ordering::then)
            .then(a["id"].as_i64().cmp(&b["id"].as_i64()))
    });
    users
}

/// The users whose username or email contains `term`, ignoring case.
fn matching(users: &[Value], term: &str) -> Vec<Value> {
    let term = term.to_lowercase();
    let hit = |u: &Value, key: &str| u[key].as_str().unwrap().to_lowercase().contains(&term);
    let found = users
        .iter()
        .filter(|u| hit(u, "username") || hit(u, "email"));
    found.cloned().collect()
}

fn with_status(users: &[Value], status: &str) -> Vec<Value> {
    let found = users.iter().filter(|u| u["status"] == status);
    found.cloned().collect()
}

/// The whole listing of `query` (no `limit`): asserts a chunked 200 that is
/// one valid JSON array of users; returns them.
async fn streamed(app: &TestApp, token: &str, query: &[(&str, &str)]) -> Vec<Value> {
    let listing = app.list_users(token, &users_path(query)).await;
    assert_eq!(
        listing.status,
        StatusCode::OK,
        "{query:?}: {}",
        listing.body
    );
    assert!(listing.chunked, "{query:?}: a whole listing is chunked");
    let users = listing.body.as_array().expect("a bare JSON array").clone();
    users.iter().for_each(|u| _ = assert_user_json(u));
    users
}

/// Asserts the `Link` of a page: `next` and `prev` exactly when expected,
/// each a relative `/api/users?` reference carrying `query`, `limit` and
/// the expected offset (a `prev` to offset 0 may leave `offset` out).
fn assert_links(
    page: &Listing,
    query: &[(&str, &str)],
    limit: usize,
    (prev, next): (Option<usize>, Option<usize>),
) {
    for (rel, offset) in [("prev", prev), ("next", next)] {
        let target = page.links.get(rel);
        let Some(offset) = offset else {
            assert_eq!(target, None, "no {rel} link expected: {:?}", page.links);
            continue;
        };
        let target = target.unwrap_or_else(|| panic!("no {rel} link in {:?}", page.links));
        let encoded = target.strip_prefix("/api/users?");
        let encoded = encoded.unwrap_or_else(|| panic!("{rel} {target:?} is not /api/users?..."));
        let mut got: BTreeMap<String, String> =
            serde_urlencoded::from_str(encoded).expect("a link's query");
        let got_offset = got.remove("offset").unwrap_or_else(|| "0".to_owned());
        assert_eq!(got_offset, offset.to_string(), "offset of {rel} {target:?}");
        let mut want: BTreeMap<String, String> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.insert("limit".to_owned(), limit.to_string());
        assert_eq!(got, want, "parameters of {rel} {target:?}");
    }
}

/// Every page of `query` by `limit`, from offset 0 following `next` links;
/// asserts each page's size, `X-Total-Count` and links. Returns the users
/// of all pages in order.
async fn paged(app: &TestApp, token: &str, query: &[(&str, &str)], limit: usize) -> Vec<Value> {
    let limit_text = limit.to_string();
    let mut path = users_path(&[query, &[("limit", &limit_text)]].concat());
    let mut users: Vec<Value> = Vec::new();
    let mut total = None;
    loop {
        let page = app.list_users(token, &path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}: {}", page.body);
        let count = page.total.expect("X-Total-Count on a page") as usize;
        assert_eq!(*total.get_or_insert(count), count, "{path}: total moved");
        let offset = users.len();
        let size = page.body.as_array().expect("a bare JSON array").len();
        assert_eq!(size, limit.min(count - offset), "{path}: page size");
        let prev = (offset > 0).then(|| offset.saturating_sub(limit));
        let next = (offset + limit < count).then_some(offset + limit);
        assert_links(&page, query, limit, (prev, next));
        users.extend(page.body.as_array().unwrap().iter().cloned());
        match page.links.get("next") {
            Some(next) => path = next.clone(),
            None => break,
        }
    }
    assert_eq!(Some(users.len()), total, "{query:?}: pages cover the total");
    users
}

/// Asserts the streamed listing of `query` and its pages by `limit` are
/// both exactly `expected`.
async fn assert_listed(
    app: &TestApp,
    token: &str,
    query: &[(&str, &str)],
    limit: usize,
    expected: &[Value],
) {
    let expected = ids(expected);
    let whole = ids(&streamed(app, token, query).await);
    assert_eq!(whole, expected, "streamed listing of {query:?}");
    let pages = ids(&paged(app, token, query, limit).await);
    assert_eq!(pages, expected, "pages of {query:?} by {limit}");
}

#[tokio::test]
async fn listing_without_a_token_is_401_even_with_bad_parameters() {
    let app = spawn_app().await;
    for path in [
        "/api/users",
        "/api/users?limit=5",
        "/api/users?limit=0&status=away",
    ] {
        let resp = app.get_with_authorization(path, None).await;
        let body = json!({"detail": "Authentication credentials were not provided."});
        assert_401(resp, body).await;
    }
}

#[tokio::test]
async fn a_whole_listing_streams_every_user_once_by_id_across_several_chunks() {
    let (app, token, all) = seeded(1500).await;

    let users = streamed(&app, &token, &[]).await;

    // 1,501 users: three full chunks of 500 and one of a single user.
    assert_eq!(users.len(), 1501);
    assert_eq!(users, all, "every user, whole and in id order");
    let distinct: BTreeSet<i64> = ids(&users).into_iter().collect();
    assert_eq!(distinct.len(), users.len(), "no duplicates");
}

#[tokio::test]
async fn a_whole_listing_that_matches_nothing_is_an_empty_array() {
    let (app, token, _) = seeded(30).await;

    let users = streamed(&app, &token, &[("search", "no-such-user")]).await;

    assert_eq!(users, Vec::<Value>::new());
}

#[tokio::test]
async fn a_whole_listing_of_20000_users_streams_completely() {
    let (app, token, all) = seeded(19_999).await;
    let started = std::time::Instant::now();

    let users = streamed(&app, &token, &[]).await;

    println!("20,000 users streamed in {:?}", started.elapsed());
    assert_eq!(users.len(), 20_000);
    assert_eq!(ids(&users), ids(&all));
}

#[tokio::test]
async fn search_matches_a_case_insensitive_substring_of_username_or_email() {
    let seeds = [
        named("Marigold", "m1@garden.test"),
        named("rose", "Rose.Garden@Flowers.test"),
        named("tulip", "t1@garden.test"),
    ];
    let (app, token, all) = seeded_with(&seeds).await;
    for (term, names) in [
        ("GOLD", &["Marigold"][..]),
        ("mari", &["Marigold"]),
        ("FLOWERS", &["rose"]),
        ("rose", &["rose"]),
        ("@GARDEN.test", &["Marigold", "tulip"]),
        ("garden", &["Marigold", "rose", "tulip"]),
        ("lip@", &[]),
    ] {
        let query = [("search", term)];
        let users = streamed(&app, &token, &query).await;
        let got: Vec<&str> = users
            .iter()
            .map(|u| u["username"].as_str().unwrap())
            .collect();
        assert_eq!(got, names, "search {term:?}");
        assert_listed(&app, &token, &query, 1, &matching(&all, term)).await;
    }
}

#[tokio::test]
async fn search_treats_percent_underscore_and_backslash_literally() {
    let names = ["a_b", "axb", "a%b", "azzb", "a\\b", "ab", "abc"];
    let seeds: Vec<SeedUser> = names
        .iter()
        .enumerate()
        .map(|(i, name)| named(name, &format!("w{i}@wild.test")))
        .collect();
    let (app, token, _) = seeded_with(&seeds).await;
    for (term, expected) in [
        ("a_b", &["a_b"][..]),
        ("A_B", &["a_b"]),
        ("_", &["a_b"]),
        ("a%b", &["a%b"]),
        ("%", &["a%b"]),
        ("%%", &[]),
        ("a\\b", &["a\\b"]),
        ("\\", &["a\\b"]),
        ("ab", &["ab", "abc"]),
    ] {
        for query in [
            vec![("search", term)],
            vec![("search", term), ("limit", "10")],
        ] {
            let listing = app.list_users(&token, &users_path(&query)).await;
            assert_eq!(listing.status, StatusCode::OK);
            let users = listing.body.as_array().expect("an array");
            let got: Vec<&str> = users
                .iter()
                .map(|u| u["username"].as_str().unwrap())
                .collect();
            assert_eq!(got, expected, "{query:?}");
        }
    }
}

#[tokio::test]
async fn status_keeps_only_users_with_that_status_streamed_and_paged() {
    let (app, token, all) = seeded(1500).await;
    // online and busy: 500 each, exactly one chunk; offline: 501 with the caller.
    for status in STATUSES {
        let expected = with_status(&all, status);
        assert!(expected.len() >= 500);
        assert_listed(&app, &token, &[("status", status)], 200, &expected).await;
    }
    let query = [
        ("status", "busy"),
        ("search", "m0001"),
        ("ordering", "-level"),
    ];
    let expected = sorted(&matching(&with_status(&all, "busy"), "m0001"), "-level");
    assert!(!expected.is_empty());
    assert_listed(&app, &token, &query, 7, &expected).await;
}

#[tokio::test]
async fn an_unknown_status_is_a_400_saying_it_is_not_a_valid_choice() {
    let (app, token, _) = seeded(10).await;
    for bad in ["away", "Online", "online,busy"] {
        for query in [vec![("status", bad)], vec![("status", bad), ("limit", "5")]] {
            let resp = app
                .send(Method::GET, &users_path(&query), Some(&token), None)
                .await;
            let message =
                format!("Select a valid choice. {bad} is not one of the available choices.");
            assert_reply(
                resp,
                StatusCode::BAD_REQUEST,
                json!({ "status": [message] }),
            )
            .await;
        }
    }
    assert_eq!(app.user_count(), 11);
}

#[tokio::test]
async fn ordering_sorts_by_each_field_either_way_with_ties_broken_by_id() {
    let (app, token, all) = seeded(1500).await;
    for ordering in [
        "id",
        "-id",
        "username",
        "-username",
        "level",
        "-level",
        "created_at",
        "-created_at",
        "updated_at",
        "-updated_at",
        "level,-created_at",
        "-level,username",
        "-updated_at,level,-id",
    ] {
        let expected = sorted(&all, ordering);
        assert_listed(&app, &token, &[("ordering", ordering)], 400, &expected).await;
    }
}

#[tokio::test]
async fn ordering_by_mixed_case_usernames_is_the_same_streamed_and_paged() {
    let mut seeds = varied(1200, "m");
    for seed in seeds.iter_mut().step_by(2) {
        seed.username = seed.username.to_uppercase();
    }
    let (app, token, all) = seeded_with(&seeds).await;
    let everyone: BTreeSet<i64> = ids(&all).into_iter().collect();
    for ordering in ["username", "-username", "-level,username"] {
        let query = [("ordering", ordering)];
        let whole = ids(&streamed(&app, &token, &query).await);
        let pages = ids(&paged(&app, &token, &query, 300).await);
        assert_eq!(whole, pages, "{ordering}: streamed and paged agree");
        assert_eq!(whole.len(), all.len(), "{ordering}: no user twice");
        assert_eq!(whole.into_iter().collect::<BTreeSet<_>>(), everyone);
    }
}

#[tokio::test]
async fn an_unknown_ordering_field_is_a_400_on_ordering() {
    let (app, token, _) = seeded(10).await;
    for bad in [
        "email",
        "-password_hash",
        "status",
        "level,bogus",
        "--level",
    ] {
        for query in [
            vec![("ordering", bad)],
            vec![("ordering", bad), ("limit", "5")],
        ] {
            let resp = app
                .send(Method::GET, &users_path(&query), Some(&token), None)
                .await;
            assert_field_errors(resp, &["ordering"]).await;
        }
    }
    assert_eq!(app.user_count(), 11);
}

#[tokio::test]
async fn limit_and_offset_give_one_page_and_the_total_matching_count() {
    let (app, token, all) = seeded(1500).await;
    for (limit, offset) in [(1, 0), (10, 20), (1000, 0), (1000, 1000), (7, 1500)] {
        let (l, o) = (limit.to_string(), offset.to_string());
        let page = app
            .list_users(&token, &users_path(&[("limit", &l), ("offset", &o)]))
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(page.total, Some(1501), "limit {limit} offset {offset}");
        let end = (offset + limit).min(all.len());
        assert_eq!(page.body, json!(all[offset..end]), "limit {l} offset {o}");
    }
    let query = [("status", "online"), ("ordering", "-created_at")];
    let page = app
        .list_users(
            &token,
            &users_path(&[&query[..], &[("limit", "3")]].concat()),
        )
        .await;
    assert_eq!(page.total, Some(500));
    let expected = sorted(&with_status(&all, "online"), "-created_at");
    assert_eq!(page.body, json!(expected[..3]));
}

#[tokio::test]
async fn pages_link_next_and_prev_keeping_search_status_and_ordering() {
    let (app, token, all) = seeded(1500).await;
    let query = [
        ("search", "@EXAMPLE.com"),
        ("status", "busy"),
        ("ordering", "-level,created_at"),
    ];
    let expected = sorted(&with_status(&all, "busy"), "-level,created_at");
    assert_eq!(expected.len(), 500);
    for (offset, prev, next) in [
        (0, None, Some(100)),
        (50, Some(0), Some(150)),
        (200, Some(100), Some(300)),
        (400, Some(300), None),
        (499, Some(399), None),
    ] {
        let o = offset.to_string();
        let paging = [("limit", "100"), ("offset", &o)];
        let page = app
            .list_users(&token, &users_path(&[&query[..], &paging].concat()))
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(page.total, Some(500), "offset {offset}");
        let end = (offset + 100).min(500);
        assert_eq!(page.body, json!(expected[offset..end]), "offset {offset}");
        assert_links(&page, &query, 100, (prev, next));
    }
}

#[tokio::test]
async fn following_next_links_from_offset_zero_visits_every_user_once() {
    let (app, token, all) = seeded(1500).await;
    for limit in [1000, 250, 333] {
        assert_eq!(paged(&app, &token, &[], limit).await, all, "limit {limit}");
    }
}

#[tokio::test]
async fn an_offset_past_the_end_is_an_empty_page_with_the_total_and_a_prev_link() {
    let (app, token, _) = seeded(40).await;
    for offset in [41, 50, 1000] {
        let o = offset.to_string();
        let page = app
            .list_users(&token, &users_path(&[("limit", "10"), ("offset", &o)]))
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_eq!(page.body, json!([]), "offset {offset}");
        assert_eq!(page.total, Some(41), "offset {offset}");
        assert_eq!(page.links.get("next"), None, "offset {offset}");
        let prev = page.links.get("prev");
        let prev = prev.unwrap_or_else(|| panic!("no prev at offset {offset}"));
        let prev: BTreeMap<String, String> =
            serde_urlencoded::from_str(prev.split_once('?').expect("a query").1).unwrap();
        let prev_offset: usize = prev.get("offset").map_or(0, |o| o.parse().unwrap());
        assert!(prev_offset < offset, "prev {prev:?} from {offset}");
    }
}

#[tokio::test]
async fn bad_limits_and_offsets_are_400s_naming_the_field() {
    let (app, token, _) = seeded(10).await;
    let cases = [
        (vec![("limit", "0")], "limit"),
        (vec![("limit", "1001")], "limit"),
        (vec![("limit", "abc")], "limit"),
        (vec![("limit", "-1")], "limit"),
        (vec![("limit", "1.5")], "limit"),
        (vec![("limit", "5"), ("offset", "-1")], "offset"),
        (vec![("limit", "5"), ("offset", "abc")], "offset"),
    ];
    for (query, field) in cases {
        let resp = app
            .send(Method::GET, &users_path(&query), Some(&token), None)
            .await;
        assert_field_errors(resp, &[field]).await;
    }
    assert_eq!(app.user_count(), 11);
}

#[tokio::test]
async fn several_bad_parameters_are_reported_together() {
    let (app, token, _) = seeded(10).await;
    let query = [
        ("status", "away"),
        ("ordering", "bogus"),
        ("limit", "0"),
        ("offset", "-1"),
    ];

    let resp = app
        .send(Method::GET, &users_path(&query), Some(&token), None)
        .await;

    assert_field_errors(resp, &["status", "ordering", "limit", "offset"]).await;
    assert_eq!(app.user_count(), 11);
}

#[tokio::test]
async fn without_a_limit_the_offset_is_ignored() {
    let (app, token, all) = seeded(40).await;
    for offset in ["5", "1000"] {
        assert_eq!(streamed(&app, &token, &[("offset", offset)]).await, all);
    }
}

#[tokio::test]
async fn unknown_query_parameters_are_ignored() {
    let (app, token, all) = seeded(40).await;
    let unknown = [("foo", "bar"), ("page", "2"), ("page_size", "3")];

    assert_eq!(streamed(&app, &token, &unknown).await, all);
    let plain = app.list_users(&token, "/api/users?limit=5").await;
    let noisy = app
        .list_users(
            &token,
            &users_path(&[&unknown[..], &[("limit", "5")]].concat()),
        )
        .await;
    assert_eq!(noisy.status, StatusCode::OK, "{}", noisy.body);
    assert_eq!((noisy.body, noisy.total), (plain.body, plain.total));
}

#[tokio::test]
async fn a_user_registered_between_two_pages_is_counted_and_reached() {
    let (app, token, all) = seeded(24).await;
    let first = app.list_users(&token, "/api/users?limit=10").await;
    assert_eq!(first.total, Some(25));
    let mut seen = first.ids();

    let (new_id, _, _) = app.create_user(&TestUser::generate()).await;

    let mut next = first.links.get("next").cloned();
    while let Some(path) = next {
        let page = app.list_users(&token, &path).await;
        assert_eq!(page.total, Some(26), "{path}");
        seen.extend(page.ids());
        next = page.links.get("next").cloned();
    }
    let mut expected = ids(&all);
    expected.push(new_id);
    assert_eq!(seen, expected);
}

/// Deep pages in id order (either way) are found through seek points kept
/// in memory: they must stay right after users are deleted behind the
/// server's back (another connection) and after new registrations.
#[tokio::test]
async fn deep_pages_by_id_stay_right_across_deletes_and_registrations() {
    let (app, token, mut all) = seeded(2_500).await;
    let check = |all: Vec<Value>| {
        let app = &app;
        let token = &token;
        async move {
            let descending: Vec<Value> = all.iter().rev().cloned().collect();
            for (ordering, expected) in [("id", &all), ("-id", &descending)] {
                for offset in [1_000, 1_001, 1_999, 2_000, all.len() - 2, all.len() + 3] {
                    let o = offset.to_string();
                    let page = app
                        .list_users(
                            token,
                            &users_path(&[("limit", "4"), ("offset", &o), ("ordering", ordering)]),
                        )
                        .await;
                    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
                    assert_eq!(page.total, Some(all.len() as i64), "{ordering} {offset}");
                    let end = (offset + 4).min(expected.len());
                    let want = expected.get(offset..end).unwrap_or_default();
                    assert_eq!(page.body, json!(want), "{ordering} at {offset}");
                }
            }
        }
    };
    check(all.clone()).await;

    let deleted = app.sql("DELETE FROM users WHERE id % 9 = 4");
    assert!(deleted > 200);
    all.retain(|u| u["id"].as_i64().expect("id") % 9 != 4);
    check(all.clone()).await;

    let (id, _, _) = app.create_user(&TestUser::generate()).await;
    all.push(expect_json(app.get_user(id, &token).await, StatusCode::OK).await);
    check(all).await;
}

/// Pages are kept in memory once rendered (see the README): asked again, a
/// page must follow every change to users, whoever makes it — the API, or
/// another connection to the file (the command line, other tools).
#[tokio::test]
async fn a_page_asked_again_follows_every_change_to_users() {
    let (app, token, all) = seeded(30).await;
    let caller = all.last().expect("the caller")["id"].as_i64().expect("id");
    let path = users_path(&[("limit", "10"), ("ordering", "-id")]);
    // The page against the whole listing (streamed, never kept) of now.
    let check = async |what: &str| {
        let page = app.list_users(&token, &path).await;
        assert_eq!(page.status, StatusCode::OK, "{what}: {}", page.body);
        let all = streamed(&app, &token, &[("ordering", "-id")]).await;
        assert_eq!(page.body, json!(all[..10]), "{what}");
        assert_eq!(page.total, Some(all.len() as i64), "{what}");
        page
    };

    let first = check("first").await;
    let again = check("again").await;
    assert_eq!(
        (again.body, again.total, again.links),
        (first.body, first.total, first.links)
    );

    let patched = json!({"status": "busy", "level": 4});
    expect_json(
        app.patch_user(caller, &token, &patched).await,
        StatusCode::OK,
    )
    .await;
    let page = check("after a PATCH").await;
    assert_eq!(
        (
            page.body[0]["status"].clone(),
            page.body[0]["level"].clone()
        ),
        (json!("busy"), json!(4))
    );

    app.exec("UPDATE users SET level = 6 WHERE id = ?1", caller - 3);
    let page = check("after an UPDATE elsewhere").await;
    assert_eq!(page.body[3]["level"], 6);

    let added = app.seed_users(&[named("zed", "zed@example.com")]);
    let page = check("after an INSERT elsewhere").await;
    assert_eq!(page.body[0], added[0]);

    app.exec("DELETE FROM users WHERE id = ?1", caller - 1);
    let page = check("after a DELETE elsewhere").await;
    assert!(!page.ids().contains(&(caller - 1)));
}

/// A page served from memory still checks its caller on every request,
/// before its parameters, as DRF authenticates before the view runs.
#[tokio::test]
async fn a_kept_page_still_checks_its_caller_first() {
    let (app, token, _) = seeded(5).await;
    let path = users_path(&[("limit", "3")]);
    let page = app.list_users(&token, &path).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);

    // Validly signed, but its user does not exist.
    let mut ghost = crate::helpers::claims(&token);
    ghost["user_id"] = json!("999999");
    let ghost = crate::helpers::forge(&ghost, crate::helpers::SECRET);
    let before = app.db_snapshot();
    for path in [path.as_str(), "/api/users?limit=0", "/api/users"] {
        let resp = app.send(Method::GET, path, Some(&ghost), None).await;
        crate::helpers::assert_user_not_found(resp).await;
    }
    assert_eq!(app.db_snapshot(), before);

    let again = app.list_users(&token, &path).await;
    assert_eq!((again.status, again.body), (StatusCode::OK, page.body));
}
