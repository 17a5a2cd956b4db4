//! What a program meets when it is written against the client's public API
//! (issue 12): errors that say what happened, calls tools need, defaults.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use redis_lock_client::{Client, Config, NodeErrorKind, Token, DEFAULT_MAX_HOLD};
use testkit::{NodeSet, Server};

fn client_for(
    set: &NodeSet,
    build: impl FnOnce(redis_lock_client::ConfigBuilder) -> redis_lock_client::ConfigBuilder,
) -> Client {
    Client::new(
        build(Config::builder(set.urls()))
            .connect_timeout(Duration::from_millis(500))
            .request_timeout(Duration::from_millis(500))
            .build()
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn acquire_default_waits_the_configured_default_and_says_the_wait_ran_out() {
    let set = NodeSet::start(3, testkit::first_flavor());
    let client = client_for(&set, |b| {
        b.default_wait(Duration::from_millis(300))
            .retry_count(7)
            .retry_delay(Duration::from_millis(20))
            .retry_jitter(Duration::from_millis(5))
    });
    assert_eq!(client.config().retry_count(), Some(7));
    assert_eq!(client.config().retry_delay(), Duration::from_millis(20));
    assert_eq!(client.config().retry_jitter(), Duration::from_millis(5));
    let held = client
        .try_acquire("api:busy", Duration::from_secs(30))
        .await
        .unwrap();
    let started = Instant::now();
    let e = client
        .acquire_default("api:busy", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "{e}");
    assert!(
        e.is_wait_exhausted() && !e.is_no_validity_left() && e.is_taken(),
        "{e}"
    );
    let text = e.to_string();
    assert_eq!(text.matches("\"api:busy\"").count(), 1, "{text}");
    assert!(
        text.contains("round") && !text.contains("attempts"),
        "{text}"
    );
    client.release(&held).await.unwrap();
    assert!(client.settle(Duration::from_secs(2)).await);
}

#[test]
fn renewal_has_no_hold_limit_by_default_like_the_cli() {
    assert_eq!(DEFAULT_MAX_HOLD, Duration::MAX);
    let config = Config::from_urls("redis://127.0.0.1:1").unwrap();
    assert_eq!(config.max_hold(), Duration::MAX);
}

#[tokio::test]
async fn a_node_refusing_grants_is_not_unreachable_and_a_wait_it_outlasts_ends_at_once() {
    let set = NodeSet::start_with(1, |_| {
        Server::builder(testkit::first_flavor()).module_arg("rejoin-delay-ms", "3600000")
    });
    let client = client_for(&set, |b| b);
    for server_wait in [true, false] {
        let client = if server_wait {
            client.clone()
        } else {
            client_for(&set, |b| b.server_wait(false))
        };
        let started = Instant::now();
        let e = client
            .acquire("api:k", Duration::from_secs(10), Duration::from_secs(600))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "waited: {e}");
        assert!(e.is_refused() && !e.is_unreachable(), "{e}");
        let left = e.retry_after().unwrap();
        assert!(
            left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
            "{left:?}"
        );
        assert_eq!(e.node_errors()[0].kind, NodeErrorKind::Refusing, "{e}");
    }
}

#[tokio::test]
async fn no_error_contains_the_token() {
    let set = NodeSet::start_with(3, |_| Server::builder(testkit::first_flavor()).no_module());
    let client = client_for(&set, |b| b);
    let secret = Token::new("s3cret-token-77c1").unwrap();
    let e = client
        .try_acquire_with_token("api:k", Duration::from_secs(5), &secret)
        .await
        .unwrap_err();
    let e2 = client.release_token("api:k", &secret).await.unwrap_err();
    for text in [format!("{e} {e:?}"), format!("{e2} {e2:?}")] {
        assert!(!text.contains(secret.as_str()), "{text}");
        assert!(text.contains("module not loaded"), "{text}");
    }
}

#[tokio::test]
async fn an_acl_refusal_is_a_permission_error_naming_user_command_and_key() {
    let set = NodeSet::start(3, testkit::first_flavor());
    // The least-privilege user docs/COMMANDS.md recommends.
    testkit::lockcmd::add_app_user(&set.nodes);
    let client = client_for(&set, |b| b.username("app").password("secret"));
    let e = client
        .try_acquire("other:k", Duration::from_secs(5))
        .await
        .unwrap_err();
    let n = &e.node_errors()[0];
    assert!(n.is_permission() && !n.is_auth(), "{e}");
    assert!(
        n.message.contains("\"app\"") && n.message.contains("LOCK.ACQUIRE on key \"other:k\""),
        "{e}"
    );
    let lease = client
        .try_acquire("locks:k", Duration::from_secs(5))
        .await
        .unwrap();
    // The bare-token calls a tool uses, and the per-node views.
    let views = client.lock_info("locks:k").await;
    assert!(
        matches!(
            views.holder(),
            redis_lock_client::Holder::Held { on: 3, .. }
        ),
        "{views:?}"
    );
    assert_eq!(
        client
            .extend_token("locks:k", lease.token(), Duration::from_secs(20))
            .await
            .unwrap(),
        3
    );
    let released = client
        .release_token("locks:k", lease.token())
        .await
        .unwrap();
    assert_eq!(released.held, 3);
    let again = client
        .release_token("locks:k", lease.token())
        .await
        .unwrap_err();
    assert!(again.is_not_held(), "{again}");
}
