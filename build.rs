//! Compiles `proto/` with protox (pure Rust: no system `protoc`) and generates
//! the tonic server and client code, plus a descriptor set for server reflection.

use std::{env, path::PathBuf};

const PROTO_FILES: &[&str] = &["tierkv/v1/kv.proto", "tierkv/v1/session.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    let descriptor_set = protox::compile(PROTO_FILES, ["proto"])?;

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
