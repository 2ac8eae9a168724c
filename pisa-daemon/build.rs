//! Builds the eBPF object (`pisa-daemon-ebpf`) and exposes its path as
//! `PISA_EBPF_OBJECT`, so the daemon embeds it and ships as one binary.
//!
//! The eBPF crate needs `-Z build-std=core` for `bpfel-unknown-none`, which
//! rustup's toolchains cannot do here (no `rust-src`), so it is built with
//! Debian's rustc (`rustc-web`, with its `rust-web-src`) and bpf-linker, as
//! `../shared/TOOLCHAIN.md` describes. `cargo xtask setup` installs both.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("pisa-daemon has no parent directory")?
        .to_path_buf();
    let ebpf_dir = workspace.join("pisa-daemon-ebpf");
    let common_dir = workspace.join("pisa-daemon-common");
    for path in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-env-changed=PISA_EBPF_OBJECT");
    println!("cargo:rerun-if-env-changed=PISA_EBPF_RUSTC");

    compile_proto(&workspace)?;

    // A prebuilt object (e.g. from a packaging pipeline) skips the build.
    if let Ok(prebuilt) = env::var("PISA_EBPF_OBJECT") {
        println!("cargo:rustc-env=PISA_EBPF_OBJECT={prebuilt}");
        return Ok(());
    }

    let object = build_ebpf(&workspace)?;
    println!("cargo:rustc-env=PISA_EBPF_OBJECT={}", object.display());
    Ok(())
}

fn build_ebpf(workspace: &Path) -> Result<PathBuf> {
    let rustc = env::var("PISA_EBPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let cargo = "/usr/bin/cargo";
    for (tool, hint) in [
        (rustc.as_str(), "Debian's rustc-web"),
        (cargo, "Debian's cargo-web"),
    ] {
        if !Path::new(tool).exists() {
            bail!("{tool} ({hint}) is missing; run `cargo xtask setup` first");
        }
    }
    let home = env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cargo_home = env::var("CARGO_HOME").unwrap_or_else(|_| format!("{home}/.cargo"));
    let path = format!(
        "{cargo_home}/bin:{}",
        env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let target_dir = workspace.join("target").join("bpf");

    let mut cmd = Command::new(cargo);
    // The outer cargo's settings (rustc wrapper, flags, target dir, profile)
    // are for the host build; none of them may leak into the BPF build.
    for (key, _) in env::vars() {
        if key.starts_with("CARGO") || key.starts_with("RUST") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(workspace)
        .env("PATH", path)
        .env("CARGO_HOME", &cargo_home)
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        // v3: BPF atomics (cmpxchg) for the pacer; --btf: typed maps for bpftool.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-C", "target-cpu=v3", "-C", "link-arg=--btf"].join("\x1f"),
        )
        .args([
            "build",
            // The program calls aya-ebpf's memcpy (aya-log copies records
            // of variable length). Without debug info it would be a BPF
            // subprogram without BTF function info, which the verifier
            // rejects ("number of funcs in func_info doesn't match").
            "--config",
            "profile.release.package.aya-ebpf.debug=2",
            // The daemon's release profile links with LTO; the BPF object
            // keeps bpf-linker's own linking, as it always had.
            "--config",
            "profile.release.lto=false",
            "--package",
            "pisa-daemon-ebpf",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
            "--release",
            "--target-dir",
        ])
        .arg(&target_dir);
    let status = cmd
        .status()
        .with_context(|| format!("running {cargo} to build the eBPF object"))?;
    if !status.success() {
        bail!(
            "building pisa-daemon-ebpf failed ({status}); is bpf-linker installed? \
             run `cargo xtask setup`"
        );
    }
    let object = target_dir
        .join("bpfel-unknown-none")
        .join("release")
        .join("pisa-daemon-ebpf");
    if !object.exists() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    Ok(object)
}

/// Generates the gRPC code from `proto/pisa/v1/*.proto` with protox (pure
/// Rust, so no `protoc` is needed), and writes the descriptor set that
/// server reflection serves.
fn compile_proto(workspace: &Path) -> Result<()> {
    let proto_root = workspace.join("proto");
    let proto = proto_root.join("pisa/v1/pisa.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([&proto], [&proto_root])
        .with_context(|| format!("compiling {}", proto.display()))?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("pisa_v1_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)
        .context("generating the gRPC code")?;
    Ok(())
}
