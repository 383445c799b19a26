//! ip-filter on the real Weir runtime (`weir::testkit`).

use weir::testkit::{Harness, TestRequest, build_plugin};

async fn harness(config: &str) -> Result<Harness, String> {
    Harness::new(&build_plugin(env!("CARGO_MANIFEST_DIR"))?, config).await
}

fn from(addr: &str) -> TestRequest {
    TestRequest::get("/admin").client(addr.parse().unwrap())
}

#[tokio::test]
async fn only_allowed_networks_pass_and_deny_wins_inside_them() {
    let h = harness(
        r#"allow = ["10.0.0.0/8", "2001:db8::/32"]
deny = ["10.6.6.0/24"]"#,
    )
    .await
    .unwrap();
    for (client, status) in [
        ("10.1.2.3:5000", 200),
        ("10.6.6.7:5000", 403),
        ("192.0.2.1:5000", 403),
        ("[2001:db8::7]:5000", 200),
        ("[2001:db9::7]:5000", 403),
        ("[::ffff:10.1.2.3]:5000", 200),
    ] {
        let out = h.send(from(client)).await;
        assert_eq!(out.status, status, "{client}");
        assert_eq!(out.upstream.is_some(), status == 200, "{client}");
    }
}

#[tokio::test]
async fn a_deny_list_alone_lets_everyone_else_through_with_the_configured_status() {
    let h = harness("deny = [\"203.0.113.0/24\"]\nstatus = 451")
        .await
        .unwrap();
    assert_eq!(h.send(from("198.51.100.1:1")).await.status, 200);
    let out = h.send(from("203.0.113.9:1")).await;
    assert_eq!(out.status, 451);
    assert_eq!(out.answered_by.as_deref(), Some("plugin"));
}

#[tokio::test]
async fn bad_networks_and_empty_lists_are_refused_at_load() {
    let err = harness("allow = [\"10.0.0.0/33\"]").await.err().unwrap();
    assert!(
        err.contains("allow[0]: invalid CIDR `10.0.0.0/33`"),
        "{err}"
    );
    let err = harness("allow = []").await.err().unwrap();
    assert!(err.contains("give at least one network"), "{err}");
}
