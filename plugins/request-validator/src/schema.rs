//! The JSON Schema subset: which keywords, checked how.
//!
//! Supported: `type` (one name or a list of `object`, `array`, `string`,
//! `number`, `integer`, `boolean`, `null`), `properties`, `required`,
//! `additionalProperties` (a boolean), `items` (one schema for every
//! element), `enum`, `minLength`/`maxLength` (in characters),
//! `minimum`/`maximum` (inclusive), `minItems`/`maxItems`. Any other keyword
//! (`pattern`, `$ref`, `oneOf`, `format`...) is refused at load, so a schema
//! never silently checks less than it says. Like JSON Schema, a keyword
//! applies only to values of its kind (`minLength` to strings, ...).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// One schema node, as written in the route's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// `type`: the kinds of value allowed (any when absent).
    #[serde(rename = "type", default, deserialize_with = "types")]
    pub types: Vec<Kind>,
    /// `properties`: schemas of an object's members, by name.
    #[serde(default)]
    pub properties: BTreeMap<String, Schema>,
    /// `required`: members an object must have.
    #[serde(default)]
    pub required: Vec<String>,
    /// `additionalProperties`: `false` refuses members not in `properties`.
    #[serde(rename = "additionalProperties", default = "yes")]
    pub additional_properties: bool,
    /// `items`: the schema of every array element.
    #[serde(default)]
    pub items: Option<Box<Schema>>,
    /// `enum`: the only values allowed.
    #[serde(rename = "enum", default)]
    pub one_of: Option<Vec<Value>>,
    /// `minLength`: fewest characters in a string.
    #[serde(rename = "minLength", default)]
    pub min_length: Option<u64>,
    /// `maxLength`: most characters in a string.
    #[serde(rename = "maxLength", default)]
    pub max_length: Option<u64>,
    /// `minimum`: smallest number allowed.
    #[serde(default)]
    pub minimum: Option<f64>,
    /// `maximum`: largest number allowed.
    #[serde(default)]
    pub maximum: Option<f64>,
    /// `minItems`: fewest array elements.
    #[serde(rename = "minItems", default)]
    pub min_items: Option<u64>,
    /// `maxItems`: most array elements.
    #[serde(rename = "maxItems", default)]
    pub max_items: Option<u64>,
}

fn yes() -> bool {
    true
}

/// A JSON value kind, as `type` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `"object"`.
    Object,
    /// `"array"`.
    Array,
    /// `"string"`.
    String,
    /// `"number"` (integers too).
    Number,
    /// `"integer"` (a number without a fraction, `1.0` included).
    Integer,
    /// `"boolean"`.
    Boolean,
    /// `"null"`.
    Null,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Object => "an object",
            Kind::Array => "an array",
            Kind::String => "a string",
            Kind::Number => "a number",
            Kind::Integer => "an integer",
            Kind::Boolean => "a boolean",
            Kind::Null => "null",
        }
    }

    fn matches(self, v: &Value) -> bool {
        match (self, v) {
            (Kind::Object, Value::Object(_))
            | (Kind::Array, Value::Array(_))
            | (Kind::String, Value::String(_))
            | (Kind::Number, Value::Number(_))
            | (Kind::Boolean, Value::Bool(_))
            | (Kind::Null, Value::Null) => true,
            (Kind::Integer, Value::Number(n)) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        }
    }
}

/// `type = "string"` or `type = ["string", "null"]`.
fn types<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Kind>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Kind),
        Many(Vec<Kind>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(k)) => Ok(vec![k]),
        Ok(OneOrMany::Many(ks)) if !ks.is_empty() => Ok(ks),
        Ok(OneOrMany::Many(_)) => Err(serde::de::Error::custom("must name at least one type")),
        Err(_) => Err(serde::de::Error::custom(
            "expected one of \"object\", \"array\", \"string\", \"number\", \"integer\", \"boolean\", \"null\" or a list of them",
        )),
    }
}

