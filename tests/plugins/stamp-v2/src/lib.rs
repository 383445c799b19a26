//! Hot-swap test plugin, version 2.
const VERSION: &str = "v2";
include!("../../stamp-v1/src/stamp.rs");
