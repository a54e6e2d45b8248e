//! Identifier newtypes. Each is parsed once at the edge and can then be trusted.

use crate::error::ValidationError;
use serde::{Deserialize, Serialize};
use std::fmt;

const MAX_LEN: usize = 128;

fn parse_id(field: &str, raw: &str) -> Result<String, ValidationError> {
    if raw.is_empty() {
        return Err(ValidationError::single(field, "must not be empty"));
    }
    if raw.len() > MAX_LEN {
        return Err(ValidationError::single(
            field,
            format!("must be at most {MAX_LEN} characters"),
        ));
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(ValidationError::single(
            field,
            format!("contains {bad:?}; allowed are ASCII letters, digits and - _ . :"),
        ));
    }
    // `.` and `..` are path segments: a link to `/ui/segments/..` resolves to `/ui/`, and a
    // folder named after the id would be its parent.
    if raw.chars().all(|c| c == '.') {
        return Err(ValidationError::single(
            field,
            format!("{raw:?} is not an id: it must have a character other than ."),
        ));
    }
    Ok(raw.to_owned())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        pub struct $name(String);

        impl $name {
            /// Parse and validate: 1 to 128 characters of ASCII letters, digits and `- _ . :`.
            pub fn parse(raw: impl AsRef<str>) -> Result<Self, ValidationError> {
                parse_id($field, raw.as_ref()).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = ValidationError;
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                Self::parse(raw)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(raw)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A segment (video/image clip or text chapter) of a project.
    SegmentId,
    "segment_id"
);
id_type!(
    /// A project, the unit that owns a GPU budget.
    ProjectId,
    "project_id"
);
id_type!(
    /// A scene type (`dialogue`, `action`, `chapter`...), the unit that owns a retry policy.
    SceneType,
    "scene_type"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_dot_dot_are_not_ids() {
        for raw in [".", "..", "..."] {
            assert_eq!(
                SegmentId::parse(raw).unwrap_err().first_field(),
                "segment_id",
                "{raw}"
            );
        }
        assert!(SegmentId::parse("..a").is_ok());
    }

    #[test]
    fn an_ordinary_segment_id_is_accepted() {
        assert_eq!(
            SegmentId::parse("ep1:seg-5_a.b").unwrap().as_str(),
            "ep1:seg-5_a.b"
        );
    }

    #[test]
    fn an_empty_id_is_rejected_naming_the_field() {
        let err = ProjectId::parse("").unwrap_err();
        assert_eq!(err.first_field(), "project_id");
    }

    #[test]
    fn an_id_with_spaces_or_slashes_is_rejected() {
        assert!(SceneType::parse("two words").is_err());
        assert!(SegmentId::parse("a/b").is_err());
    }

    #[test]
    fn an_overlong_id_is_rejected() {
        assert!(SegmentId::parse("x".repeat(129)).is_err());
        assert!(SegmentId::parse("x".repeat(128)).is_ok());
    }
}