impl Schema {
    /// Checks the schema's own consistency; errors name the keyword's path
    /// (`at` is this node's, e.g. `schema.properties.age`).
    pub fn check(&self, at: &str) -> Result<(), String> {
        let range = |lo: Option<f64>, hi: Option<f64>, what: &str| match (lo, hi) {
            (Some(lo), Some(hi)) if lo > hi => {
                Err(format!("{at}: {what} is greater than its maximum"))
            }
            _ => Ok(()),
        };
        let as_f = |v: Option<u64>| v.map(|v| v as f64);
        range(as_f(self.min_length), as_f(self.max_length), "minLength")?;
        range(as_f(self.min_items), as_f(self.max_items), "minItems")?;
        range(self.minimum, self.maximum, "minimum")?;
        if self.one_of.as_ref().is_some_and(Vec::is_empty) {
            return Err(format!("{at}.enum: must list at least one value"));
        }
        for (i, name) in self.required.iter().enumerate() {
            if self.required[..i].contains(name) {
                return Err(format!("{at}.required[{i}]: `{name}` is listed twice"));
            }
            if !self.additional_properties && !self.properties.contains_key(name) {
                return Err(format!(
                    "{at}.required[{i}]: `{name}` is not in `properties` and additionalProperties is false: no body could pass"
                ));
            }
        }
        for (name, schema) in &self.properties {
            schema.check(&format!("{at}.properties.{name}"))?;
        }
        if let Some(items) = &self.items {
            items.check(&format!("{at}.items"))?;
        }
        Ok(())
    }

    /// Checks `v` (found at `field`), adding what is wrong to `errors`
    /// until it holds `max` of them.
    pub fn validate(&self, v: &Value, field: &str, errors: &mut Vec<FieldError>, max: usize) {
        let mut fail = |field: &str, message: String| {
            if errors.len() < max {
                errors.push(FieldError {
                    field: field.to_owned(),
                    message,
                });
            }
        };
        if !self.types.is_empty() && !self.types.iter().any(|k| k.matches(v)) {
            let names: Vec<&str> = self.types.iter().map(|k| k.name()).collect();
            return fail(field, format!("must be {}", names.join(" or ")));
        }
        if let Some(allowed) = &self.one_of
            && !allowed.contains(v)
        {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return fail(field, format!("must be one of {}", list.join(", ")));
        }
        match v {
            Value::String(s) => {
                let len = s.chars().count() as u64;
                if let Some(min) = self.min_length.filter(|&m| len < m) {
                    fail(field, format!("must be at least {min} characters long"));
                }
                if let Some(max) = self.max_length.filter(|&m| len > m) {
                    fail(field, format!("must be at most {max} characters long"));
                }
            }
            Value::Number(n) => {
                let n = n.as_f64().unwrap_or(f64::NAN);
                if let Some(min) = self.minimum.filter(|&m| n < m) {
                    fail(field, format!("must be at least {min}"));
                }
                if let Some(max) = self.maximum.filter(|&m| n > m) {
                    fail(field, format!("must be at most {max}"));
                }
            }
            Value::Array(items) => {
                let len = items.len() as u64;
                if let Some(min) = self.min_items.filter(|&m| len < m) {
                    fail(field, format!("must have at least {min} items"));
                }
                if let Some(max) = self.max_items.filter(|&m| len > m) {
                    fail(field, format!("must have at most {max} items"));
                }
                if let Some(schema) = &self.items {
                    for (i, item) in items.iter().enumerate() {
                        schema.validate(item, &format!("{field}[{i}]"), errors, max);
                    }
                }
            }
            Value::Object(members) => self.validate_object(members, field, errors, max),
            Value::Null | Value::Bool(_) => {}
        }
    }

