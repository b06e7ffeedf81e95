//! The admin page's serving and the staff-only account actions it uses
//! (`/api/users/{id}/account|password|activate|deactivate|logout-all`).
//! The page itself is tested in a real browser (`tests/browser/`).

use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{TestApp, TestUser, expect_json, read_json, spawn_app, spawn_app_with};

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    client
        .get(format!("{}{path}", app.base_url))
        .send()
        .await
        .expect("GET")
}

fn header(resp: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn the_page_is_served_with_its_own_policy_and_can_be_switched_off() {
    let app = spawn_app().await;
    let bare = get(&app, "/admin").await;
    assert_eq!(bare.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(header(&bare, LOCATION), "/admin/");
    for (path, kind) in [
        ("/admin/", "text/html"),
        ("/admin/admin.css", "text/css"),
        ("/admin/admin.js", "text/javascript"),
    ] {
        let resp = get(&app, path).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert!(header(&resp, CONTENT_TYPE).starts_with(kind), "{path}");
        let policy = header(&resp, CONTENT_SECURITY_POLICY);
        for part in [
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(part), "{path}: {policy}");
        }
        assert!(!policy.contains("unsafe"), "{path}: {policy}");
        let text = resp.text().await.expect("body");
        if kind == "text/html" {
            assert!(
                !text.contains("<script>") && !text.contains(" style="),
                "no inline code"
            );
        }
    }
    let api = get(&app, "/api/health").await;
    assert_eq!(
        header(&api, CONTENT_SECURITY_POLICY),
        "default-src 'none'; frame-ancestors 'none'",
        "the API keeps its strict policy"
    );
    assert_eq!(
        get(&app, "/admin/nothing.js").await.status(),
        StatusCode::NOT_FOUND
    );

    let off = spawn_app_with(|c| c.admin.enabled = false).await;
    for path in ["/admin", "/admin/", "/admin/admin.js"] {
        assert_eq!(
            get(&off, path).await.status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
}

/// Staff read a user's private flags, set their password, deactivate and
/// activate them, and log them out everywhere; each takes effect at once.
#[tokio::test]
async fn staff_manage_another_users_account() {
    let app = spawn_app().await;
    let (_, staff, _) = app.create_staff().await;
    let user = TestUser::generate();
    let (id, access, _) = app.create_user(&user).await;
    let post = |path: String, body: Option<serde_json::Value>| {
        let app = &app;
        let staff = staff.clone();
        async move {
            app.send(Method::POST, &path, Some(&staff), body.as_ref())
                .await
        }
    };

    let account = app
        .send(
            Method::GET,
            &format!("/api/users/{id}/account"),
            Some(&staff),
            None,
        )
        .await;
    let account = expect_json(account, StatusCode::OK).await;
    assert_eq!(
        account,
        json!({"id": id, "is_staff": false, "is_active": true})
    );

    let short = post(
        format!("/api/users/{id}/password"),
        Some(json!({"new_password": "short"})),
    )
    .await;
    let (status, body) = read_json(short).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["new_password"].is_array(), "{body}");
    let missing = post(format!("/api/users/{id}/password"), Some(json!({}))).await;
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let set = post(
        format!("/api/users/{id}/password"),
        Some(json!({"new_password": "a-fresh-passphrase-91"})),
    )
    .await;
    assert_eq!(set.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.login(&user.username, "a-fresh-passphrase-91")
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login(&user.username, &user.password).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_me(&access).await.status(),
        StatusCode::UNAUTHORIZED,
        "old tokens are void"
    );

    let deactivated = post(format!("/api/users/{id}/deactivate"), None).await;
    assert_eq!(deactivated.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.login(&user.username, "a-fresh-passphrase-91")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let account = app
        .send(
            Method::GET,
            &format!("/api/users/{id}/account"),
            Some(&staff),
            None,
        )
        .await;
    assert_eq!(
        expect_json(account, StatusCode::OK).await["is_active"],
        false
    );
    let activated = post(format!("/api/users/{id}/activate"), None).await;
    assert_eq!(activated.status(), StatusCode::NO_CONTENT);
    let body = expect_json(
        app.login(&user.username, "a-fresh-passphrase-91").await,
        StatusCode::OK,
    )
    .await;
    let fresh = body["access"].as_str().expect("access").to_owned();

    let out = post(format!("/api/users/{id}/logout-all"), None).await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.get_me(&fresh).await.status(), StatusCode::UNAUTHORIZED);
}

/// Without a token 401, as a non-staff user 403 (also on oneself), for an
/// unknown id 404, with another method 405; nothing changes.
#[tokio::test]
async fn account_actions_refuse_everyone_but_staff() {
    let app = spawn_app().await;
    let (_, staff, _) = app.create_staff().await;
    let user = TestUser::generate();
    let (id, access, _) = app.create_user(&user).await;
    let actions = [
        (Method::GET, "account"),
        (Method::POST, "password"),
        (Method::POST, "activate"),
        (Method::POST, "deactivate"),
        (Method::POST, "logout-all"),
    ];
    let body = json!({"new_password": "a-fresh-passphrase-91"});
    for (method, action) in &actions {
        let path = format!("/api/users/{id}/{action}");
        let none = app.send(method.clone(), &path, None, Some(&body)).await;
        assert_eq!(none.status(), StatusCode::UNAUTHORIZED, "{path}");
        let own = app
            .send(method.clone(), &path, Some(&access), Some(&body))
            .await;
        assert_eq!(own.status(), StatusCode::FORBIDDEN, "{path}");
        let unknown = format!("/api/users/999999/{action}");
        let gone = app
            .send(method.clone(), &unknown, Some(&staff), Some(&body))
            .await;
        assert_eq!(gone.status(), StatusCode::NOT_FOUND, "{unknown}");
        let wrong = if *method == Method::GET {
            Method::DELETE
        } else {
            Method::GET
        };
        let other = app.send(wrong, &path, Some(&staff), None).await;
        assert_eq!(other.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
    }
    assert_eq!(
        app.login(&user.username, &user.password).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.get_me(&access).await.status(),
        StatusCode::OK,
        "nothing changed"
    );
}
