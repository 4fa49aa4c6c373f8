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
        .compile_fds(fds)?;
    Ok(())
}
