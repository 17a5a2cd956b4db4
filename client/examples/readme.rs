//! The README's Rust examples, verbatim, so that `cargo test` compiles them
//! (`client/tests/readme.rs` checks that every `rust` block of the README is
//! in this file). With `REDIS_LOCK_NODES` set (`eval "$(make -s nodes)"`),
//! `cargo run --example readme` also runs the fencing example against them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error;

type BoxError = Box<dyn Error + Send + Sync>;

/// Stands for the reader's own job.
async fn run_nightly_job(fence: u64) -> Result<(), BoxError> {
    println!("nightly job under fence {fence}");
    Ok(())
}

/// Stands for the reader's database client (`postgres`, `sqlx`, ...).
trait ToSql: std::fmt::Debug + Sync {}
impl ToSql for String {}
impl ToSql for i64 {}
struct Db;
impl Db {
    fn execute(&self, query: &str, params: &[&dyn ToSql]) -> Result<u64, BoxError> {
        println!("{query} {params:?}");
        Ok(1)
    }
}

#[allow(dead_code)]
#[rustfmt::skip]
async fn the_client() -> Result<(), BoxError> {
    // README: The client
    use redis_lock_client::{Client, Config};
    use std::time::Duration;

    let client = Client::new(Config::builder("redis://a:6379,redis://b:6379,redis://c:6379").build()?)?;
    let job = client
        .with_lock("jobs:nightly", Duration::from_secs(30), |held| async move {
            // renewed in the background; dropped at once if the lock is lost
            run_nightly_job(held.fence()).await
        })
        .await?; // the lock's error: not acquired within the default wait (10 s), or lost
    job?; // the job's own result
    // Before the program exits: let the requests still out to slower nodes finish.
    client.settle(Duration::from_secs(1)).await;
    Ok(())
}

#[rustfmt::skip]
async fn fencing(
    client: &redis_lock_client::Client,
    db: &Db,
    body: String,
) -> Result<u64, BoxError> {
    use std::time::Duration;
    // README: Fencing
    // The resource keeps the newest fence it has accepted, and refuses older ones.
    let lease = client.acquire("report", Duration::from_secs(10), Duration::from_secs(2)).await?;
    // ... a pause here longer than the TTL, and another holder may have written ...
    let accepted = db.execute(
        "UPDATE reports SET body = $1, fence = $2 WHERE id = 'nightly' AND fence <= $2",
        &[&body, &(lease.fence() as i64)],
    )?;
    if accepted == 0 {
        eprintln!("fenced off: a newer lease has written"); // ours is stale
    }
    client.release(&lease).await?;
    Ok(accepted)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let Ok(nodes) = std::env::var("REDIS_LOCK_NODES") else {
        eprintln!("set REDIS_LOCK_NODES to run the examples (eval \"$(make -s nodes)\")");
        return Ok(());
    };
    let client =
        redis_lock_client::Client::new(redis_lock_client::Config::builder(&nodes).build()?)?;
    fencing(&client, &Db, "contents".to_owned()).await?;
    Ok(())
}
