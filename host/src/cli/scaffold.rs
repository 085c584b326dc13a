//! `tensorlet new`: a handler crate from a template, ready for `tensorlet build` and
//! `tensorlet deploy --manifest tensorlet.toml`: a Cargo.toml on the guest SDK, the handler, a
//! `tensorlet.toml` with a `build` command, a README and a `.gitignore`.
//!
//! The `classify-image` and `embed-text` templates are the project's own examples, embedded when
//! this binary is built: their source files, their dependencies (read from their Cargo.toml, so
//! they cannot drift apart), their Cargo.lock and their manifest's settings. What `new` writes is
//! therefore what the examples' own tests build and run. The templates' own text (hello's
//! handler, the Cargo.toml and manifest skeletons, the READMEs) lives in host/templates/.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use crate::manifest::Manifest;

#[derive(Debug, Args)]
pub(crate) struct NewArgs {
    /// Function name (1 to 63 characters of a-z, 0-9 and '-', not starting with '-'); the
    /// crate is named after it.
    name: String,
    /// What the handler starts as.
    #[arg(long, value_enum, default_value_t = Template::Hello)]
    template: Template,
    /// The directory to create (default ./NAME); it must not exist yet.
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// The Tensorlet guest SDK (guest-sdk/ in a Tensorlet checkout) the crate depends on;
    /// default: the checkout this tensorlet was built from.
    #[arg(long, value_name = "PATH", env = "TENSORLET_SDK")]
    sdk: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Template {
    /// GET answers a greeting, POST {"name": ...} answers JSON.
    Hello,
    /// examples/classify-image: how a page image is turned (needs the model `orientation`).
    ClassifyImage,
    /// examples/embed-text: sentence embeddings (needs the model `minilm`).
    EmbedText,
}

/// A file of the new crate as the template has it.
struct File {
    /// Where it goes, relative to the crate's directory.
    path: &'static str,
    bytes: &'static [u8],
    /// Whether `{{name}}`, `{{crate}}` and `{{lib}}` are filled in (never in the examples' files:
    /// they are copied byte for byte).
    fill: bool,
}

/// A file of an example, embedded as it is.
macro_rules! example_file {
    ($example:literal, $path:literal) => {
        File {
            path: $path,
            bytes: include_bytes!(concat!("../../../examples/", $example, "/", $path)),
            fill: false,
        }
    };
}

/// What a template is made of.
struct Parts {
    /// A Cargo.toml whose dependency sections (comments included) the new crate gets.
    dependencies: &'static str,
    /// The Cargo.lock they are tested with, so that a new crate starts from the same versions
    /// (cargo renames the root package in it at the first build).
    lock: &'static str,
    /// A manifest whose deploy settings (models, env, ...) the new `tensorlet.toml` gets; its
    /// `name`, `component` and `build` are the new crate's own.
    manifest: Option<&'static str>,
    readme: &'static str,
    files: &'static [File],
}

const CARGO_TOML: &str = include_str!("../../templates/Cargo.toml.tmpl");
const TENSORLET_TOML: &str = include_str!("../../templates/tensorlet.toml.tmpl");
const GITIGNORE: &str = include_str!("../../templates/gitignore");

fn parts(template: Template) -> Parts {
    match template {
        Template::Hello => Parts {
            dependencies: include_str!("../../templates/hello/dependencies.toml"),
            // The examples workspace's lock: hello's SDK and its dependencies, as tested.
            lock: include_str!("../../../examples/Cargo.lock"),
            manifest: None,
            readme: include_str!("../../templates/hello/README.md"),
            files: &[File {
                path: "src/lib.rs",
                bytes: include_bytes!("../../templates/hello/lib.rs"),
                fill: true,
            }],
        },
        Template::ClassifyImage => Parts {
            dependencies: include_str!("../../../examples/classify-image/Cargo.toml"),
            lock: include_str!("../../../examples/classify-image/Cargo.lock"),
            manifest: Some(include_str!(
                "../../../examples/classify-image/tensorlet.toml"
            )),
            readme: include_str!("../../templates/classify-image/README.md"),
            files: &[
                example_file!("classify-image", "src/lib.rs"),
                // Something to send it: the README's `curl` posts it.
                example_file!("classify-image", "testdata/page-90.png"),
            ],
        },
        Template::EmbedText => Parts {
            dependencies: include_str!("../../../examples/embed-text/Cargo.toml"),
            lock: include_str!("../../../examples/embed-text/Cargo.lock"),
            manifest: Some(include_str!("../../../examples/embed-text/tensorlet.toml")),
            readme: include_str!("../../templates/embed-text/README.md"),
            files: &[
                example_file!("embed-text", "src/lib.rs"),
                example_file!("embed-text", "src/tokenizer.rs"),
                example_file!("embed-text", "src/unicode_tables.rs"),
                // build.rs compiles vocab.txt into a sorted table.
                example_file!("embed-text", "build.rs"),
                example_file!("embed-text", "vocab.txt"),
            ],
        },
    }
}

/// `tensorlet new`: writes the crate, then says what to run next.
pub(crate) fn new(a: NewArgs) -> anyhow::Result<()> {
    if !crate::key::is_valid_name(&a.name) {
        bail!(
            "`{}` is not a valid function name: use 1 to 63 characters of a-z, 0-9 and '-', not starting with '-'",
            a.name.escape_default()
        );
    }
    let dir = a.dir.clone().unwrap_or_else(|| PathBuf::from(&a.name));
    let exists = || {
        anyhow::anyhow!(
            "{} already exists: pick another NAME, or --dir PATH for a directory that does not exist yet",
            dir.display()
        )
    };
    if dir.symlink_metadata().is_ok() {
        return Err(exists());
    }
    let sdk = sdk_path(a.sdk)?;
    let sdk = sdk.to_str().with_context(|| {
        format!(
            "the SDK's path {} is not UTF-8, which Cargo.toml cannot hold: pass --sdk with another path",
            sdk.display()
        )
    })?;
    let files = render(a.template, &a.name, sdk)?;

    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // create_dir, not create_dir_all: it fails if the directory appeared meanwhile.
    match std::fs::create_dir(&dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists()),
        other => other.with_context(|| format!("creating {}", dir.display()))?,
    }
    let written = files.iter().try_for_each(|(path, bytes)| {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    });
    if let Err(e) = written {
        // Half a crate would only be refused by the next `new`: leave nothing behind.
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }

