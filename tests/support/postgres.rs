//! A fresh, empty database on a PostgreSQL server, for the store's unit tests, the fleet tests
//! and the load driver (each includes this file).

/// Creates database `<prefix>_<uuid>` on the server `base` names; returns its URL.
pub async fn fresh_database(base: &str, prefix: &str) -> String {
    let (client, connection) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL server answers");
    tokio::spawn(connection);
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("a test database can be created");
    let mut url = url::Url::parse(base).expect("the server URL parses");
    url.set_path(&name);
    url.to_string()
}

/// The server the tests run against (`AGENT_SIDECAR_TEST_POSTGRES_URL`).
#[allow(dead_code)]
pub fn test_server() -> String {
    std::env::var("AGENT_SIDECAR_TEST_POSTGRES_URL")
        .expect("AGENT_SIDECAR_TEST_POSTGRES_URL names the PostgreSQL server to test against")
}
