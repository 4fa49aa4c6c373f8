//! Compiles proto/node_agent.proto with protox (pure Rust: no protoc on the build machine).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/node_agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
