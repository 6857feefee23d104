//! The schemas, the serde types and the fixtures agree with each other.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contract-tests/fixtures")
}

fn read_dir_json(dir: &Path) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, serde_json::from_str(&text).unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A valid fixture validates, parses into `T` and serializes back to the same JSON.
fn round_trips<T: Serialize + DeserializeOwned>(kind: SchemaKind, version: u32, folder: &str) {
    let valid = read_dir_json(&fixtures().join(format!("v{version}/{folder}/valid")));
    assert!(
        !valid.is_empty(),
        "no valid fixtures for v{version}/{folder}"
    );
    for (name, doc) in valid {
        schema::validate(kind, version, &doc).unwrap_or_else(|e| panic!("{folder}/{name}: {e:?}"));
        let typed: T =
            from_value_at(doc.clone()).unwrap_or_else(|e| panic!("{folder}/{name}: {e:?}"));
        assert_eq!(
            serde_json::to_value(&typed).unwrap(),
            doc,
            "{folder}/{name}"
        );
    }
}

/// Each invalid fixture is rejected with an error at the pointer it names (and, when it says,
/// a detail containing `detail_contains`).
fn rejects_invalid(kind: SchemaKind, version: u32, folder: &str) {
    let invalid = read_dir_json(&fixtures().join(format!("v{version}/{folder}/invalid")));
    assert!(
        !invalid.is_empty(),
        "no invalid fixtures for v{version}/{folder}"
    );
    for (name, case) in invalid {
        let expected = case["expect"]["pointer"].as_str().unwrap();
        let detail = case["expect"]["detail_contains"].as_str().unwrap_or("");
        let errors = schema::validate(kind, version, &case["document"])
            .expect_err(&format!("{folder}/{name} should be invalid"));
        assert!(
            errors
                .iter()
                .any(|e| e.pointer == expected && e.detail.contains(detail)),
            "{folder}/{name}: expected an error at {expected} ({detail:?}), got {errors:?}"
        );
    }
}

#[test]
fn trigger_request_fixtures_round_trip_and_invalid_ones_name_the_field() {
    round_trips::<TriggerRequest>(SchemaKind::TriggerRequest, 1, "trigger-request");
    rejects_invalid(SchemaKind::TriggerRequest, 1, "trigger-request");
}

#[test]
fn manifest_fixtures_round_trip_and_invalid_ones_name_the_field() {
    round_trips::<ManifestV1>(SchemaKind::Manifest, 1, "manifest");
    rejects_invalid(SchemaKind::Manifest, 1, "manifest");
}

#[test]
fn manifest_v2_fixtures_round_trip_and_invalid_ones_name_the_field() {
    round_trips::<ManifestV2>(SchemaKind::Manifest, 2, "manifest");
    rejects_invalid(SchemaKind::Manifest, 2, "manifest");
}

#[test]
fn every_embedded_schema_has_valid_and_invalid_fixtures() {
    for (version, kind, _) in schema::embedded() {
        let folder = kind.file_name().trim_end_matches(".json");
        for case in ["valid", "invalid"] {
            let dir = fixtures().join(format!("v{version}/{folder}/{case}"));
            assert!(
                !read_dir_json(&dir).is_empty(),
                "no {case} fixtures in {}",
                dir.display()
            );
        }
    }
}

#[test]
fn both_manifest_versions_parse_side_by_side() {
    for version in schema::KNOWN_VERSIONS {
        for (name, doc) in read_dir_json(&fixtures().join(format!("v{version}/manifest/valid"))) {
            let manifest = parse_manifest(&serde_json::to_vec(&doc).unwrap())
                .unwrap_or_else(|e| panic!("v{version}/{name}: {:?}", e.errors));
            assert_eq!(manifest.version(), version, "v{version}/{name}");
        }
    }
}

#[test]
fn progress_callback_fixtures_round_trip_and_invalid_ones_name_the_field() {
    round_trips::<ProgressCallback>(SchemaKind::ProgressCallback, 1, "progress-callback");
    rejects_invalid(SchemaKind::ProgressCallback, 1, "progress-callback");
}

#[test]
fn completion_callback_fixtures_round_trip_and_invalid_ones_name_the_field() {
    round_trips::<CompletionCallback>(SchemaKind::CompletionCallback, 1, "completion-callback");
    rejects_invalid(SchemaKind::CompletionCallback, 1, "completion-callback");
}

#[test]
fn summary_fixtures_round_trip_and_invalid_ones_name_the_field() {
    round_trips::<Summary>(SchemaKind::Summary, 1, "summary");
    rejects_invalid(SchemaKind::Summary, 1, "summary");
}

#[test]
fn metrics_fixtures_round_trip_and_invalid_ones_name_the_field() {
    round_trips::<MetricsFile>(SchemaKind::Metrics, 1, "metrics");
    rejects_invalid(SchemaKind::Metrics, 1, "metrics");
}

#[test]
fn status_fixtures_round_trip_and_invalid_ones_name_the_field() {
    round_trips::<JobStatus>(SchemaKind::Status, 1, "status");
    rejects_invalid(SchemaKind::Status, 1, "status");
}

#[test]
fn job_event_fixtures_round_trip_and_invalid_ones_name_the_field() {
    round_trips::<JobEvent>(SchemaKind::JobEvent, 1, "job-event");
    rejects_invalid(SchemaKind::JobEvent, 1, "job-event");
}

/// Strips `/* */` comments and fills the note's placeholders with real values of their kind.
fn fill_placeholders(text: &str) -> Value {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("*/").unwrap() + start + 2;
        rest = &rest[end..];
    }
    out.push_str(rest);
    let filled = out
        .replace("<uuid>", "7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f")
        .replace("<job_id>", "7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f")
        .replace("<user_id>", "42")
        .replace("<id>", "42")
        .replace("<hmac-or-jwt>", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
        .replace("\"...\"", "\"2026-11-24T07:40:01.123Z\"");
    serde_json::from_str(&filled).unwrap()
}

#[test]
fn design_note_examples_validate_once_placeholders_are_filled() {
    let dir = fixtures().join("seed-000");
    for (file, kind) in [
        ("trigger-request.jsonc", SchemaKind::TriggerRequest),
        ("progress-callback.jsonc", SchemaKind::ProgressCallback),
        ("completion-callback.jsonc", SchemaKind::CompletionCallback),
    ] {
        let doc = fill_placeholders(&std::fs::read_to_string(dir.join(file)).unwrap());
        schema::validate(kind, 1, &doc).unwrap_or_else(|e| panic!("{file}: {e:?}"));
    }
}

#[test]
fn a_manifest_with_an_unknown_schema_version_is_refused_with_the_known_list() {
    let err = parse_manifest(br#"{"schema_version": 7}"#).unwrap_err();
    assert_eq!(err.errors[0].pointer, "/schema_version");
    assert!(err.errors[0].detail.contains("known versions: 1, 2"));
}

#[test]
fn a_manifest_that_is_not_json_says_so() {
    let err = parse_manifest(b"{nope").unwrap_err();
    assert!(err.errors[0].detail.contains("not valid JSON"));
}
