//! The versioned JSON Schemas of `schemas/`, embedded at build time and compiled once.

use std::sync::LazyLock;

use jsonschema::error::ValidationErrorKind;
use serde_json::Value;

/// Which document a schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchemaKind {
    /// `input/manifest.json`.
    Manifest,
    /// `POST /agents/trigger` body.
    TriggerRequest,
    /// Progress callback body.
    ProgressCallback,
    /// Completion callback body.
    CompletionCallback,
    /// `output/summary.json`.
    Summary,
    /// `output/metrics.json`.
    Metrics,
    /// `GET /jobs/{id}` and `output/status.json`.
    Status,
    /// One event of `GET /jobs/{id}/events` and `GET /jobs/{id}/watch`.
    JobEvent,
}

impl SchemaKind {
    /// Every kind, in the order of `schemas/v1/`.
    pub const ALL: [SchemaKind; 8] = [
        Self::Manifest,
        Self::TriggerRequest,
        Self::ProgressCallback,
        Self::CompletionCallback,
        Self::Summary,
        Self::Metrics,
        Self::Status,
        Self::JobEvent,
    ];

    /// The file name under `schemas/v<N>/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Manifest => "manifest.json",
            Self::TriggerRequest => "trigger-request.json",
            Self::ProgressCallback => "progress-callback.json",
            Self::CompletionCallback => "completion-callback.json",
            Self::Summary => "summary.json",
            Self::Metrics => "metrics.json",
            Self::Status => "status.json",
            Self::JobEvent => "job-event.json",
        }
    }
}

/// One failing field: a JSON pointer into the document and the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FieldError {
    /// JSON pointer (RFC 6901) to the offending value; `""` is the whole document.
    pub pointer: String,
    /// What is wrong with it.
    pub detail: String,
}

impl FieldError {
    /// A field error at `pointer`.
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

/// Manifest schema versions this build accepts, oldest first. Every other document has one
/// version (1) so far; see `schemas/CHANGELOG.md` for the policy.
pub const KNOWN_VERSIONS: [u32; 2] = [1, 2];

struct Compiled {
    version: u32,
    kind: SchemaKind,
    validator: jsonschema::Validator,
}

static EMBEDDED: [(u32, SchemaKind, &str); 9] = [
    (
        1,
        SchemaKind::Manifest,
        include_str!("../../schemas/v1/manifest.json"),
    ),
    (
        2,
        SchemaKind::Manifest,
        include_str!("../../schemas/v2/manifest.json"),
    ),
    (
        1,
        SchemaKind::TriggerRequest,
        include_str!("../../schemas/v1/trigger-request.json"),
    ),
    (
        1,
        SchemaKind::ProgressCallback,
        include_str!("../../schemas/v1/progress-callback.json"),
    ),
    (
        1,
        SchemaKind::CompletionCallback,
        include_str!("../../schemas/v1/completion-callback.json"),
    ),
    (
        1,
        SchemaKind::Summary,
        include_str!("../../schemas/v1/summary.json"),
    ),
    (
        1,
        SchemaKind::Metrics,
        include_str!("../../schemas/v1/metrics.json"),
    ),
    (
        1,
        SchemaKind::Status,
        include_str!("../../schemas/v1/status.json"),
    ),
    (
        1,
        SchemaKind::JobEvent,
        include_str!("../../schemas/v1/job-event.json"),
    ),
];

static COMPILED: LazyLock<Vec<Compiled>> = LazyLock::new(|| {
    EMBEDDED
        .iter()
        .map(|(version, kind, text)| Compiled {
            version: *version,
            kind: *kind,
            // The schemas are part of the binary and covered by tests: a broken one is a build bug.
            validator: compile(text).expect("embedded schema compiles"),
        })
        .collect()
});

/// The raw text of an embedded schema, if this build knows that version of it.
pub fn schema_text(kind: SchemaKind, version: u32) -> Option<&'static str> {
    EMBEDDED
        .iter()
        .find(|(v, k, _)| *k == kind && *v == version)
        .map(|(_, _, text)| *text)
}

/// Every embedded schema as `(version, kind, text)`.
pub fn embedded() -> impl Iterator<Item = (u32, SchemaKind, &'static str)> {
    EMBEDDED.iter().copied()
}

/// Compiles a JSON Schema (draft 2020-12 unless it says otherwise).
pub fn compile(text: &str) -> Result<jsonschema::Validator, String> {
    let schema: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    compile_value(&schema)
}

/// Compiles an already-parsed JSON Schema.
pub fn compile_value(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(schema)
        .map_err(|e| e.to_string())
}

/// Validates `doc` as `kind` at schema `version`; every failing field is reported.
pub fn validate(kind: SchemaKind, version: u32, doc: &Value) -> Result<(), Vec<FieldError>> {
    let compiled = COMPILED
        .iter()
        .find(|c| c.kind == kind && c.version == version)
        .ok_or_else(|| vec![unknown_version(version)])?;
    check(&compiled.validator, doc)
}

/// Runs a compiled validator and turns its errors into field errors.
pub fn check(validator: &jsonschema::Validator, doc: &Value) -> Result<(), Vec<FieldError>> {
    let errors: Vec<FieldError> = validator
        .iter_errors(doc)
        .map(|e| field_error(&e))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// The error for a `schema_version` this build does not know.
pub fn unknown_version(version: u32) -> FieldError {
    let known: Vec<String> = KNOWN_VERSIONS.iter().map(u32::to_string).collect();
    FieldError::new(
        "/schema_version",
        format!(
            "unknown schema version {version}; known versions: {}",
            known.join(", ")
        ),
    )
}

fn field_error(e: &jsonschema::ValidationError<'_>) -> FieldError {
    let at = e.instance_path().as_str().to_owned();
    match e.kind() {
        // Point at the missing field itself, not at its parent object.
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            FieldError::new(format!("{at}/{}", escape(name)), "is required")
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let name = unexpected.first().map(String::as_str).unwrap_or_default();
            FieldError::new(
                format!("{at}/{}", escape(name)),
                "is not an allowed property",
            )
        }
        _ => FieldError::new(at, e.to_string()),
    }
}

fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_embedded_schema_compiles() {
        for kind in SchemaKind::ALL {
            assert!(compile(schema_text(kind, 1).unwrap()).is_ok(), "{kind:?}");
        }
        for (version, kind, text) in embedded() {
            assert!(compile(text).is_ok(), "v{version} {kind:?}");
        }
    }

    #[test]
    fn a_missing_field_is_reported_at_its_own_pointer() {
        let errs = validate(SchemaKind::Manifest, 1, &json!({"schema_version": 1})).unwrap_err();
        let pointers: Vec<&str> = errs.iter().map(|e| e.pointer.as_str()).collect();
        assert!(pointers.contains(&"/job_id"), "{pointers:?}");
        assert!(pointers.contains(&"/job_name"), "{pointers:?}");
    }

    #[test]
    fn an_unknown_version_lists_the_known_ones() {
        let errs = validate(SchemaKind::Manifest, 9, &json!({})).unwrap_err();
        assert_eq!(errs[0].pointer, "/schema_version");
        assert!(
            errs[0].detail.contains("known versions: 1, 2"),
            "{}",
            errs[0].detail
        );
    }
}
