//! Identifier newtypes: parsed once at the edge, never passed around as raw strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

/// Why an identifier was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// A job id must be a UUID in its hyphenated form.
    #[error("must be a UUID (e.g. 0b3e7c2a-5f1d-4c8e-9a44-2f6d3b1e9c70)")]
    JobId,
    /// Agent names are registry keys: lowercase letters, digits and `_`.
    #[error("must be 1-64 characters of a-z, 0-9 and _, starting with a letter")]
    AgentName,
    /// Job names become Ruby constants on the Rails side.
    #[error("must be a Ruby constant name such as ReportCompileJob or Reports::CompileJob")]
    JobName,
}

/// A job's id, chosen by Rails (a UUID) and used as the folder name under `shared_root`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    /// A fresh random id (Rails makes the real ones; this is for checks and tests).
    pub fn generate() -> Self {
        Self(Uuid::new_v4())
    }

    /// The UUID behind the id.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl FromStr for JobId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Only the canonical hyphenated form: it is also a directory name, so one spelling per id.
        if s.len() != 36 {
            return Err(IdError::JobId);
        }
        Uuid::parse_str(s).map(JobId).map_err(|_| IdError::JobId)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Declares a validated string newtype with `FromStr`, `Display`, serde and `as_str`.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $err:expr, $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let valid: fn(&str) -> bool = $valid;
                if valid(s) { Ok(Self(s.to_owned())) } else { Err($err) }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// The name of an agent in the registry (`[agents.NAME]`).
    AgentName,
    IdError::AgentName,
    |s| {
        (1..=64).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }
);

string_id!(
    /// The Rails handler class that receives `JobName.completed(...)`.
    JobName,
    IdError::JobName,
    |s| {
        s.len() <= 200
            && s.split("::").all(|part| {
                part.starts_with(|c: char| c.is_ascii_uppercase())
                    && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            })
    }
);

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The id of one callback delivery: the JWT `jti` and the `webhook-id`, fixed across retries.
/// Sortable (UUIDv7) with a readable prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeliveryId(String);

impl DeliveryId {
    /// A fresh, time-ordered delivery id.
    pub fn generate() -> Self {
        Self(format!("dlv_{}", Uuid::now_v7().simple()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for DeliveryId {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_accepts_only_hyphenated_uuids() {
        assert!(
            "0b3e7c2a-5f1d-4c8e-9a44-2f6d3b1e9c70"
                .parse::<JobId>()
                .is_ok()
        );
        assert!("0b3e7c2a5f1d4c8e9a442f6d3b1e9c70".parse::<JobId>().is_err());
        assert!("../etc".parse::<JobId>().is_err());
    }

    #[test]
    fn agent_names_are_lowercase_registry_keys() {
        assert!("summarizer_v2".parse::<AgentName>().is_ok());
        assert!("Summarizer".parse::<AgentName>().is_err());
        assert!("".parse::<AgentName>().is_err());
        assert!("a/b".parse::<AgentName>().is_err());
    }

    #[test]
    fn job_names_are_ruby_constants() {
        assert!("ReportCompileJob".parse::<JobName>().is_ok());
        assert!("Reports::CompileJob".parse::<JobName>().is_ok());
        assert!("system('rm')".parse::<JobName>().is_err());
        assert!("reportJob".parse::<JobName>().is_err());
        assert!("Reports::".parse::<JobName>().is_err());
    }

    #[test]
    fn delivery_ids_are_prefixed_and_unique() {
        let (a, b) = (DeliveryId::generate(), DeliveryId::generate());
        assert!(a.as_str().starts_with("dlv_"));
        assert_ne!(a, b);
    }
}

/// A string schema for the OpenAPI document: ids are strings with a pattern or format.
fn string_schema(
    pattern: &str,
    max_length: Option<usize>,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .max_length(max_length)
        .into()
}

macro_rules! string_schema {
    ($name:ident, $pattern:expr) => {
        string_schema!($name, $pattern, None);
    };
    ($name:ident, $pattern:expr, $max:expr) => {
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                string_schema($pattern, $max)
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}

string_schema!(
    JobId,
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
);
string_schema!(AgentName, "^[a-z][a-z0-9_]{0,63}$");
string_schema!(
    JobName,
    "^[A-Z][A-Za-z0-9_]*(::[A-Z][A-Za-z0-9_]*)*$",
    Some(200)
);
string_schema!(DeliveryId, "^dlv_[0-9a-f]{32}$");
