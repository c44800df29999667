use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Shard and chunk payloads as `Bytes`: slices of one stripe buffer go to
        // the wire without a copy per shard.
        .bytes(".")
        .file_descriptor_set_path(out.join("potluck_descriptor.bin"))
        .compile_protos(&["potluck/v1/potluck.proto"], &["."])?;
    Ok(())
}
