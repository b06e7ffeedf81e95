//! /api/users: registration, listing, reading, updating and deleting users,
//! and who may do which.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, TestUser, assert_404, assert_empty, assert_field_errors, assert_reply,
    assert_user_json, assert_user_not_found, check_field_errors, expect_json, spawn_app,
};

const REQUIRED: &str = "This field is required.";
const BLANK: &str = "This field may not be blank.";
const TOO_SHORT: &str = "This password is too short. It must contain at least 8 characters.";
const FORBIDDEN: &str = "You do not have permission to perform this action.";

/// `base` with the keys of `changes` set.
fn with(base: &Value, changes: Value) -> Value {
    let mut body = base.clone();
    for (key, value) in changes.as_object().expect("changes are an object") {
        body[key] = value.clone();
    }
    body
}

/// `base` without `key`.
fn without(base: &Value, key: &str) -> Value {
    let mut body = base.clone();
    body.as_object_mut().expect("an object").remove(key);
    body
}

/// A valid address of exactly `len` (at least 199) characters: a short local
/// part and a long domain of labels under 64 characters.
fn email_of_length(len: usize) -> String {
    let [a, b, c] = ["a", "b", "c"].map(|c| c.repeat(63));
    format!("e@{a}.{b}.{c}.{}.com", "d".repeat(len - 198))
}

/// The user as the API renders it now.
async fn fetch(app: &TestApp, id: i64, token: &str) -> Value {
    expect_json(app.get_user(id, token).await, StatusCode::OK).await
}

/// Asserts a 403 with DRF's body.
async fn assert_403(resp: reqwest::Response) {
    assert_reply(resp, StatusCode::FORBIDDEN, json!({ "detail": FORBIDDEN })).await;
}

#[tokio::test]
async fn registration_returns_201_with_the_new_user_and_stores_a_hash() {
    let app = spawn_app().await;
    let user = TestUser::generate();

    let resp = app
        .register(&user.username, &user.email, &user.password)
        .await;

    let body = expect_json(resp, StatusCode::CREATED).await;
    let id = assert_user_json(&body);
    assert_eq!(body["username"], json!(user.username));
    assert_eq!(body["email"], json!(user.email));
    assert_eq!(
        (&body["level"], &body["status"], &body["profilePicture"]),
        (&json!(1), &json!("offline"), &json!(""))
    );
    assert!(!body.to_string().contains(&user.password));
    assert_eq!(app.user_count(), 1);
    let hash = app.column(id, "password_hash");
    let hash = hash.as_str().unwrap();
    assert!(hash.starts_with("$pbkdf2-sha256$i=1000,"), "{hash}");
    assert!(!hash.contains(&user.password));
    assert_eq!(
        (app.column(id, "is_staff"), app.column(id, "is_active")),
        (json!(0), json!(1))
    );
}

#[tokio::test]
async fn registration_takes_the_optional_fields() {
    let app = spawn_app().await;
    let extra =
        json!({"level": 3, "status": "busy", "profilePicture": "https://example.com/a.png"});
    let body = with(&TestUser::generate().body(), extra.clone());

    let user = expect_json(app.register_json(&body).await, StatusCode::CREATED).await;

    let id = assert_user_json(&user);
    assert_eq!(with(&user, extra.clone()), user);
    assert_eq!(
        [
            app.column(id, "level"),
            app.column(id, "status"),
            app.column(id, "profile_picture")
        ],
        [
            extra["level"].clone(),
            extra["status"].clone(),
            extra["profilePicture"].clone()
        ]
    );
}

#[tokio::test]
async fn registration_accepts_the_limits_of_each_field() {
    let app = spawn_app().await;
    let body = json!({
        "username": format!("a.b+c-d_e@f{}", "x".repeat(139)),
        "email": email_of_length(254),
        "password": "correct-horse-battery-staple",
        "level": 0,
        "profilePicture": format!("http://example.com/{}", "p".repeat(2029)),
    });

    let user = expect_json(app.register_json(&body).await, StatusCode::CREATED).await;

    assert_user_json(&user);
    assert_eq!(without(&with(&user, body.clone()), "password"), user);
}

