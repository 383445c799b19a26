//! Field paths: `user.password`, `items[*].card`, `items[0].sku`, `[*].id`.
//!
//! A path is dot-separated field names; after a name (or at the very start,
//! for a body that is an array) come any number of `[*]` (every element of
//! an array) or `[N]` (element `N`, from 0). A field name is any non-empty
//! text without `.`, `[` or `]`. Paths are parsed when the config is loaded,
//! so a bad one is a config error.

use crate::value::Value;

/// One step down a JSON tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object member by name.
    Field(String),
    /// Array element `N`.
    Index(usize),
    /// Every element of an array.
    Each,
}

/// A parsed path: at least one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    steps: Vec<Step>,
}

impl Path {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Path, String> {
        if text.is_empty() {
            return Err("a path must not be empty".into());
        }
        let mut steps = Vec::new();
        for (i, part) in text.split('.').enumerate() {
            let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
            if name.contains(']') {
                return Err(format!("`{text}`: `]` without `[` in `{part}`"));
            }
            if name.is_empty() && (i > 0 || rest.is_empty()) {
                return Err(format!("`{text}`: empty field name"));
            }
            if !name.is_empty() {
                steps.push(Step::Field(name.to_owned()));
            }
            while !rest.is_empty() {
                let inner = rest.strip_prefix('[').and_then(|r| r.split_once(']'));
                let Some((inner, after)) = inner else {
                    return Err(format!(
                        "`{text}`: expected `[*]` or `[N]` after a field name in `{part}`"
                    ));
                };
                steps.push(match inner {
                    "*" => Step::Each,
                    n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Step::Index(
                        n.parse()
                            .map_err(|_| format!("`{text}`: index too large"))?,
                    ),
                    other => {
                        return Err(format!(
                            "`{text}`: `[{other}]` is neither `[*]` nor an index like `[0]`"
                        ));
                    }
                });
                rest = after;
            }
        }
        Ok(Path { steps })
    }

    /// The field name this path ends in, if it ends in one.
    pub fn last_field(&self) -> Option<&str> {
        match self.steps.last() {
            Some(Step::Field(name)) => Some(name),
            _ => None,
        }
    }

    /// Whether any step is `[*]`.
    pub fn has_wildcard(&self) -> bool {
        self.steps.contains(&Step::Each)
    }

    /// Whether both paths lead to the same place but for their last step.
    pub fn same_parent(&self, other: &Path) -> bool {
        self.parent() == other.parent()
    }

    fn parent(&self) -> &[Step] {
        &self.steps[..self.steps.len() - 1]
    }

    /// Calls `f` on every value the path leads to.
    pub fn for_each(&self, root: &mut Value, f: &mut impl FnMut(&mut Value)) {
        walk(root, &self.steps, f);
    }

    /// Removes the member the path ends in from each object its parent
    /// leads to; returns the values removed (in document order).
    ///
    /// Precondition: the path ends in a field name.
    pub fn remove(&self, root: &mut Value) -> Vec<Value> {
        let name = self.last_field().expect("checked at load: ends in a field");
        let mut removed = Vec::new();
        walk(root, self.parent(), &mut |parent| {
            if let Value::Object(members) = parent {
                members.retain_mut(|(k, v)| {
                    if k == name {
                        removed.push(std::mem::replace(v, Value::Null));
                    }
                    k != name
                });
            }
        });
        removed
    }

    /// Sets the member the path ends in to `value` in each object its parent
    /// leads to, creating missing objects on the way where a field is
    /// missing (not through arrays). Returns whether anything was set.
    ///
    /// Precondition: the path ends in a field name.
    pub fn set(&self, root: &mut Value, value: &Value) -> bool {
        let name = self.last_field().expect("checked at load: ends in a field");
        let mut set = false;
        walk_creating(root, self.parent(), &mut |parent| {
            if let Value::Object(members) = parent {
                match members.iter_mut().find(|(k, _)| k == name) {
                    Some((_, v)) => *v = value.clone(),
                    None => members.push((name.to_owned(), value.clone())),
                }
                set = true;
            }
        });
        set
    }

    /// Renames the member the path ends in to `to` (in place) in each object
    /// its parent leads to; a member already named `to` is replaced.
    /// Returns whether anything was renamed.
    ///
    /// Precondition: the path ends in a field name.
    pub fn rename_in_place(&self, root: &mut Value, to: &str) -> bool {
        let name = self.last_field().expect("checked at load: ends in a field");
        let mut renamed = false;
        walk(root, self.parent(), &mut |parent| {
            if let Value::Object(members) = parent
                && let Some(at) = members.iter().position(|(k, _)| k == name)
            {
                members[at].0 = to.to_owned();
                let mut i = 0;
                members.retain(|(k, _)| {
                    let keep = i == at || k != to;
                    i += 1;
                    keep
                });
                renamed = true;
            }
        });
        renamed
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Field(name) if i == 0 => write!(f, "{name}")?,
                Step::Field(name) => write!(f, ".{name}")?,
                Step::Index(n) => write!(f, "[{n}]")?,
                Step::Each => f.write_str("[*]")?,
            }
        }
        Ok(())
    }
}