    fn validate_object(
        &self,
        members: &serde_json::Map<String, Value>,
        field: &str,
        errors: &mut Vec<FieldError>,
        max: usize,
    ) {
        let child = |name: &str| {
            if field.is_empty() {
                name.to_owned()
            } else {
                format!("{field}.{name}")
            }
        };
        for name in &self.required {
            if !members.contains_key(name) && errors.len() < max {
                errors.push(FieldError {
                    field: child(name),
                    message: "is required".into(),
                });
            }
        }
        for (name, value) in members {
            match self.properties.get(name) {
                Some(schema) => schema.validate(value, &child(name), errors, max),
                None if !self.additional_properties && errors.len() < max => {
                    errors.push(FieldError {
                        field: child(name),
                        message: "is not allowed".into(),
                    });
                }
                None => {}
            }
        }
    }
}

/// One thing wrong with a body: where, and what.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    /// `user.age`, `items[2].sku`; `""` for the body itself.
    pub field: String,
    /// What is wrong, e.g. `must be at least 18`.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema(v: Value) -> Schema {
        let s: Schema = serde_json::from_value(v).unwrap();
        s.check("schema").unwrap();
        s
    }
    fn errors(s: &Schema, v: Value) -> Vec<(String, String)> {
        let mut out = Vec::new();
        s.validate(&v, "", &mut out, 20);
        out.into_iter().map(|e| (e.field, e.message)).collect()
    }
    fn e(field: &str, message: &str) -> (String, String) {
        (field.into(), message.into())
    }

    fn user_schema() -> Schema {
        schema(json!({
            "type": "object",
            "required": ["user", "items"],
            "additionalProperties": false,
            "properties": {
                "user": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 5},
                        "age": {"type": "integer", "minimum": 18, "maximum": 150},
                        "role": {"enum": ["admin", "user"]},
                        "nick": {"type": ["string", "null"]}
                    }
                },
                "items": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["sku"]}}
            }
        }))
    }

    #[test]
    fn a_valid_body_has_no_errors() {
        let s = user_schema();
        let ok = json!({"user": {"name": "Ann", "age": 30.0, "role": "user", "nick": null, "x": 1}, "items": [{"sku": "a"}]});
        assert_eq!(errors(&s, ok), []);
    }

    #[test]
    fn every_error_names_its_field() {
        let s = user_schema();
        let bad = json!({"user": {"name": "Annabel", "age": 12.5, "role": "root", "nick": 3}, "items": [{"sku": 1}, {}], "extra": true});
        assert_eq!(
            errors(&s, bad),
            [
                e("extra", "is not allowed"),
                e("items[1].sku", "is required"),
                e("user.age", "must be an integer"),
                e("user.name", "must be at most 5 characters long"),
                e("user.nick", "must be a string or null"),
                e("user.role", r#"must be one of "admin", "user""#),
            ]
        );
        assert_eq!(
            errors(&s, json!({"user": {"name": "é", "age": 17}, "items": []})),
            [
                e("items", "must have at least 1 items"),
                e("user.age", "must be at least 18")
            ]
        );
        assert_eq!(errors(&s, json!([1])), [e("", "must be an object")]);
        assert_eq!(
            errors(&s, json!({})),
            [e("user", "is required"), e("items", "is required")]
        );
    }

    #[test]
    fn errors_stop_at_the_maximum() {
        let s = schema(json!({"items": {"type": "string"}}));
        let mut out = Vec::new();
        s.validate(&json!([1, 2, 3, 4]), "", &mut out, 2);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_schema_that_cannot_work_is_refused_naming_the_keyword() {
        let err = |v: Value| match serde_json::from_value::<Schema>(v) {
            Ok(s) => s.check("schema").unwrap_err(),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            err(json!({"properties": {"a": {"minLength": 3, "maxLength": 2}}})),
            "schema.properties.a: minLength is greater than its maximum"
        );
        assert_eq!(
            err(json!({"enum": []})),
            "schema.enum: must list at least one value"
        );
        assert!(
            err(json!({"required": ["a"], "additionalProperties": false}))
                .starts_with("schema.required[0]: `a` is not in `properties`")
        );
        assert!(err(json!({"pattern": "^a"})).contains("unknown field `pattern`"));
        assert!(err(json!({"type": "text"})).contains("expected one of \"object\""));
        assert!(err(json!({"type": []})).contains("at least one type"));
    }
}
