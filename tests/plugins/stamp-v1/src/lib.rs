//! Hot-swap test plugin, version 1.
const VERSION: &str = "v1";
include!("stamp.rs");
