//! Route matching with 10 and 10,000 routes: `cargo bench -p weir --bench router`.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::Method;
use weir::router::{HostMatch, PathMatch, RouteRule, Router};

fn table(n: usize) -> Router<usize> {
    let rules = (0..n)
        .map(|i| RouteRule {
            host: if i % 3 == 0 {
                HostMatch::Exact(format!("svc{i}.example.com"))
            } else {
                HostMatch::Any
            },
            path: PathMatch::Prefix(format!("/api/v{}/service{i}", i % 4)),
            methods: vec![],
            target: Arc::new(i),
        })
        .collect();
    Router::new(rules)
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for n in [10, 10_000] {
        let router = table(n);
        let path = format!("/api/v{}/service{}/items/42", (n / 2) % 4, n / 2 + 1);
        g.bench_with_input(BenchmarkId::new("match", n), &path, |b, path| {
            b.iter(|| {
                router
                    .find(Some("api.example.com"), path, &Method::GET)
                    .ok()
                    .map(|t| **t)
            })
        });
        g.bench_with_input(
            BenchmarkId::new("normalise_and_match", n),
            &path,
            |b, path| {
                b.iter(|| {
                    let p = weir::path::normalise(path).unwrap();
                    router
                        .find(Some("api.example.com"), &p, &Method::GET)
                        .ok()
                        .map(|t| **t)
                })
            },
        );
    }
    g.finish();
}

criterion_group!(router, benches);
criterion_main!(router);
