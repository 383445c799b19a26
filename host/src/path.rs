//! Path normalisation, done once per request before routing, so that routing,
//! plugins and the upstream all see the same path and `/a/../admin` cannot
//! slip past the auth of `/admin`.

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `%` is not followed by two hex digits.
    BadPercent,
    /// A byte that may not appear in a path (control characters, space...).
    BadChar,
    /// `%2F`, `%5C` or a raw `\`: an origin that decodes them (or reads `\` as `/`, as
    /// WHATWG URL parsers do) would see another path than the router did.
    EncodedSlash,
}

impl PathError {
    /// What is wrong, as the client is told (its `Display`).
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "path must start with `/`",
            PathError::BadPercent => "malformed percent-encoding",
            PathError::BadChar => "invalid character in path",
            PathError::EncodedSlash => {
                "encoded slash or backslash in path (set `[server] allow_encoded_slashes = true` to pass it on)"
            }
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for PathError {}

/// Normalises an origin-form path (no query):
/// - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded,
///   other escapes are kept with upper-case hex (so `%2F` stays a literal, not a separator);
/// - duplicate slashes are merged;
/// - `.` and `..` segments are resolved (never above the root).
pub fn normalise(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Decode unreserved escapes first, so `%2e%2e` is treated as `..`.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadPercent)?;
                let v = hex_val(hex[0])
                    .zip(hex_val(hex[1]))
                    .map(|(h, l)| h << 4 | l)
                    .ok_or(PathError::BadPercent)?;
                if is_unreserved(v) {
                    decoded.push(v as char);
                } else {
                    decoded.push('%');
                    decoded.push(HEX[(v >> 4) as usize] as char);
                    decoded.push(HEX[(v & 15) as usize] as char);
                }
                i += 3;
            }
            0x21..=0x7e => {
                decoded.push(b as char);
                i += 1;
            }
            _ => return Err(PathError::BadChar),
        }
    }

    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (idx, seg) in segments.iter().enumerate() {
        match *seg {
            "" => trailing_slash = idx == last && idx > 0,
            "." => trailing_slash = idx == last,
            ".." => {
                out.pop();
                trailing_slash = idx == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for seg in &out {
        result.push('/');
        result.push_str(seg);
    }
    if result.is_empty() || trailing_slash {
        result.push('/');
    }
    Ok(result)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Whether a normalised path holds an encoded `/` or `\`, or a raw `\`
/// (which WHATWG URL parsers read as `/`: `/x\..\admin` is `/admin` to them).
pub fn has_encoded_slash(normalised: &str) -> bool {
    normalised.contains("%2F") || normalised.contains("%5C") || normalised.contains('\\')
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn dot_segments_and_slashes_are_resolved() {
        let cases = [
            ("/", "/"),
            ("/a/../admin", "/admin"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/./admin/.", "/admin/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/%2e%2e/admin", "/admin"),
            ("/%2E%2e/%61dmin", "/admin"),
            ("/api/", "/api/"),
            ("/api/x/..", "/api/"),
            ("/a%2fb", "/a%2Fb"),
            ("/%7euser", "/~user"),
            ("/a%20b", "/a%20b"),
        ];
        for (input, want) in cases {
            assert_eq!(
                normalise(input).as_deref(),
                Ok(want),
                "normalise({input:?})"
            );
        }
    }

    #[test]
    fn malformed_paths_are_refused() {
        assert!(normalise("admin").is_err());
        assert!(normalise("/a%2").is_err());
        assert!(normalise("/a%zz").is_err());
        assert!(normalise("/a b").is_err());
    }
}
