//! JSON parsing that refuses an object with the same key twice.
//!
//! serde_json keeps the last of duplicate keys, so `{"reason": "a", "reason": "b"}` would record
//! `b` while a proxy, a log or a reviewer reading the raw body sees `a`: two readers of one
//! request disagreeing is how checks are smuggled past. RFC 8259 leaves duplicates to the
//! implementation; the API refuses them, naming the key's path, so every reader agrees.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// What a field error says of a duplicate key.
pub(crate) const DUPLICATE: &str = "appears more than once in its object; send each key once";

/// Why a body is not a JSON value the API accepts.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JsonError {
    /// The same key twice in one object; `path` is the key's dotted path (`policy.vary.seed`,
    /// `items[2].name`), as field errors name fields.
    #[error("{path} {DUPLICATE}")]
    DuplicateKey { path: String },
    /// Not JSON at all (syntax, trailing characters, nesting deeper than serde_json allows).
    #[error("not valid JSON: {0}")]
    Syntax(serde_json::Error),
}

/// Parse `bytes` as one JSON value, refusing duplicate keys at any depth.
pub(crate) fn parse_unique(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Unique {
        path: String::new(),
        duplicate: &mut found,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match (parsed, found) {
        // The visitor's error aborts the parse; its path was kept aside, un-prefixed by serde_json
        // with a line and column.
        (_, Some(path)) => Err(JsonError::DuplicateKey { path }),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(JsonError::Syntax(e)),
    }
}

/// A value at `path`, recording the first duplicate key's path in `duplicate`.
struct Unique<'a> {
    path: String,
    duplicate: &'a mut Option<String>,
}

impl Unique<'_> {
    fn child(&mut self, segment: String) -> Unique<'_> {
        Unique {
            path: segment,
            duplicate: &mut *self.duplicate,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Unique<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, items.len());
            match seq.next_element_seed(self.child(path))? {
                Some(v) => items.push(v),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if object.contains_key(&key) {
                *self.duplicate = Some(path);
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(self.child(path))?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn duplicate(text: &str) -> Option<String> {
        match parse_unique(text.as_bytes()) {
            Err(JsonError::DuplicateKey { path }) => Some(path),
            _ => None,
        }
    }

    #[test]
    fn a_key_sent_twice_is_refused_naming_its_path_at_any_depth() {
        assert_eq!(
            duplicate(r#"{"reason": "a", "reason": "b"}"#).as_deref(),
            Some("reason")
        );
        assert_eq!(
            duplicate(r#"{"policy": {"vary": {"seed": 1, "seed": 2}}}"#).as_deref(),
            Some("policy.vary.seed")
        );
        assert_eq!(
            duplicate(r#"{"items": [{"a": 1}, {"b": 1, "b": 1}]}"#).as_deref(),
            Some("items[1].b")
        );
        assert_eq!(
            duplicate(r#"[[{"x": 0, "x": 0}]]"#).as_deref(),
            Some("[0][0].x")
        );
    }

    #[test]
    fn json_without_duplicates_parses_as_serde_json_would() {
        for text in [
            r#"{"a": 1, "b": {"a": 1}, "c": [{"a": 1}, {"a": 2}]}"#,
            r#"{"limit_ms": 9223372036854775808, "f": -1.5, "n": null, "t": true}"#,
            r#"[1, "two", {"three": 3}]"#,
            r#""just a string""#,
        ] {
            let expected: Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse_unique(text.as_bytes()).unwrap(), expected, "{text}");
        }
        assert_eq!(parse_unique(b"{}").unwrap(), json!({}));
    }

    #[test]
    fn malformed_json_is_a_syntax_error_not_a_duplicate() {
        for text in ["{not json", r#"{"a": 1} trailing"#, r#"{"a": 1, "b""#] {
            assert!(
                matches!(parse_unique(text.as_bytes()), Err(JsonError::Syntax(_))),
                "{text}"
            );
        }
    }
}
