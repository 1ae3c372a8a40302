//! Generates the coe.v1 gRPC code and the descriptor set that server reflection serves.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc keeps the build free of system packages.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/coe/v1/common.proto",
        "proto/coe/v1/worker.proto",
        "proto/coe/v1/router.proto",
        "proto/coe/v1/registry.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("coe_v1_descriptor.bin"))
        .compile_protos(&protos, &["proto"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
