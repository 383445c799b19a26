//! Config diagnostics as fixtures: each `fixtures/config/NAME.toml` must fail
//! `weir check` with exactly the message in `NAME.err` (file, line, column, fix).
//! Set `WEIR_BLESS=1` to rewrite the `.err` files after an intended change.

use std::path::PathBuf;

/// The `*.toml` fixtures in `fixtures/NAME`, sorted, and that folder.
fn fixtures(name: &str, at_least: usize) -> (PathBuf, Vec<PathBuf>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= at_least, "fixtures went missing");
    (dir, fixtures)
}

/// Compares `actual` with the fixture's expected file (`ext`), or rewrites
/// it under `WEIR_BLESS`; a difference is added to `failures`.
fn expect_file(toml: &std::path::Path, ext: &str, actual: &str, failures: &mut Vec<String>) {
    let expected_path = toml.with_extension(ext);
    if std::env::var_os("WEIR_BLESS").is_some() {
        std::fs::write(&expected_path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    if actual.is_empty() || actual != expected {
        failures.push(format!(
            "{}:\n--- expected\n{expected}--- actual\n{actual}",
            toml.display()
        ));
    }
}

#[tokio::test]
async fn each_broken_manifest_fails_with_its_expected_message() {
    let (dir, fixtures) = fixtures("config", 10);
    let mut failures = Vec::new();
    for toml in fixtures {
        let errors = match weir::check(&toml).await {
            Ok(_) => {
                failures.push(format!("{}: loaded, but must fail", toml.display()));
                continue;
            }
            Err(e) => e.to_string(),
        };
        // Messages name the file as given; strip the machine-specific directory.
        let actual = errors.replace(&format!("{}/", dir.display()), "") + "\n";
        expect_file(&toml, "err", &actual, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Policy conflicts as fixtures: each `fixtures/lint/NAME.toml` loads, and
/// `weir check` warns with exactly the lines in `NAME.warn`.
#[tokio::test]
async fn each_conflicting_manifest_warns_with_its_expected_message() {
    let (dir, fixtures) = fixtures("lint", 5);
    let mut failures = Vec::new();
    for toml in fixtures {
        let warnings = match weir::check_with_warnings(&toml).await {
            Ok((_, w)) => w,
            Err(e) => {
                failures.push(format!("{}: must load, but: {e}", toml.display()));
                continue;
            }
        };
        let actual: String = warnings
            .iter()
            .map(|w| format!("{w}\n"))
            .collect::<String>()
            .replace(&format!("{}/", dir.display()), "");
        expect_file(&toml, "warn", &actual, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The bundled policy example has no conflicts to warn about.
#[tokio::test]
async fn the_policy_example_has_no_conflicts() {
    let manifest =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/policy-tests/gateway.toml");
    let (_, warnings) = weir::check_with_warnings(&manifest).await.unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
}
