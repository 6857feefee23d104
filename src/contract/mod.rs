//! The contract with Rails: identifiers, the job lifecycle, wire types and the versioned JSON
//! Schemas that describe them. Pure: no IO here, so every rule is cheap to test.

mod ids;
pub mod schema;
mod state;
pub mod trace;
mod wire;

pub use ids::{AgentName, DeliveryId, IdError, JobId, JobName};
pub use schema::{FieldError, SchemaKind};
pub use state::{JobState, Priority, Timestamp, UnknownState};
pub use wire::*;

use serde_json::Value;

/// Why a manifest was refused: every failing field, with its pointer.
#[derive(Debug, thiserror::Error)]
#[error("manifest is invalid")]
pub struct InvalidManifest {
    /// The schema version the manifest was checked against, if it named a known one.
    pub version: Option<u32>,
    /// Every failing field.
    pub errors: Vec<FieldError>,
}

/// Parses and validates a manifest: its `schema_version` picks the schema.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, InvalidManifest> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| InvalidManifest {
        version: None,
        errors: vec![FieldError::new("", format!("is not valid JSON: {e}"))],
    })?;
    let version = manifest_version(&doc)?;
    let invalid = |errors| InvalidManifest {
        version: Some(version),
        errors,
    };
    schema::validate(SchemaKind::Manifest, version, &doc).map_err(invalid)?;
    let manifest = match version {
        1 => from_value_at::<ManifestV1>(doc).map(|m| m.into_manifest(Inputs::Paths)),
        2 => from_value_at::<ManifestV2>(doc).map(|m| m.into_manifest(Inputs::Files)),
        other => Err(schema::unknown_version(other)),
    };
    manifest.map_err(|e| invalid(vec![e]))
}

fn manifest_version(doc: &Value) -> Result<u32, InvalidManifest> {
    let fail = |detail: String| InvalidManifest {
        version: None,
        errors: vec![FieldError::new("/schema_version", detail)],
    };
    match doc.get("schema_version") {
        None => Err(fail("is required".into())),
        Some(v) => {
            let n = v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| fail(format!("must be a positive integer, got {v}")))?;
            if schema::KNOWN_VERSIONS.contains(&n) {
                Ok(n)
            } else {
                Err(InvalidManifest {
                    version: None,
                    errors: vec![schema::unknown_version(n)],
                })
            }
        }
    }
}

/// Deserializes a JSON value, reporting a failure as a field error at the offending pointer.
pub fn from_value_at<T: serde::de::DeserializeOwned>(doc: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let pointer = e
            .path()
            .iter()
            .map(|seg| format!("/{seg}"))
            .collect::<String>();
        FieldError::new(pointer, e.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests;
