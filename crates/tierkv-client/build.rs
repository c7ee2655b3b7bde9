//! Compiles the repository's `proto/` with protox (pure Rust: no system
//! `protoc`) and generates the tonic server and client code, plus a
//! descriptor set for server reflection.
//!
//! The `.proto` files stay at the repository root (`../../proto`), where the
//! other languages' stubs are generated from too; a git dependency on this
//! crate checks out the whole repository, so they are there.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let package_dir = proto_root.join("tierkv/v1");
    // Every `.proto` of the package, so that adding a service needs no edit here.
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&package_dir)? {
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
    println!("cargo:rerun-if-changed={}", package_dir.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }
    let descriptor_set = protox::compile(&files, [&proto_root])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let encoded = prost::Message::encode_to_vec(&descriptor_set);
    std::fs::write(out_dir.join("tierkv_descriptor.bin"), encoded)?;

    tonic_prost_build::configure()
        // A request that does not decode answers INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::codec::TierkvCodec")
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptor_set)?;
    Ok(())
}
