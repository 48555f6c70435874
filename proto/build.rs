//! Compiles the project's own .proto files with protox (pure Rust), so building needs no protoc.

fn main() {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["jina.proto", "docarray.proto"], ["proto"]).expect("protos compile");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    // Reflection (v1alpha, which jina's gateway calls) needs the descriptor set at run time.
    std::fs::write(
        out.join("jina_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )
    .expect("write descriptor set");
    tonic_prost_build::configure()
        .bytes(".jina.DataRequestProto.data")
        .compile_fds(fds)
        .expect("generate code");
}