    let template = a
        .template
        .to_possible_value()
        .expect("no variant is skipped");
    println!(
        "created {} (template {}) in {}:",
        a.name,
        template.get_name(),
        dir.display()
    );
    for (path, _) in &files {
        println!("  {path}");
    }
    println!("next:");
    for model in template_models(a.template)? {
        println!(
            "  tensorlet model add {model} FILE.onnx   # the model it runs: see its README.md"
        );
    }
    println!(
        "  cd {} && tensorlet build && tensorlet deploy --manifest tensorlet.toml",
        shell_word(&dir.to_string_lossy())
    );
    Ok(())
}

/// The guest SDK the new crate depends on, as an absolute path: `--sdk` or `TENSORLET_SDK`, else
/// the checkout this binary was built from, while it is still there.
fn sdk_path(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(path) => path,
        None => {
            let built_from = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("the host crate lives in the repository")
                .join("guest-sdk");
            if !built_from.join("Cargo.toml").is_file() {
                bail!(
                    "no Tensorlet guest SDK at {}, where the checkout this tensorlet was built from had it: pass --sdk PATH/TO/tensorlet/guest-sdk (or set TENSORLET_SDK)",
                    built_from.display()
                );
            }
            built_from
        }
    };
    let not_sdk = |why: &str| {
        anyhow::anyhow!(
            "{} is not the Tensorlet guest SDK ({why}): pass --sdk PATH/TO/tensorlet/guest-sdk (or set TENSORLET_SDK)",
            path.display()
        )
    };
    let text = std::fs::read_to_string(path.join("Cargo.toml")).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => not_sdk("no Cargo.toml there"),
        _ => not_sdk(&format!("its Cargo.toml cannot be read: {e}")),
    })?;
    let package = text
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("package")?.get("name")?.as_str().map(str::to_string));
    if package.as_deref() != Some("tensorlet-sdk") {
        return Err(not_sdk("its Cargo.toml is not the package tensorlet-sdk"));
    }
    std::fs::canonicalize(&path).with_context(|| format!("resolving {}", path.display()))
}

