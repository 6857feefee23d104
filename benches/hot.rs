//! Hot pure functions: manifest validation, progress line parsing, JWT signing, summary
//! building. `cargo bench --bench hot`.

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};

use agent_sidecar::config::Config;
use agent_sidecar::contract::{JobName, JobState, Summary, parse_manifest};
use agent_sidecar::delivery::sign::{CallbackEvent, Signer, TokenFor};
use agent_sidecar::runner::lines::parse_progress;
use agent_sidecar::runner::outputs::{Announced, output_index};

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn benches(c: &mut Criterion) {
    let manifest =
        std::fs::read(repo("contract-tests/fixtures/v1/manifest/valid/full.json")).unwrap();
    c.bench_function("manifest: parse + validate v1", |b| {
        b.iter(|| parse_manifest(black_box(&manifest)).unwrap())
    });

    let json_line =
        br#"{"stage":"summarize","message":"Summarised 2/3: customer-feedback.txt","percent":63}"#;
    c.bench_function("progress: parse a JSON line", |b| {
        b.iter(|| parse_progress(black_box(json_line), false))
    });
    let plain = b"loading model weights from the cache";
    c.bench_function("progress: parse a plain line", |b| {
        b.iter(|| parse_progress(black_box(plain), false))
    });

    agent_sidecar::install_crypto_provider();
    let config = Config::load(&repo("agent-sidecar.example.toml")).unwrap();
    let signer = Signer::load(&config.callbacks.jwt, &config.callbacks.standard_webhooks).unwrap();
    let body = std::fs::read(repo(
        "contract-tests/fixtures/v1/completion-callback/valid/completed.json",
    ))
    .unwrap();
    let job_name: JobName = "ReportCompileJob".parse().unwrap();
    let token = TokenFor {
        event: CallbackEvent::Completion,
        job_id: "7d3c8f0e-2b1a-4c5d-9e8f-0a1b2c3d4e5f".parse().unwrap(),
        job_name: &job_name,
        status: JobState::Completed,
        jti: "dlv_0193f1a2b3c47d8e9f0a1b2c3d4e5f60",
        body: &body,
    };
    c.bench_function("jwt: sign a completion token (HS256, body_sha256)", |b| {
        b.iter(|| signer.callback_token(black_box(&token), 1_795_000_000))
    });

    let summary: Summary = serde_json::from_slice(
        &std::fs::read(repo(
            "contract-tests/fixtures/v1/summary/valid/completed.json",
        ))
        .unwrap(),
    )
    .unwrap();
    c.bench_function("summary: build output_index + serialize", |b| {
        b.iter(|| {
            serde_json::to_vec(&output_index(
                black_box(&summary),
                &Default::default(),
                &Announced {
                    output_uri: "file:///srv/x/output/",
                    public_url: "http://127.0.0.1:8780",
                },
                65_536,
            ))
            .unwrap()
        })
    });
}

criterion_group!(hot, benches);
criterion_main!(hot);
