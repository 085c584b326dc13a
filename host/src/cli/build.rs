//! `tensorlet build`: runs the manifest's `build` command in the manifest's directory, its output
//! going straight to the terminal, then checks that the manifest's `component` is there, so that
//! `tensorlet deploy --manifest` has what it deploys.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::Args;

use crate::manifest::Manifest;

#[derive(Debug, Args)]
pub(crate) struct BuildArgs {
    /// The manifest whose `build` command to run (in the manifest's directory).
    #[arg(long, value_name = "FILE", default_value = "tensorlet.toml")]
    manifest: PathBuf,
}

pub(crate) fn build(a: BuildArgs) -> anyhow::Result<()> {
    let shown = a.manifest.display();
    if !a.manifest.exists() {
        bail!(
            "no manifest {shown}: run `tensorlet build` where the function's tensorlet.toml is (`tensorlet new` makes one), or pass --manifest FILE"
        );
    }
    let m = Manifest::load(&a.manifest)?;
    let command = m.build.with_context(|| {
        format!(
            "{shown} has no `build` command: add one, e.g. `build = \"cargo build --target wasm32-wasip2 --release\"`"
        )
    })?;
    // Checked before building: a manifest that cannot be deployed is not worth a build.
    let component = m.component.with_context(|| {
        format!(
            "{shown} has no `component`: add the path of the .wasm that `build` makes, e.g. `component = \"target/wasm32-wasip2/release/NAME.wasm\"`"
        )
    })?;
    let dir = match a.manifest.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    eprintln!("running `{command}` in {}", dir.display());
    // stdin, stdout and stderr are inherited: the build's own output (cargo's progress, its
    // errors) is what the user needs to see, as it comes.
    let status = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .current_dir(dir)
        .status()
        .with_context(|| format!("could not run `sh -c` for the build command in {shown}"))?;
    if !status.success() {
        bail!(
            "the build command `{command}` of {shown} failed ({status}): fix what it reported above, then run `tensorlet build` again"
        );
    }
    let size = match std::fs::metadata(&component) {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => bail!(
            "`{command}` succeeded but {} is not there: point `component` in {shown} at the .wasm it builds (with CARGO_TARGET_DIR set, cargo writes it under $CARGO_TARGET_DIR/wasm32-wasip2/release/)",
            component.display()
        ),
    };
    println!(
        "built {} ({})",
        component.display(),
        indicatif::HumanBytes(size)
    );
    Ok(())
}
