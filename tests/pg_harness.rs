//! The Postgres test harness: one fresh database per test, dropped after.
#![allow(clippy::unwrap_used)]

use overseer_builders::migrate::url_with_database as pg_url_with_database;
use overseer_tests::{pg_connect, pg_database, pg_server_url};

#[test]
fn database_urls_replace_only_the_database() {
    assert_eq!(
        pg_url_with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
        "postgres://postgres@127.0.0.1:5432/t1"
    );
    assert_eq!(
        pg_url_with_database("postgres://u:p@h:1/db?sslmode=disable", "t2"),
        "postgres://u:p@h:1/t2?sslmode=disable"
    );
    assert_eq!(pg_url_with_database("postgres://h", "t3"), "postgres://h/t3");
}

#[tokio::test]
async fn each_test_gets_its_own_database_dropped_afterwards() {
    let Some(a) = pg_database("harness_a").await else {
        return;
    };
    let b = pg_database("harness_b").await.unwrap();
    assert_ne!(a.name(), b.name());
    a.client()
        .batch_execute("CREATE TABLE t (id int primary key)")
        .await
        .unwrap();
    a.client().execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    // b does not see a's table.
    let seen: i64 = b
        .client()
        .query_one("SELECT count(*) FROM pg_tables WHERE tablename = 't'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0);
    // A second connection to a works, and its database has the row.
    let other = a.connect().await;
    let n: i64 = other
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);

    let name = a.name().to_owned();
    drop(a);
    let admin = pg_connect(&pg_server_url("harness").unwrap()).await.unwrap();
    let left: i64 = admin
        .query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left, 0,
        "the database is dropped with its handle, open connections or not"
    );
}
