//! Generation parameters, and how an attempt changed them.

use crate::error::ValidationError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How deep a parameter value may nest. Generation parameters are flat in practice; the bound keeps
/// hostile input from reaching stores, logs and backends that recurse over it.
pub const MAX_PARAMS_DEPTH: usize = 32;

/// Nesting depth of a JSON value: 1 for a scalar, one more per array or object level.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 1,
    }
}

/// Generation parameters: a JSON object with at least an integer `seed`; other entries are kept
/// as they are, numeric ones named in the policy's `vary` are jittered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Params(pub Map<String, Value>);

impl Params {
    /// Validate: a JSON object whose `seed` is a non-negative integer.
    pub fn parse(value: &Value) -> Result<Self, ValidationError> {
        let Value::Object(map) = value else {
            return Err(ValidationError::single("params", "must be a JSON object"));
        };
        match map.get("seed") {
            None => return Err(ValidationError::single("params.seed", "is required")),
            Some(v) if v.as_u64().is_none() => {
                return Err(ValidationError::single(
                    "params.seed",
                    format!("must be a non-negative integer below 2^64, got {v}"),
                ));
            }
            Some(_) => {}
        }
        for (name, v) in map {
            if depth(v) > MAX_PARAMS_DEPTH {
                return Err(ValidationError::single(
                    format!("params.{name}"),
                    format!("is nested deeper than {MAX_PARAMS_DEPTH} levels"),
                ));
            }
        }
        Ok(Self(map.clone()))
    }

    /// The `seed` entry (0 if absent, which [`Params::parse`] rules out).
    pub fn seed(&self) -> u64 {
        self.0.get("seed").and_then(Value::as_u64).unwrap_or(0)
    }

    /// A numeric entry.
    pub fn number(&self, name: &str) -> Option<f64> {
        self.0.get(name).and_then(Value::as_f64)
    }
}

/// Described by hand: the type is an open JSON object, and a generated client should still know
/// about the one entry every request needs (`seed`) while passing the others through.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Params {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            AdditionalProperties, KnownFormat, ObjectBuilder, SchemaFormat, Type,
        };
        let seed = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .description(Some(
                "Seed of the generation; attempts derive their own seeds from it.",
            ));
        ObjectBuilder::new()
            .description(Some(
                "Generation parameters: an integer `seed`, plus any other entries, kept as they \
                 are; numeric ones named in the policy's `vary` are jittered.",
            ))
            .property("seed", seed)
            .required("seed")
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Params {}

/// One jittered parameter: its value in the failed generation and in this attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParamChange {
    pub param: String,
    pub original: f64,
    pub value: f64,
}
