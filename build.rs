//! Fleet tests need a PostgreSQL server: with `AGENT_SIDECAR_TEST_POSTGRES_URL` set they run,
//! without it they are compiled as ignored, so `cargo test` reports them as skipped.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    println!("cargo::rerun-if-env-changed=AGENT_SIDECAR_TEST_POSTGRES_URL");
    if std::env::var_os("AGENT_SIDECAR_TEST_POSTGRES_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}
