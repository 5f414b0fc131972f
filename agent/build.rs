//! Finds the eBPF object that `cargo xtask build` produced and hands its path to
//! `include_bytes_aligned!`, so the agent binary carries its kernel programs inside.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=PORTCULLIS_EBPF_OBJECT");
    let object = env::var_os("PORTCULLIS_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
                .join("../target/bpfel-unknown-none/release/portcullis-ebpf")
        });
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.is_file() {
        panic!(
            "the eBPF object {} does not exist: build with `cargo xtask build` (it builds the \
             kernel programs first), or point PORTCULLIS_EBPF_OBJECT at it",
            object.display()
        );
    }
    println!(
        "cargo:rustc-env=PORTCULLIS_EBPF_OBJECT={}",
        object.display()
    );
}
