//! The `hello` ceiling of bench/run.sh: the smallest warp 0.4 server on the
//! same stack (tokio multi-thread runtime, same release profile) answering
//! every GET with a constant small JSON body.
//!
//! Usage: `hello [PORT]` (default 0: any free port). Prints
//! `listening on http://127.0.0.1:PORT` once bound.

use std::io::Write;

use warp::Filter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 0,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;

    let route = warp::get().map(|| {
        warp::http::Response::builder()
            .header("content-type", "application/json")
            .body(r#"{"status":"ok"}"#)
    });
    warp::serve(route).incoming(listener).run().await;
    Ok(())
}
