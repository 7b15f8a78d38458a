//! Parity tests read reference outputs from `../shared/` beside the checkout. Where a folder
//! is absent they are ignored, with the reason, by a cfg set here, except in CI (`CI` set),
//! where they run and fail: a missing reference must not pass as a green run.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(no_shared_reference)");
    println!("cargo::rustc-check-cfg=cfg(no_shared_data)");
    println!("cargo::rerun-if-env-changed=CI");
    let in_ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false");
    for (folder, cfg) in [
        ("../shared/reference", "no_shared_reference"),
        ("../shared/data", "no_shared_data"),
    ] {
        println!("cargo::rerun-if-changed={folder}");
        if !in_ci && !Path::new(folder).is_dir() {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
