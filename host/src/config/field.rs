//! Where a field of a plugin's config table is written, so an error the
//! plugin reports as `keys[0].consumer: ...` points at that field's own line
//! and column rather than at the table.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// One step of a field path: `keys`, `[0]`.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// `keys[0].consumer` → `[Key("keys"), Index(0), Key("consumer")]`; `None`
/// when the text is not a field path (then the message has no path prefix).
fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        let key_ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !key_ok {
            return None;
        }
        out.push(Step::Key(key));
        while !rest.is_empty() {
            let (n, after) = rest.split_once(']')?;
            out.push(Step::Index(n.parse().ok()?));
            rest = after.strip_prefix('[').unwrap_or(after);
            if !after.is_empty() && !after.starts_with('[') {
                return None;
            }
        }
    }
    Some(out)
}

/// The table (or array element) whose value starts at `start`, anywhere in `v`.
fn find<'a, 'i>(v: &'a toml::Spanned<DeValue<'i>>, start: usize) -> Option<&'a DeTable<'i>> {
    match v.get_ref() {
        DeValue::Table(t) if v.span().start == start => Some(t),
        DeValue::Table(t) => t.values().find_map(|x| find(x, start)),
        DeValue::Array(a) => a.iter().find_map(|x| find(x, start)),
        _ => None,
    }
}

/// The span of the field `path` in the config table whose value starts at
/// byte `table_start` of `source`.
fn span_of(source: &str, table_start: usize, path: &str) -> Option<Range<usize>> {
    let steps = steps(path)?;
    let root = DeTable::parse(source).ok()?;
    let root = toml::Spanned::new(root.span(), DeValue::Table(root.into_inner()));
    let mut table = find(&root, table_start)?;
    let mut span = None;
    let mut value: Option<&toml::Spanned<DeValue<'_>>> = None;
    for step in steps {
        let next = match (step, value.map(toml::Spanned::get_ref)) {
            (Step::Key(k), None | Some(DeValue::Table(_))) => {
                if let Some(DeValue::Table(t)) = value.map(toml::Spanned::get_ref) {
                    table = t;
                }
                table
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == k)
                    .map(|(key, v)| (key.span(), v))?
            }
            (Step::Index(i), Some(DeValue::Array(a))) => {
                let v = a.get(i)?;
                (v.span(), v)
            }
            _ => return None,
        };
        span = Some(next.0);
        value = Some(next.1);
    }
    span
}

/// The span of the field a plugin's config error names (`keys[0].consumer:
/// ...`), if that field is written in the table at `table_start`.
pub fn locate(source: &str, table_start: usize, message: &str) -> Option<Range<usize>> {
    let (path, _) = message.split_once(": ")?;
    span_of(source, table_start, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_keys_and_indices() {
        assert_eq!(
            steps("keys[0].consumer"),
            Some(vec![
                Step::Key("keys"),
                Step::Index(0),
                Step::Key("consumer")
            ])
        );
        assert_eq!(steps("plans.free.rate").map(|s| s.len()), Some(3));
        assert_eq!(steps("a[1][2]").map(|s| s.len()), Some(3));
        for not_a_path in ["at least one key", "", "a[x]", "a.", "a]b"] {
            assert_eq!(steps(not_a_path), None, "{not_a_path:?}");
        }
    }

    #[test]
    fn fields_are_found_in_inline_tables() {
        let src = "[[routes]]\nid = \"a\"\n[[routes.plugins]]\nname = \"k\"\nconfig = { keys = [{ key = \"k1\", consumer = \"\" }], realm = \"x\" }\n\n[[routes]]\nid = \"b\"\n[[routes.plugins]]\nname = \"r\"\n[routes.plugins.config]\nrate = 0\nplans = { free = { rate = -1 } }\n";
        let inline = src.find("{ keys").unwrap();
        let at = |start: usize, path: &str| {
            let r = span_of(src, start, path).unwrap();
            &src[r]
        };
        assert_eq!(at(inline, "keys[0].consumer"), "consumer");
        assert_eq!(at(inline, "realm"), "realm");
        assert_eq!(span_of(src, inline, "nope"), None);
        assert_eq!(span_of(src, inline, "keys[3].key"), None);
        // `[routes.plugins.config]` tables: see the several-plugin-config-errors fixture.
    }
}
