//! Integration tests for Weir live in `all/`; this crate only builds the test
//! plugins (see `build.rs`).
