//! Config diagnostics as fixtures: each `fixtures/config/NAME.toml` must fail
//! `weir check` with exactly the message in `NAME.err` (file, line, column, fix).
//! Set `WEIR_BLESS=1` to rewrite the `.err` files after an intended change.

use std::path::PathBuf;

#[tokio::test]
async fn each_broken_manifest_fails_with_its_expected_message() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/config");
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 10, "fixtures went missing");
    let bless = std::env::var_os("WEIR_BLESS").is_some();
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
        let expected_path = toml.with_extension("err");
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                toml.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Policy conflicts as fixtures: each `fixtures/lint/NAME.toml` loads, and
/// `weir check` warns with exactly the lines in `NAME.warn`.
#[tokio::test]
async fn each_conflicting_manifest_warns_with_its_expected_message() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/lint");
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 5, "fixtures went missing");
    let bless = std::env::var_os("WEIR_BLESS").is_some();
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
        let expected_path = toml.with_extension("warn");
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if actual.is_empty() || actual != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- actual\n{actual}",
                toml.display()
            ));
        }
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