fn walk(v: &mut Value, steps: &[Step], f: &mut impl FnMut(&mut Value)) {
    let Some((step, rest)) = steps.split_first() else {
        return f(v);
    };
    match (step, v) {
        (Step::Field(name), Value::Object(members)) => {
            for (_, child) in members.iter_mut().filter(|(k, _)| k == name) {
                walk(child, rest, f);
            }
        }
        (Step::Index(n), Value::Array(items)) => {
            if let Some(child) = items.get_mut(*n) {
                walk(child, rest, f);
            }
        }
        (Step::Each, Value::Array(items)) => {
            for child in items {
                walk(child, rest, f);
            }
        }
        _ => {}
    }
}

/// Like [`walk`], adding an empty object for a missing field on the way.
fn walk_creating(v: &mut Value, steps: &[Step], f: &mut impl FnMut(&mut Value)) {
    let Some((step, rest)) = steps.split_first() else {
        return f(v);
    };
    if let (Step::Field(name), Value::Object(members)) = (step, &mut *v)
        && !members.iter().any(|(k, _)| k == name)
    {
        members.push((name.clone(), Value::Object(Vec::new())));
    }
    match (step, v) {
        (Step::Field(name), Value::Object(members)) => {
            for (_, child) in members.iter_mut().filter(|(k, _)| k == name) {
                walk_creating(child, rest, f);
            }
        }
        (Step::Index(n), Value::Array(items)) => {
            if let Some(child) = items.get_mut(*n) {
                walk_creating(child, rest, f);
            }
        }
        (Step::Each, Value::Array(items)) => {
            for child in items {
                walk_creating(child, rest, f);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(s: &str) -> Value {
        Value::parse(s.as_bytes()).unwrap()
    }
    fn text(v: &Value) -> String {
        String::from_utf8(v.to_bytes()).unwrap()
    }

    #[test]
    fn paths_parse_and_print_back() {
        for ok in [
            "a",
            "user.password",
            "items[*].card",
            "[*].id",
            "a[0][*].b",
            "x-y.$z",
        ] {
            assert_eq!(Path::parse(ok).unwrap().to_string(), ok);
        }
        assert_eq!(
            Path::parse("items[*].card").unwrap().steps,
            [
                Step::Field("items".into()),
                Step::Each,
                Step::Field("card".into())
            ]
        );
        for (bad, says) in [
            ("", "must not be empty"),
            ("a..b", "empty field name"),
            ("a.", "empty field name"),
            (".a", "empty field name"),
            ("a[x]", "`[x]` is neither"),
            ("a[]", "`[]` is neither"),
            ("a[*", "expected `[*]` or `[N]`"),
            ("a[*]b", "expected `[*]` or `[N]`"),
            ("a]", "`]` without `[`"),
            ("a[99999999999999999999999]", "index too large"),
        ] {
            let err = Path::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn remove_takes_the_field_from_every_match() {
        let mut v = json(r#"{"items":[{"card":"1","n":1},{"n":2},{"card":"3"}],"card":0}"#);
        let removed = Path::parse("items[*].card").unwrap().remove(&mut v);
        assert_eq!(removed.len(), 2);
        assert_eq!(text(&v), r#"{"items":[{"n":1},{"n":2},{}],"card":0}"#);
        assert!(Path::parse("nope.x").unwrap().remove(&mut v).is_empty());
    }

    #[test]
    fn set_creates_objects_on_the_way_but_not_array_elements() {
        let mut v = json(r#"{"a":1,"list":[{},{"t":1}]}"#);
        assert!(
            Path::parse("meta.source")
                .unwrap()
                .set(&mut v, &json(r#""gw""#))
        );
        assert!(Path::parse("list[*].t").unwrap().set(&mut v, &json("0")));
        assert!(!Path::parse("list[5].t").unwrap().set(&mut v, &json("0")));
        assert!(!Path::parse("a.b").unwrap().set(&mut v, &json("0")));
        assert_eq!(
            text(&v),
            r#"{"a":1,"list":[{"t":0},{"t":0}],"meta":{"source":"gw"}}"#
        );
    }

    #[test]
    fn rename_keeps_the_place_and_replaces_a_member_of_the_new_name() {
        let mut v = json(r#"{"u":[{"a":1,"b":2,"c":3},{"c":4,"a":5}]}"#);
        assert!(Path::parse("u[*].a").unwrap().rename_in_place(&mut v, "c"));
        assert_eq!(text(&v), r#"{"u":[{"c":1,"b":2},{"c":5}]}"#);
        assert!(!Path::parse("u[*].zz").unwrap().rename_in_place(&mut v, "y"));
    }

    #[test]
    fn for_each_visits_indexes_and_wildcards() {
        let mut v = json(r#"[{"id":1},{"id":2},{"x":3}]"#);
        let mut seen = 0;
        Path::parse("[*].id")
            .unwrap()
            .for_each(&mut v, &mut |_| seen += 1);
        assert_eq!(seen, 2);
        Path::parse("[1].id")
            .unwrap()
            .for_each(&mut v, &mut |v| *v = Value::Null);
        assert_eq!(text(&v), r#"[{"id":1},{"id":null},{"x":3}]"#);
    }
}
