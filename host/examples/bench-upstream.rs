//! The upstream API of `bench/http.sh`'s authenticated-GET run, as a process of its own:
//! `bench-upstream ADDR KEY` serves `GET /` on ADDR, answering 200 with the right
//! `X-API-Key` and 401 without it (see `benches/common/upstream.rs`).

#[path = "../benches/common/upstream.rs"]
mod upstream;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(key), None) = (args.next(), args.next(), args.next()) else {
        eprintln!(
            "usage: bench-upstream ADDR KEY   (e.g. bench-upstream 127.0.0.1:18978 some-key)"
        );
        std::process::exit(2);
    };
    // One thread, like a small API server: what it costs stays out of keyhole's way.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let served = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        upstream::serve(listener, &key).await
    });
    if let Err(e) = served {
        eprintln!("error: bench-upstream on {addr}: {e}");
        std::process::exit(1);
    }
}
