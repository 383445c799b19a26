//! Configuration errors that say what, where and how to fix it.

use std::fmt;
use std::path::{Path, PathBuf};

/// A line and column (both 1-based) in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `source`.
    pub fn from_offset(source: &str, offset: usize) -> Location {
        let offset = offset.min(source.len());
        let before = &source[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Location { line, column }
    }
}

/// A manifest that cannot be loaded.
///
/// Displays as `file:line:column: message` followed by `help: ...` when
/// there is a fix to suggest.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The manifest's path.
    pub file: PathBuf,
    /// Where in it, when known.
    pub location: Option<Location>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl ConfigError {
    /// A new error in `file`.
    pub fn new(file: &Path, location: Option<Location>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            location,
            message: message.into(),
            help: None,
        }
    }

    /// Adds a suggested fix.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(loc) = self.location {
            write!(f, ":{}:{}", loc.line, loc.column)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// A suggestion for common TOML/serde errors.
pub(super) fn help_for_parse_error(msg: &str) -> Option<String> {
    if msg.starts_with("unknown field") {
        Some("remove the key or fix its spelling; the expected keys are listed above".into())
    } else if msg.starts_with("missing field") {
        Some("add the key; it has no default".into())
    } else if msg.starts_with("duplicate key") {
        Some("each name may be defined once; rename or remove one of them".into())
    } else if msg.starts_with("invalid duration") {
        Some("write durations like \"500ms\", \"10s\", \"2m\" or \"1h\"".into())
    } else if msg.starts_with("invalid size") {
        Some(
            "write sizes with a binary unit, like \"512KiB\" or \"64MiB\", or as a number of bytes"
                .into(),
        )
    } else {
        None
    }
}
