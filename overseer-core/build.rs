//! Compiles the protobuf schema with the pure-Rust `protox`, so no `protoc`
//! binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/overseer/v1/overseer.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().bytes(["."]).compile_fds(descriptors)?;
    Ok(())
}