#[tokio::test]
async fn registration_ignores_unknown_and_read_only_keys() {
    let app = spawn_app().await;
    let sneaky = json!({
        "id": 999, "is_staff": true, "is_active": false, "created_at": "2000-01-01T00:00:00Z",
        "password_hash": "x", "favourite_colour": "green",
    });
    let user = TestUser::generate();

    let body = expect_json(
        app.register_json(&with(&user.body(), sneaky)).await,
        StatusCode::CREATED,
    )
    .await;

    let id = assert_user_json(&body);
    assert_ne!(id, 999);
    assert_ne!(body["created_at"], "2000-01-01T00:00:00Z");
    assert_eq!(
        (app.column(id, "is_staff"), app.column(id, "is_active")),
        (json!(0), json!(1))
    );
    expect_json(
        app.login(&user.username, &user.password).await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn invalid_registrations_get_400_field_errors_and_change_nothing() {
    let app = spawn_app().await;
    let taken = TestUser::generate();
    app.create_user(&taken).await;
    // A fresh valid body per case, so that one accepted case spoils no other.
    let valid = || TestUser::generate().body();
    let mut cases: Vec<(Value, &str, Option<&str>)> = ["username", "email", "password"]
        .into_iter()
        .flat_map(|field| {
            [
                (without(&valid(), field), field, Some(REQUIRED)),
                (with(&valid(), json!({ field: "" })), field, Some(BLANK)),
            ]
        })
        .collect();
    let long_picture = format!("https://example.com/{}", "p".repeat(2029));
    let changes = [
        (
            json!({"username": null}),
            "username",
            Some("This field may not be null."),
        ),
        (
            json!({"username": taken.username.to_uppercase()}),
            "username",
            None,
        ),
        (json!({"email": taken.email.to_uppercase()}), "email", None),
        (
            json!({"email": "not-an-email"}),
            "email",
            Some("Enter a valid email address."),
        ),
        (json!({"email": email_of_length(255)}), "email", None),
        (json!({"username": "has space"}), "username", None),
        (json!({"username": "x".repeat(151)}), "username", None),
        (json!({"password": "Tr1ck!"}), "password", Some(TOO_SHORT)),
        (
            json!({"password": "password"}),
            "password",
            Some("This password is too common."),
        ),
        (
            json!({"password": "84629175038264"}),
            "password",
            Some("This password is entirely numeric."),
        ),
        (
            json!({"username": "margaretthatcher", "password": "margaretthatcher9"}),
            "password",
            Some("The password is too similar to the username."),
        ),
        (
            json!({"email": "zanzibarquokka@example.com", "password": "zanzibarquokka7"}),
            "password",
            Some("The password is too similar to the email address."),
        ),
        (json!({"password": "k".repeat(4097)}), "password", None),
        (
            json!({"status": "xyz"}),
            "status",
            Some("\"xyz\" is not a valid choice."),
        ),
        (json!({"level": -1}), "level", None),
        (json!({"level": "abc"}), "level", None),
        (json!({"level": 1.5}), "level", None),
        (json!({"profilePicture": "ftp://x"}), "profilePicture", None),
        (
            json!({"profilePicture": "not a url"}),
            "profilePicture",
            None,
        ),
        (
            json!({"profilePicture": long_picture}),
            "profilePicture",
            None,
        ),
    ];
    cases
        .extend(changes.map(|(changes, field, message)| (with(&valid(), changes), field, message)));
    let mut problems = Vec::new();
    for (body, field, message) in cases {
        let before = app.user_count();

        let resp = app.register_json(&body).await;

        let outcome = check_field_errors(resp, &[field], message).await;
        let after = app.user_count();
        if let Err(problem) = outcome.and_then(|_| match after - before {
            0 => Ok(()),
            n => Err(format!("{n} new rows")),
        }) {
            problems.push(format!("{body}: {problem}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test]
async fn a_registration_with_several_bad_fields_names_each_of_them() {
    let app = spawn_app().await;
    let body = json!({
        "username": "", "email": "nope", "password": "correct-horse-battery-staple",
        "status": "xyz", "level": -1,
    });

    let resp = app.register_json(&body).await;

    assert_field_errors(resp, &["username", "email", "status", "level"]).await;
    assert_eq!(app.user_count(), 0);
}

#[tokio::test]
async fn listing_users_returns_every_user_ordered_by_id() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.create_user(&TestUser::generate()).await);
    }

    let body = expect_json(app.get_users(&ids[2].1).await, StatusCode::OK).await;

    let listed: Vec<i64> = body
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(assert_user_json)
        .collect();
    let mut expected: Vec<i64> = ids.iter().map(|u| u.0).collect();
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn a_user_is_read_by_id_and_the_caller_by_me() {
    let app = spawn_app().await;
    let alice = TestUser::generate();
    let (alice_id, alice_access, _) = app.create_user(&alice).await;
    let (bob_id, bob_access, _) = app.create_user(&TestUser::generate()).await;

    let alice_seen_by_bob = fetch(&app, alice_id, &bob_access).await;
    let me = expect_json(app.get_me(&alice_access).await, StatusCode::OK).await;
    let bob_me = expect_json(app.get_me(&bob_access).await, StatusCode::OK).await;

    assert_eq!(assert_user_json(&alice_seen_by_bob), alice_id);
    assert_eq!(alice_seen_by_bob["username"], json!(alice.username));
    assert_eq!(me, alice_seen_by_bob);
    assert_eq!(bob_me["id"], bob_id);
}

#[tokio::test]
async fn an_unknown_user_id_gets_404() {
    let app = spawn_app().await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;

    for method in [Method::GET, Method::DELETE] {
        let path = format!("/api/users/{}", id + 1000);
        let resp = app.send(method, &path, Some(&access), None).await;

        assert_404(resp).await;
    }
    let resp = app
        .put_user(id + 1000, &access, &TestUser::generate().body())
        .await;
    assert_404(resp).await;
    assert_eq!(app.user_count(), 1);
}

#[tokio::test]
async fn head_works_where_get_does() {
    let app = spawn_app().await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;

    for path in [
        "/api/users",
        "/api/users/me",
        format!("/api/users/{id}").as_str(),
    ] {
        let resp = app.send(Method::HEAD, path, Some(&access), None).await;

        assert_empty(resp, StatusCode::OK).await;
    }
}

#[tokio::test]
async fn user_endpoints_accept_a_trailing_slash() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    let created = app
        .send(Method::POST, "/api/users/", None, Some(&user.body()))
        .await;
    let id = assert_user_json(&expect_json(created, StatusCode::CREATED).await);
    let access = app.create_user(&TestUser::generate()).await.1;
    let own = expect_json(
        app.login(&user.username, &user.password).await,
        StatusCode::OK,
    )
    .await;
    let own = own["access"].as_str().unwrap();
    let path = format!("/api/users/{id}/");
    let put = json!({"username": user.username, "email": user.email, "level": 2});

    for (method, path, token, body) in [
        (Method::GET, "/api/users/", access.as_str(), None),
        (Method::GET, "/api/users/me/", own, None),
        (Method::GET, path.as_str(), access.as_str(), None),
        (Method::PUT, path.as_str(), own, Some(&put)),
        (
            Method::PATCH,
            path.as_str(),
            own,
            Some(&json!({"level": 3})),
        ),
    ] {
        let resp = app.send(method, path, Some(token), body).await;

        expect_json(resp, StatusCode::OK).await;
    }
    assert_eq!(app.column(id, "level"), json!(3));
    let resp = app.send(Method::DELETE, &path, Some(own), None).await;
    assert_empty(resp, StatusCode::NO_CONTENT).await;
    assert_eq!(app.user_count(), 1);
}

#[tokio::test]
async fn paths_beside_the_route_groups_are_routed_as_any_other_path() {
    // Routes are grouped behind path prefixes (/api/users, /api/users/me,
    // /api/token); a path that only starts like a group must still reach
    // the route that matches it, or the 404 of an unknown path.
    let app = spawn_app().await;
    let (_, access, _) = app.create_user(&TestUser::generate()).await;
    for (method, path, status) in [
        (Method::GET, "/api/users/meow", StatusCode::NOT_FOUND),
        (Method::GET, "/api/users/me2", StatusCode::NOT_FOUND),
        (Method::GET, "/api/usersx", StatusCode::NOT_FOUND),
        (Method::GET, "/api/users/me/x", StatusCode::NOT_FOUND),
        (Method::POST, "/api/tokens", StatusCode::NOT_FOUND),
        (Method::POST, "/api/token/refreshx", StatusCode::NOT_FOUND),
        (Method::GET, "/api/healthz", StatusCode::NOT_FOUND),
        (Method::GET, "/api/users/me", StatusCode::OK),
        (Method::GET, "/api/health", StatusCode::OK),
    ] {
        let resp = app.send(method.clone(), path, Some(&access), None).await;
        let body = expect_json(resp, status).await;
        if status == StatusCode::NOT_FOUND {
            assert_eq!(body, json!({"detail": "Not found."}), "{method} {path}");
        }
    }
    // The group's own 405s are unchanged.
    let resp = app
        .send(
            Method::DELETE,
            "/api/users/me/password",
            Some(&access),
            None,
        )
        .await;
    let body = expect_json(resp, StatusCode::METHOD_NOT_ALLOWED).await;
    assert_eq!(body, json!({"detail": "Method \"DELETE\" not allowed."}));
    let resp = app
        .send(Method::GET, "/api/token/refresh", None, None)
        .await;
    expect_json(resp, StatusCode::METHOD_NOT_ALLOWED).await;
}

#[tokio::test]
async fn a_user_updates_themself_with_put() {
    let app = spawn_app().await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let before = fetch(&app, id, &access).await;
    let changes = json!({
        "username": "renamed", "email": "renamed@example.com", "level": 7,
        "status": "online", "profilePicture": "https://example.com/me.png",
    });
    // Timestamps may have whole-second precision.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let after = expect_json(app.put_user(id, &access, &changes).await, StatusCode::OK).await;

    assert_user_json(&after);
    assert_eq!(with(&after, changes.clone()), after);
    assert_eq!(
        (&after["id"], &after["created_at"]),
        (&before["id"], &before["created_at"])
    );
    assert_ne!(after["updated_at"], before["updated_at"]);
    assert_eq!(fetch(&app, id, &access).await, after);
    assert_eq!(
        [
            app.column(id, "username"),
            app.column(id, "email"),
            app.column(id, "profile_picture")
        ],
        [
            changes["username"].clone(),
            changes["email"].clone(),
            changes["profilePicture"].clone()
        ]
    );
}

#[tokio::test]
async fn put_keeps_the_optional_fields_it_is_not_given() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    let (id, access, _) = app.create_user(&user).await;
    let set = json!({"level": 4, "status": "busy"});
    expect_json(app.patch_user(id, &access, &set).await, StatusCode::OK).await;

    let body = json!({"username": user.username, "email": user.email});
    let after = expect_json(app.put_user(id, &access, &body).await, StatusCode::OK).await;

    assert_eq!(with(&after, set), after);
    assert_eq!(app.column(id, "status"), json!("busy"));
}

#[tokio::test]
async fn put_may_keep_the_own_username_and_email_or_change_their_case() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    let (id, access, _) = app.create_user(&user).await;

    for body in [
        json!({"username": user.username, "email": user.email}),
        json!({"username": user.username.to_uppercase(), "email": user.email.to_uppercase()}),
    ] {
        let resp = app.put_user(id, &access, &body).await;

        let after = expect_json(resp, StatusCode::OK).await;
        assert_eq!(with(&after, body.clone()), after);
    }
}

#[tokio::test]
async fn put_without_username_and_email_gets_400_and_changes_nothing() {
    let app = spawn_app().await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let row = app.row(id);

    let resp = app.put_user(id, &access, &json!({"level": 5})).await;

    assert_reply(
        resp,
        StatusCode::BAD_REQUEST,
        json!({"username": [REQUIRED], "email": [REQUIRED]}),
    )
    .await;
    assert_eq!(app.row(id), row);
}

#[tokio::test]
async fn put_to_a_taken_username_or_email_gets_400_and_changes_nothing() {
    let app = spawn_app().await;
    let taken = TestUser::generate();
    app.create_user(&taken).await;
    let user = TestUser::generate();
    let (id, access, _) = app.create_user(&user).await;
    let row = app.row(id);

    for (body, field) in [
        (
            json!({"username": taken.username.to_uppercase(), "email": user.email}),
            "username",
        ),
        (
            json!({"username": user.username, "email": taken.email.to_uppercase()}),
            "email",
        ),
    ] {
        let resp = app.put_user(id, &access, &body).await;

        assert_field_errors(resp, &[field]).await;
        assert_eq!(app.row(id), row);
    }
}

#[tokio::test]
async fn another_user_may_not_change_or_delete_a_user() {
    let app = spawn_app().await;
    let victim = TestUser::generate();
    let (id, _, _) = app.create_user(&victim).await;
    let (_, intruder, _) = app.create_user(&TestUser::generate()).await;
    let row = app.row(id);
    let put = json!({"username": "hijacked", "email": "hijacked@example.com"});

    assert_403(app.put_user(id, &intruder, &put).await).await;
    assert_403(
        app.patch_user(id, &intruder, &json!({"status": "busy"}))
            .await,
    )
    .await;
    assert_403(app.delete_user(id, &intruder).await).await;

    assert_eq!(app.row(id), row);
}

#[tokio::test]
async fn staff_may_change_and_delete_anyone() {
    let app = spawn_app().await;
    let (id, _, _) = app.create_user(&TestUser::generate()).await;
    let (_, staff, _) = app.create_staff().await;
    let put = json!({"username": "moderated", "email": "moderated@example.com", "level": 9});

    let after = expect_json(app.put_user(id, &staff, &put).await, StatusCode::OK).await;
    assert_eq!(with(&after, put), after);
    let patched = app.patch_user(id, &staff, &json!({"status": "busy"})).await;
    assert_eq!(expect_json(patched, StatusCode::OK).await["status"], "busy");
    assert_eq!(app.column(id, "username"), json!("moderated"));

    assert_empty(app.delete_user(id, &staff).await, StatusCode::NO_CONTENT).await;
    assert_eq!(app.column(id, "username"), Value::Null);
}

#[tokio::test]
async fn patch_changes_only_the_fields_it_is_given() {
    let app = spawn_app().await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let before = fetch(&app, id, &access).await;

    let resp = app
        .patch_user(id, &access, &json!({"status": "busy"}))
        .await;

    let after = expect_json(resp, StatusCode::OK).await;
    let expected = with(
        &before,
        json!({"status": "busy", "updated_at": after["updated_at"]}),
    );
    assert_eq!(after, expected);
    assert_eq!(app.column(id, "status"), json!("busy"));
}

#[tokio::test]
async fn patch_with_a_bad_value_gets_400_and_changes_nothing() {
    let app = spawn_app().await;
    let (id, access, _) = app.create_user(&TestUser::generate()).await;
    let row = app.row(id);

    for (body, field) in [
        (json!({"level": -1}), "level"),
        (json!({"status": "away"}), "status"),
        (json!({"email": "nope"}), "email"),
        (json!({"username": ""}), "username"),
    ] {
        let resp = app.patch_user(id, &access, &body).await;

        assert_field_errors(resp, &[field]).await;
    }
    assert_eq!(app.row(id), row);
}

#[tokio::test]
async fn updates_cannot_set_the_password_or_internal_fields() {
    let app = spawn_app().await;
    let user = TestUser::generate();
    let (id, access, _) = app.create_user(&user).await;
    let hash = app.column(id, "password_hash");
    let sneaky = json!({
        "password": "brand-new-password-42", "is_staff": true, "is_active": false,
        "id": 999, "created_at": "2000-01-01T00:00:00Z",
    });

    let resp = app.patch_user(id, &access, &sneaky).await;

    assert_eq!(
        assert_user_json(&expect_json(resp, StatusCode::OK).await),
        id
    );
    assert_eq!(app.column(id, "password_hash"), hash);
    assert_eq!(
        (app.column(id, "is_staff"), app.column(id, "is_active")),
        (json!(0), json!(1))
    );
    expect_json(
        app.login(&user.username, &user.password).await,
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn a_user_deletes_themself_and_their_tokens_stop_working() {
    let app = spawn_app().await;
    let (id, access, refresh) = app.create_user(&TestUser::generate()).await;
    let (_, other, _) = app.create_user(&TestUser::generate()).await;

    assert_empty(app.delete_user(id, &access).await, StatusCode::NO_CONTENT).await;

    assert_eq!(app.column(id, "username"), Value::Null);
    assert_eq!(app.user_count(), 1);
    assert_user_not_found(app.get_me(&access).await).await;
    assert_eq!(
        app.refresh(&refresh).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_404(app.get_user(id, &other).await).await;
}

#[tokio::test]
async fn ids_are_never_reused_after_a_delete() {
    let app = spawn_app().await;
    app.create_user(&TestUser::generate()).await;
    let (last, access, _) = app.create_user(&TestUser::generate()).await;
    assert_empty(app.delete_user(last, &access).await, StatusCode::NO_CONTENT).await;

    let (next, _, _) = app.create_user(&TestUser::generate()).await;

    assert!(
        next > last,
        "id {next} reuses or precedes deleted id {last}"
    );
    assert_user_not_found(app.get_me(&access).await).await;
}

/// Edits arriving together share one commit on the server (group commit):
/// the refused ones must change nothing and cost the others nothing, and
/// every accepted one must be what the database holds afterwards.
#[tokio::test]
async fn concurrent_edits_keep_exactly_the_accepted_ones() {
    let app = spawn_app().await;
    let alice = TestUser::generate();
    let bob = TestUser::generate();
    let (alice_id, alice_token, _) = app.create_user(&alice).await;
    let (bob_id, bob_token, _) = app.create_user(&bob).await;
    let app = std::sync::Arc::new(app);

    let mut edits = Vec::new();
    for n in 0..40 {
        let app = app.clone();
        let (alice_token, bob_token, bob_email) =
            (alice_token.clone(), bob_token.clone(), bob.email.clone());
        edits.push(tokio::spawn(async move {
            match n % 3 {
                // Alice takes a new address of her own: accepted.
                0 => {
                    let email = format!("alice-{n}@example.com");
                    let body = json!({"email": email});
                    let resp = app.patch_user(alice_id, &alice_token, &body).await;
                    (n, resp.status(), email)
                }
                // Alice tries Bob's address: refused.
                1 => {
                    let body = json!({"email": bob_email});
                    let resp = app.patch_user(alice_id, &alice_token, &body).await;
                    (n, resp.status(), String::new())
                }
                // Bob raises his level: accepted.
                _ => {
                    let body = json!({"level": n});
                    let resp = app.patch_user(bob_id, &bob_token, &body).await;
                    (n, resp.status(), String::new())
                }
            }
        }));
    }
    let mut accepted_emails = Vec::new();
    let mut bob_levels = Vec::new();
    for edit in edits {
        let (n, status, email) = edit.await.expect("edit ran");
        match n % 3 {
            0 => {
                assert_eq!(status, StatusCode::OK, "edit {n}");
                accepted_emails.push(email);
            }
            1 => assert_eq!(status, StatusCode::BAD_REQUEST, "edit {n}"),
            _ => {
                assert_eq!(status, StatusCode::OK, "edit {n}");
                bob_levels.push(n);
            }
        }
    }
    let alice_email = app.column(alice_id, "email");
    let alice_email = alice_email.as_str().expect("an email");
    assert!(
        accepted_emails.iter().any(|e| e == alice_email),
        "{alice_email}"
    );
    assert_eq!(app.column(bob_id, "email"), json!(bob.email));
    let bob_level = app.column(bob_id, "level").as_i64().expect("a level");
    assert!(bob_levels.contains(&bob_level), "{bob_level}");
}
