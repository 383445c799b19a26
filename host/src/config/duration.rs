//! Human-readable durations in the manifest: `"500ms"`, `"10s"`, `"2m"`, `"1h"`.
//! The type is the SDK's, so plugin configs read durations as the manifest does.

pub use weir_sdk::units::Duration;
