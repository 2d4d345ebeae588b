//! Compiles the agent API protos into ttrpc stubs at build time.

fn main() {
    let protos = ["protos/agent.proto", "protos/health.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .inputs(protos)
        .include("protos")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: true,
            ..Default::default()
        })
        .run()
        .expect("ttrpc codegen of the agent protos failed");
    // Trait methods a service does not override answer NOT_FOUND in the
    // generated code; the project's rule is UNIMPLEMENTED for an RPC that
    // exists but is not supported, so rewrite the defaults.
    for stub in ["agent_ttrpc.rs", "health_ttrpc.rs"] {
        let path = std::path::Path::new(&out).join(stub);
        let code = std::fs::read_to_string(&path).expect("reading a generated stub failed");
        let fixed = code.replace(
            "::ttrpc::get_status(::ttrpc::Code::NOT_FOUND,",
            "::ttrpc::get_status(::ttrpc::Code::UNIMPLEMENTED,",
        );
        assert!(
            code.contains("is not supported"),
            "unexpected ttrpc-codegen output in {stub}"
        );
        std::fs::write(&path, fixed).expect("writing a generated stub failed");
    }
    // The generated mod.rs names only the message modules; list the ttrpc
    // stubs too so lib.rs can include one file.
    let mods = ["agent", "agent_ttrpc", "health", "health_ttrpc"]
        .iter()
        .map(|m| format!("pub mod {m};\n"))
        .collect::<String>();
    std::fs::write(std::path::Path::new(&out).join("mod.rs"), mods)
        .expect("writing the generated mod.rs failed");
}
