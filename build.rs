//! Compiles `proto/` with protox (pure Rust: no system `protoc`) and generates
//! the tonic server and client code, plus a descriptor set for server reflection.

use std::{env, path::PathBuf};

/// The directory of the `tierkv.v1` package.
const PACKAGE_DIR: &str = "proto/tierkv/v1";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Every `.proto` of the package, so that adding a service needs no edit here.
    let mut files = Vec::new();
    for entry in std::fs::read_dir(PACKAGE_DIR)? {
        let path = entry?.path();
        if path
            .extension()
            .is_some_and(|extension| extension == "proto")
        {
            if let Some(name) = path.file_name().and_then(|name| name.to_str()) {
                files.push(format!("tierkv/v1/{name}"));
            }
        }
    }
    files.sort();
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={PACKAGE_DIR}");
    for file in &files {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    let descriptor_set = protox::compile(&files, ["proto"])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let encoded = prost::Message::encode_to_vec(&descriptor_set);
    std::fs::write(out_dir.join("tierkv_descriptor.bin"), encoded)?;

    tonic_prost_build::configure()
        // A request that does not decode answers INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::api::codec::TierkvCodec")
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptor_set)?;
    Ok(())
}
