//! The templates render crates whose dependencies, files and settings are their sources'.

use super::*;

const SDK: &str = "/opt/tensorlet/guest-sdk";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn file<'a>(files: &'a [(&str, Vec<u8>)], path: &str) -> &'a str {
    let (_, bytes) = files
        .iter()
        .find(|(p, _)| *p == path)
        .unwrap_or_else(|| panic!("no {path}"));
    std::str::from_utf8(bytes).unwrap()
}

/// The dependency tables of a Cargo.toml, the SDK's path replaced by [`SDK`].
fn dependencies(cargo_toml: &str) -> Vec<(String, toml::Value)> {
    let table: toml::Table = cargo_toml.parse().unwrap();
    let mut found = Vec::new();
    for key in ["dependencies", "build-dependencies"] {
        let mut deps = table
            .get(key)
            .cloned()
            .unwrap_or(toml::Value::Table(Default::default()));
        if let Some(sdk) = deps.get_mut("tensorlet-sdk") {
            *sdk = toml::Value::Table(toml::toml! { path = "/opt/tensorlet/guest-sdk" });
        }
        found.push((key.to_string(), deps));
    }
    found
}

#[test]
fn every_template_renders_a_crate_on_its_sources() {
    for &template in Template::value_variants() {
        let what = format!("{template:?}");
        let files = render(template, "demo", SDK).unwrap();
        let parts = parts(template);

        let cargo = file(&files, "Cargo.toml");
        let table: toml::Table = cargo
            .parse()
            .unwrap_or_else(|e| panic!("{what}: {e}\n{cargo}"));
        assert_eq!(table["package"]["name"].as_str(), Some("demo"), "{what}");
        assert_eq!(
            table["lib"]["crate-type"][0].as_str(),
            Some("cdylib"),
            "{what}"
        );
        assert!(table["workspace"].is_table(), "{what}: its own workspace");
        let release = &table["profile"]["release"];
        assert_eq!(release["lto"].as_bool(), Some(true), "{what}");
        assert_eq!(release["codegen-units"].as_integer(), Some(1), "{what}");
        assert_eq!(
            dependencies(cargo),
            dependencies(parts.dependencies),
            "{what}"
        );
        assert_eq!(
            table["dependencies"]["tensorlet-sdk"]["path"].as_str(),
            Some(SDK)
        );

        let manifest = Manifest::parse(file(&files, "tensorlet.toml")).unwrap();
        assert_eq!(manifest.name.as_deref(), Some("demo"));
        assert_eq!(
            manifest.build.as_deref(),
            Some("cargo build --target wasm32-wasip2 --release")
        );
        assert_eq!(
            manifest.component,
            Some(PathBuf::from("target/wasm32-wasip2/release/demo.wasm"))
        );
        let source = parts
            .manifest
            .map(|m| Manifest::parse(m).unwrap())
            .unwrap_or_default();
        assert_eq!(manifest.models, source.models, "{what}");
        assert_eq!(manifest.env, source.env, "{what}");

        let readme = file(&files, "README.md");
        assert!(readme.contains("/fn/demo/"), "{what}: {readme}");
        for model in &manifest.models {
            assert!(
                readme.contains(&format!("tensorlet model add {model} ")),
                "{what}"
            );
        }
        assert_eq!(file(&files, ".gitignore"), "/target\n");
        for filled in ["Cargo.toml", "tensorlet.toml", "README.md"] {
            assert!(!file(&files, filled).contains("{{"), "{what}: {filled}");
        }
    }
    let hello = render(Template::Hello, "demo", SDK).unwrap();
    assert!(file(&hello, "src/lib.rs").contains("const NAME: &str = \"demo\";"));
}

#[test]
fn the_example_templates_carry_every_source_file_of_their_example() {
    for (template, example) in [
        (Template::ClassifyImage, "classify-image"),
        (Template::EmbedText, "embed-text"),
    ] {
        let files = render(template, "demo", SDK).unwrap();
        let dir = repo().join("examples").join(example);
        let mut sources: Vec<String> = std::fs::read_dir(dir.join("src"))
            .unwrap()
            .map(|e| format!("src/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        if dir.join("build.rs").exists() {
            sources.push("build.rs".into());
        }
        for source in sources {
            let (_, bytes) = files.iter().find(|(p, _)| *p == source).unwrap_or_else(|| {
                panic!("the {example} template lacks {source}: add it to parts()")
            });
            assert_eq!(
                *bytes,
                std::fs::read(dir.join(&source)).unwrap(),
                "{source}"
            );
        }
    }
}

#[test]
fn names_cargo_cannot_take_get_a_package_name_it_can() {
    assert_eq!(package_name("demo"), "demo");
    assert_eq!(package_name("2fa"), "fn-2fa");
    assert_eq!(package_name("tensorlet-sdk"), "fn-tensorlet-sdk");
    let files = render(Template::Hello, "2fa", SDK).unwrap();
    let manifest = Manifest::parse(file(&files, "tensorlet.toml")).unwrap();
    assert_eq!(manifest.name.as_deref(), Some("2fa"));
    assert_eq!(
        manifest.component,
        Some(PathBuf::from("target/wasm32-wasip2/release/fn_2fa.wasm"))
    );
}

#[test]
fn dependency_sections_keep_their_comments_and_point_at_the_sdk() {
    let cargo = r#"[package]
name = "x"

[dependencies]
# why a
a = "1"
tensorlet-sdk = { path = "../../guest-sdk" }

# belongs to [workspace]
[workspace]

[target.'cfg(unix)'.dependencies]
b = "2"
[build-dependencies] # trailing
c = "3"
"#;
    let sdk = toml::Value::String(r#"/a "quoted" path"#.into()).to_string();
    let out = dependency_sections(cargo, &sdk);
    assert_eq!(
        out,
        format!(
            "[dependencies]\n# why a\na = \"1\"\ntensorlet-sdk = {{ path = {sdk} }}\n\n\
             [target.'cfg(unix)'.dependencies]\nb = \"2\"\n\n[build-dependencies] # trailing\nc = \"3\"\n\n"
        )
    );
    let table: toml::Table = out.parse().unwrap();
    assert_eq!(
        table["dependencies"]["tensorlet-sdk"]["path"].as_str(),
        Some(r#"/a "quoted" path"#)
    );
}

#[test]
fn the_sdk_is_found_and_checked() {
    let here = sdk_path(None).unwrap();
    assert!(
        here.is_absolute() && here.ends_with("guest-sdk"),
        "{}",
        here.display()
    );
    assert_eq!(sdk_path(Some(repo().join("guest-sdk"))).unwrap(), here);
    let e = sdk_path(Some(repo().join("host"))).unwrap_err().to_string();
    assert!(
        e.contains("is not the Tensorlet guest SDK") && e.contains("--sdk"),
        "{e}"
    );
    let e = sdk_path(Some(repo().join("no-such-dir")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no Cargo.toml there"), "{e}");
}

#[test]
fn shell_words_are_quoted_when_needed() {
    assert_eq!(shell_word("demo"), "demo");
    assert_eq!(shell_word("../a/b-c_d.e"), "../a/b-c_d.e");
    assert_eq!(shell_word("my dir"), "'my dir'");
    assert_eq!(shell_word("it's"), r"'it'\''s'");
    assert_eq!(shell_word(""), "''");
}
