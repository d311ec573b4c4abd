//! `mesh-sidecar`: the sidecar alone, flags as `mesh connect proxy`'s.
//! The same code as `mesh connect proxy`; a smaller binary, so each
//! sidecar process maps fewer of its pages (see BENCHMARKS.md).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(
        args.first().map(String::as_str),
        Some("version" | "-version" | "--version")
    ) {
        println!("mesh-sidecar v{}", env!("CARGO_PKG_VERSION"));
        return;
    }
    std::process::exit(mesh_bins::sidecar_cmd::run(&args, "mesh-sidecar"));
}
