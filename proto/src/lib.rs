//! coe's public gRPC API (package `coe.v1`), generated from `proto/coe/v1/*.proto`.

/// Generated messages and services of `coe.v1`.
pub mod v1 {
    tonic::include_proto!("coe.v1");

    /// Encoded descriptors of every `coe.v1` file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("coe_v1_descriptor");
}