/// The files of a new crate `name` from `template` on the SDK at `sdk`, in the order they are
/// listed: (path relative to the crate's directory, contents).
fn render(
    template: Template,
    name: &str,
    sdk: &str,
) -> anyhow::Result<Vec<(&'static str, Vec<u8>)>> {
    let parts = parts(template);
    let package = package_name(name);
    let lib = package.replace('-', "_");
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &package)
            .replace("{{lib}}", &lib)
    };
    let sdk = toml::Value::String(sdk.to_string()).to_string();
    let cargo_toml = fill(CARGO_TOML).replace(
        "{{dependencies}}\n",
        &dependency_sections(parts.dependencies, &sdk),
    );
    let manifest = fill(TENSORLET_TOML).replace("{{settings}}\n", &settings(parts.manifest)?);
    let mut files = vec![
        ("Cargo.toml", cargo_toml.into_bytes()),
        ("Cargo.lock", parts.lock.as_bytes().to_vec()),
    ];
    for f in parts.files {
        let bytes = match std::str::from_utf8(f.bytes) {
            Ok(text) if f.fill => fill(text).into_bytes(),
            _ => f.bytes.to_vec(),
        };
        files.push((f.path, bytes));
    }
    files.push(("tensorlet.toml", manifest.into_bytes()));
    files.push(("README.md", fill(parts.readme).into_bytes()));
    files.push((".gitignore", GITIGNORE.as_bytes().to_vec()));
    Ok(files)
}

/// The crate's package name: the function's, unless cargo cannot take it (a package name may
/// not start with a digit; the SDK's own name would collide with the SDK).
fn package_name(name: &str) -> String {
    if name.starts_with(|c: char| c.is_ascii_digit()) || name == "tensorlet-sdk" {
        format!("fn-{name}")
    } else {
        name.to_string()
    }
}

/// The dependency sections of a Cargo.toml, as written (their comments say why a dependency or
/// feature is there), each followed by a blank line, with the SDK's path dependency pointed at
/// `sdk` (a TOML string).
fn dependency_sections(cargo_toml: &str, sdk: &str) -> String {
    fn flush(section: &mut Vec<String>, out: &mut String) {
        // Comments just above the next header belong to that header, not to this section.
        while section
            .last()
            .is_some_and(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            section.pop();
        }
        for line in section.drain(..) {
            out.push_str(&line);
            out.push('\n');
        }
        out.push('\n');
    }
    let mut out = String::new();
    let mut section = Vec::new();
    let mut keep = false;
    for line in cargo_toml.lines() {
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix('[') {
            if keep {
                flush(&mut section, &mut out);
            }
            let header = header.split(']').next().unwrap_or("").trim();
            keep = ["dependencies", "build-dependencies"]
                .iter()
                .any(|d| header == *d || header.starts_with(&format!("{d}.")))
                || (header.starts_with("target.") && header.ends_with("dependencies"));
        }
        if !keep {
            continue;
        }
        let is_sdk = trimmed
            .strip_prefix("tensorlet-sdk")
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        section.push(if is_sdk {
            format!("tensorlet-sdk = {{ path = {sdk} }}")
        } else {
            line.to_string()
        });
    }
    if keep {
        flush(&mut section, &mut out);
    }
    out
}

/// The deploy settings of a template's manifest, as TOML: everything but `name`, `component` and
/// `build`, which are the new crate's own.
fn settings(manifest: Option<&str>) -> anyhow::Result<String> {
    let Some(text) = manifest else {
        return Ok(String::new());
    };
    let mut table: toml::Table = text.parse().context(
        "the template's manifest is not TOML: this tensorlet was built from a broken checkout",
    )?;
    for own in ["name", "component", "build"] {
        table.remove(own);
    }
    Ok(toml::to_string(&table)?)
}

/// The models a template's function loads, from its manifest.
fn template_models(template: Template) -> anyhow::Result<Vec<String>> {
    match parts(template).manifest {
        Some(text) => Ok(Manifest::parse(text)?.models),
        None => Ok(Vec::new()),
    }
}

/// `s` as one word for a POSIX shell: as it is when that is safe, else single-quoted.
fn shell_word(s: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:@%,=".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("'{}'", s.replace('\'', r"'\''")))
    }
}

#[cfg(test)]
mod tests;
