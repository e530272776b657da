//! Compiles the `.proto` files with protox (no system protoc) and generates prost + tonic code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/starling/model.proto",
        "proto/starling/command.proto",
        "proto/starling/raft.proto",
        "proto/starling/controller.proto",
        "proto/starling/agent.proto",
        "proto/starling/migration.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("starling_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    // BTreeMap for every proto map: prost encodes maps in iteration order, and replicated
    // records, snapshots and model digests must be the same bytes on every node.
    // Every service uses `codec::Codec`: prost with smaller per-call buffers (see there).
    tonic_prost_build::configure()
        .codec_path("crate::codec::Codec")
        .btree_map(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
