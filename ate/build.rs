//! With the `remote` feature: compiles proto/*.proto with protox (pure Rust, so no protoc is
//! needed on the build machine) into the gRPC client and server code of `ate::remote::pb`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("CARGO_FEATURE_REMOTE").is_none() {
        return Ok(());
    }
    let protos = ["../proto/chain.proto", "../proto/raft.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["../proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::remote::codec::SizedCodec")
        // Transactions as `Bytes`: decoded as slices of the received buffer, not copies, and
        // sent from the server's in-memory log entries without one.
        .bytes(".atefs.chain.v1.CommitRequest.tx")
        .bytes(".atefs.chain.v1.CommitBatchRequest.txs")
        .bytes(".atefs.chain.v1.SubscribeEvent.tx")
        .bytes(".atefs.raft.v1.RaftRequest.body")
        .compile_fds(fds)?;
    Ok(())
}
