//! The `potluck.v1` gRPC contract shared by agents, the operator and clients.
//!
//! Generated from `proto/potluck/v1/potluck.proto`; the descriptor set is
//! exported so that agents can serve gRPC reflection (`grpcurl` works as is).

pub mod v1 {
    tonic::include_proto!("potluck.v1");

    /// Encoded `FileDescriptorSet` of the contract, for tonic-reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("potluck_descriptor");
}
