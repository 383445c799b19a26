//! Byte sizes in the manifest: `"64MiB"`, `"512KiB"`, `"1GiB"`, `"300B"`, or a plain integer of bytes.
//! The type is the SDK's, so plugin configs read sizes as the manifest does.

pub use weir_sdk::units::ByteSize;
