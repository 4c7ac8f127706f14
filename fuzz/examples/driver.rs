//! A short tokio-postgres session for `record.py`: the extended protocol as
//! a Rust driver speaks it (named statements, binary parameters, a
//! transaction, an error, a pipeline).
//!
//! `cargo run --example driver -- 'host=127.0.0.1 port=... user=... password=... dbname=...'`

use tokio_postgres::NoTls;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tokio_postgres::Error> {
    let url = std::env::args().nth(1).expect("a connection string");
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(connection);
    let statement = client.prepare("SELECT $1::int4 + 1, $2::text").await?;
    for i in 0..3 {
        client.query(&statement, &[&i, &"driver"]).await?;
    }
    client
        .execute("SET application_name = 'fuzz-driver'", &[])
        .await?;
    client
        .batch_execute("BEGIN; CREATE TEMP TABLE t (a int); INSERT INTO t VALUES (1); COMMIT")
        .await?;
    let _ = client.query("SELECT * FROM missing_table", &[]).await;
    let (a, b) = tokio::join!(
        client.query_one("SELECT 1::int8", &[]),
        client.query_one("SELECT now()::text", &[])
    );
    a?;
    b?;
    Ok(())
}
