//! Replays every fuzz corpus as an ordinary test: the seeds, and each input
//! fuzzing ever saved (crashes included, once fixed), must keep their properties.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{target}: {} breaks a property", path.display());
        }
        n += 1;
    }
    assert!(n > 0, "empty corpus {}", dir.display());
}

#[test]
fn path_corpus() {
    replay("path", weir_fuzz::path);
}

#[test]
fn manifest_corpus() {
    replay("manifest", weir_fuzz::manifest);
}

#[test]
fn framing_corpus() {
    replay("framing", weir_fuzz::framing);
}

#[test]
fn route_corpus() {
    replay("route", weir_fuzz::route);
}
