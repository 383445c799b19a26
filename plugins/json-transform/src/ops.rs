//! The edits of one body (`[request]` or `[response]`), parsed at load and
//! applied in a fixed order: `remove`, `rename`, `set`, `redact`.

use serde::Deserialize;

use crate::path::Path;
use crate::value::Value;

/// The `[request]` or `[response]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// `remove = ["user.password"]`: fields to delete.
    #[serde(default)]
    pub remove: Vec<String>,
    /// `rename = [{ from = "user.name", to = "user.full_name" }]`.
    #[serde(default)]
    pub rename: Vec<RenameConfig>,
    /// `set = [{ path = "meta.source", value = "gateway" }]`: any JSON value.
    #[serde(default)]
    pub set: Vec<SetConfig>,
    /// `redact = ["items[*].card"]`: values replaced by the mask.
    #[serde(default)]
    pub redact: Vec<String>,
}

/// One `rename` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameConfig {
    /// `from`: the field's path.
    pub from: String,
    /// `to`: its new path.
    pub to: String,
}

/// One `set` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// `path`: where to set.
    pub path: String,
    /// `value`: the JSON value (a TOML string, number, bool, array or table).
    pub value: Value,
}

/// Where a renamed field goes.
#[derive(Debug)]
enum Target {
    /// A new name in the same object (keeps its place).
    Sibling(String),
    /// Elsewhere in the document (only for paths without `[*]`).
    Move(Path),
}

/// The edits, validated.
#[derive(Debug)]
pub struct Ops {
    remove: Vec<Path>,
    rename: Vec<(Path, Target)>,
    set: Vec<(Path, Value)>,
    redact: Vec<Path>,
}

/// Parses a path that must end in a field name; errors name `field`.
fn field_path(field: &str, text: &str) -> Result<Path, String> {
    let path = Path::parse(text).map_err(|e| format!("{field}: {e}"))?;
    if path.last_field().is_none() {
        return Err(format!("{field}: `{text}` must end in a field name"));
    }
    Ok(path)
}

impl Ops {
    /// Validates the table at `at` (`request` or `response`).
    pub fn from_config(c: OpsConfig, at: &str) -> Result<Ops, String> {
        if c.remove.is_empty() && c.rename.is_empty() && c.set.is_empty() && c.redact.is_empty() {
            return Err(format!(
                "{at}: give at least one of remove, rename, set, redact"
            ));
        }
        let remove = c
            .remove
            .iter()
            .enumerate()
            .map(|(i, p)| field_path(&format!("{at}.remove[{i}]"), p))
            .collect::<Result<_, _>>()?;
        let rename = c
            .rename
            .iter()
            .enumerate()
            .map(|(i, r)| rename(&format!("{at}.rename[{i}]"), r))
            .collect::<Result<_, _>>()?;
        let set = c
            .set
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                Ok((
                    field_path(&format!("{at}.set[{i}].path"), &s.path)?,
                    s.value,
                ))
            })
            .collect::<Result<_, String>>()?;
        let redact = c
            .redact
            .iter()
            .enumerate()
            .map(|(i, p)| Path::parse(p).map_err(|e| format!("{at}.redact[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Ops {
            remove,
            rename,
            set,
            redact,
        })
    }

    /// Applies every edit to `doc`; returns whether anything changed.
    pub fn apply(&self, doc: &mut Value, mask: &Value) -> bool {
        let mut changed = false;
        for path in &self.remove {
            changed |= !path.remove(doc).is_empty();
        }
        for (from, to) in &self.rename {
            changed |= match to {
                Target::Sibling(name) => from.rename_in_place(doc, name),
                Target::Move(to) => match from.remove(doc).pop() {
                    Some(v) => {
                        to.set(doc, &v);
                        true
                    }
                    None => false,
                },
            };
        }
        for (path, value) in &self.set {
            changed |= path.set(doc, value);
        }
        for path in &self.redact {
            path.for_each(doc, &mut |v| {
                *v = mask.clone();
                changed = true;
            });
        }
        changed
    }
}

fn rename(at: &str, r: &RenameConfig) -> Result<(Path, Target), String> {
    let from = field_path(&format!("{at}.from"), &r.from)?;
    let to = field_path(&format!("{at}.to"), &r.to)?;
    if from == to {
        return Err(format!("{at}.to: same as `from`"));
    }
    let target = if from.same_parent(&to) {
        Target::Sibling(to.last_field().unwrap_or_default().to_owned())
    } else if from.has_wildcard() || to.has_wildcard() {
        return Err(format!(
            "{at}.to: with `[*]`, a field can only be renamed within its object \
             (`to` must differ from `from` in its last name only)"
        ));
    } else {
        Target::Move(to)
    };
    Ok((from, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(config: &str) -> Result<Ops, String> {
        Ops::from_config(serde_json::from_str(config).unwrap(), "request")
    }
    fn run(ops: &Ops, doc: &str) -> (bool, String) {
        let mut v = Value::parse(doc.as_bytes()).unwrap();
        let changed = ops.apply(&mut v, &Value::String("***".into()));
        (changed, String::from_utf8(v.to_bytes()).unwrap())
    }

    #[test]
    fn edits_apply_in_order_remove_rename_set_redact() {
        let o = ops(r#"{
            "remove": ["user.password"],
            "rename": [{"from": "user.name", "to": "user.full_name"}, {"from": "id", "to": "meta.id"}],
            "set": [{"path": "meta.source", "value": {"via": ["gw", 1]}}],
            "redact": ["items[*].card", "user.full_name"]
        }"#)
        .unwrap();
        let (changed, out) = run(
            &o,
            r#"{"id":7,"user":{"name":"Ann","password":"p","age":30},"items":[{"card":"4111"},{"card":4222,"n":1}]}"#,
        );
        assert!(changed);
        assert_eq!(
            out,
            r#"{"user":{"full_name":"***","age":30},"items":[{"card":"***"},{"card":"***","n":1}],"meta":{"id":7,"source":{"via":["gw",1]}}}"#
        );
        let (changed, _) = run(
            &ops(r#"{"remove": ["x"], "redact": ["y"]}"#).unwrap(),
            "[1]",
        );
        assert!(!changed);
    }

    #[test]
    fn bad_paths_and_renames_are_config_errors() {
        let err = |c: &str| ops(c).unwrap_err();
        assert_eq!(
            err("{}"),
            "request: give at least one of remove, rename, set, redact"
        );
        assert_eq!(
            err(r#"{"remove": ["items[0]"]}"#),
            "request.remove[0]: `items[0]` must end in a field name"
        );
        assert_eq!(
            err(r#"{"set": [{"path": "a[*", "value": 1}]}"#),
            "request.set[0].path: `a[*`: expected `[*]` or `[N]` after a field name in `a[*`"
        );
        assert!(
            err(r#"{"rename": [{"from": "items[*].a", "to": "b"}]}"#)
                .starts_with("request.rename[0].to: with `[*]`")
        );
        assert_eq!(
            err(r#"{"rename": [{"from": "a", "to": "a"}]}"#),
            "request.rename[0].to: same as `from`"
        );
        assert!(ops(r#"{"redact": ["items[*]", "[0]"]}"#).is_ok());
    }
}
