//! The floor under any pooler built on tokio: the cheapest relay the
//! runtime allows, for the load benchmark's `floor` target.
//!
//! Each client connection is paired with a PostgreSQL connection of its
//! own, and one task copies bytes both ways (tokio's `copy_bidirectional`)
//! on the runtime pgdyno uses on a small machine (tokio's current-thread
//! scheduler, see `runtime` in src/main.rs): no message is
//! parsed, no backend is pooled, nothing is counted. It makes the same
//! system calls per transaction as pgdyno and PgBouncer, so its CPU per
//! transaction is what the kernel and tokio cost; what pgdyno needs above
//! it is pgdyno's own work.
//!
//! ```text
//! cargo run --release --example tokio_floor -- 127.0.0.1:7432 127.0.0.1:5432
//! ```

use tokio::net::{TcpListener, TcpStream};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: tokio_floor LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("starting the runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen)
            .await
            .expect("binding the listener");
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
}
