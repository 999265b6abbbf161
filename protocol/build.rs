//! Compiles `proto/tern.proto` with protox (a protobuf compiler in Rust), so
//! building Tern needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/tern.proto");
    let descriptors = protox::compile(["proto/tern.proto"], ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
