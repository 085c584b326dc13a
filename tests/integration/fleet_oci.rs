//! Models and artifacts in a fleet's registry (README "Running a fleet"): `oci://` references to
//! artifacts already in a registry, in the wasm OCI layout that `wkg oci push` writes, deployed
//! and added as models on a single node; and a model added through one fleet node serving
//! inferences on another.

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::fleet_parts::*;
use crate::support::*;

/// Pushes a one-layer artifact as `wkg oci push` lays it out; returns its manifest digest.
fn push(host: &str, repo_tag: &str, bytes: Vec<u8>, layer: &str, config: &str) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        });
        let reference: Reference = format!("{host}/{repo_tag}").parse().unwrap();
        let layers = [ImageLayer::new(bytes, layer.to_string(), None)];
        let config = Config::new(b"{}".to_vec(), config.to_string(), None);
        client
            .push(&reference, &layers, config, &RegistryAuth::Anonymous, None)
            .await
            .unwrap();
        client
            .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
            .await
            .unwrap()
    })
}

nn_test! {
    fn components_and_models_deploy_from_oci_references() {
        let Some(tools) = tools() else { return };
        let dir = TestDir::new();
        let registry = registry(&tools, &dir);
        let host = format!("127.0.0.1:{}", registry.port);
        let node = Node::start(&dir.data(), None);

        // By tag, as wkg pushes a component.
        let wasm_config = "application/vnd.wasm.config.v0+json";
        push(&host, "demo/greet:1.0", std::fs::read(fixture("greet-v1")).unwrap(), "application/wasm", wasm_config);
        let out = node.cli(&["deploy", "greet", &format!("oci://{host}/demo/greet:1.0")]);
        let v1 = version_id(&fixture("greet-v1"));
        assert_eq!(cli_ok(&out, "deploy oci tag").trim(), v1);
        assert_eq!(serving(&node, "greet").as_deref(), Some(v1.as_str()));

        // By digest, in our own layer media type.
        let digest = push(
            &host,
            "demo/greet:2.0",
            std::fs::read(fixture("greet-v2")).unwrap(),
            "application/vnd.wasm.content.layer.v1+wasm",
            wasm_config,
        );
        let out = node.cli(&["deploy", "greet", &format!("oci://{host}/demo/greet@{digest}")]);
        let v2 = version_id(&fixture("greet-v2"));
        assert_eq!(cli_ok(&out, "deploy oci digest").trim(), v2);
        assert_eq!(serving(&node, "greet").as_deref(), Some(v2.as_str()));

        // What is not there, or not a component, is refused with the reason.
        let out = node.cli(&["deploy", "greet", &format!("oci://{host}/demo/nothing:1.0")]);
        assert!(!out.status.success());
        assert!(out_text(&out).1.contains("manifest"), "{out:?}");
        push(&host, "demo/junk:1", b"not wasm at all".to_vec(), "application/wasm", wasm_config);
        let out = node.cli(&["deploy", "junk", &format!("oci://{host}/demo/junk:1")]);
        assert!(!out.status.success());
        assert!(out_text(&out).1.contains("invalid_component"), "{out:?}");

        // A model.
        let model = std::fs::read(repo_root().join("tests/models/add_f32.onnx")).unwrap();
        push(&host, "models/add:1", model, "application/vnd.tensorlet.model.v1+onnx", "application/vnd.oci.empty.v1+json");
        let out = node.cli(&["model", "add", "add", &format!("oci://{host}/models/add:1")]);
        cli_ok(&out, "model add oci");
        let models = node.get("/admin/v1/models").json();
        assert_eq!(models["models"][0]["name"], "add", "{models}");
    }
}

nn_test! {
    fn models_added_through_one_node_serve_inferences_on_every_node() {
        let Some(tools) = tools() else { return };
        let dir = TestDir::new();
        let pair = Pair::start(&tools, &dir, "edge-2", Through::Engine);
        let (a, b) = (&pair.a, &pair.b);
        let bytes = std::fs::read(repo_root().join("tests/models/add_f32.onnx")).unwrap();
        let r = Request::new("POST", "/admin/v1/models/add/versions?wait=10s")
            .body(bytes)
            .send(a.addr());
        assert_eq!(r.status, 201, "{r}");
        // A function deployed through the other node, naming the model it pulled.
        b.deploy_ok("nn", "nn-probe", "model=add&wait=10s");
        for n in [a, b] {
            assert_eq!(n.get("/fn/nn/add").text(), "2 3 4 5 6 7");
        }
        let models = b.get("/admin/v1/models").json();
        assert_eq!(models["models"][0]["loaded"], true, "{models}");
    }
}
