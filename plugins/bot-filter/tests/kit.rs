//! bot-filter on the real Weir runtime (`weir::testkit`).

use weir::testkit::{Harness, TestRequest, build_plugin};

async fn harness(config: &str) -> Result<Harness, String> {
    Harness::new(&build_plugin(env!("CARGO_MANIFEST_DIR"))?, config).await
}

fn agent(ua: &str) -> TestRequest {
    TestRequest::get("/").header("user-agent", ua)
}

#[tokio::test]
async fn scanners_and_empty_agents_are_refused_browsers_pass() {
    let h = harness("").await.unwrap();
    assert_eq!(
        h.send(agent("Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"))
            .await
            .status,
        200
    );
    let out = h
        .send(agent("sqlmap/1.8#stable (https://sqlmap.org)"))
        .await;
    assert_eq!(out.status, 403);
    assert!(out.upstream.is_none());
    assert_eq!(
        h.send(agent("Nikto/2.5")).await.status,
        403,
        "case-insensitive"
    );
    assert_eq!(
        h.send(TestRequest::get("/")).await.status,
        403,
        "no user agent"
    );
}

#[tokio::test]
async fn the_allow_list_wins_and_deny_replaces_the_defaults() {
    let h = harness("deny = [\"bot\"]\nallow = [\"uptimebot\"]\ndeny_empty = false\nstatus = 429")
        .await
        .unwrap();
    assert_eq!(h.send(agent("BadBot/1.0")).await.status, 429);
    assert_eq!(h.send(agent("UptimeBot/2.0")).await.status, 200);
    assert_eq!(
        h.send(agent("sqlmap/1.8")).await.status,
        200,
        "defaults replaced"
    );
    assert_eq!(h.send(TestRequest::get("/")).await.status, 200);
}

#[tokio::test]
async fn an_empty_pattern_is_refused_at_load() {
    let err = harness("deny = [\"x\", \" \"]").await.err().unwrap();
    assert!(err.contains("deny[1]: must not be empty"), "{err}");
}
