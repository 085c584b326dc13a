//! The dashboard (README "Dashboard") in a real headless Chromium driven over WebDriver
//! (Debian `chromium` and `chromium-driver`): the page signs in with a tenant's token, shows its
//! function and live version, fills its charts as requests arrive, and its Rollback button
//! changes what `/fn/...` answers. (scripts/dashboard-screenshot.sh makes docs/dashboard.png the
//! same way.)

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::support::*;

/// The key WebDriver names elements by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver on a free loopback port, stopped (by PID) when dropped, with one session.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: TestDir,
}

impl Browser {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian chromium-driver): run scripts/fetch-ops-tools.sh");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for("chromedriver to answer", || {
            let r = Request::get("/status").try_send(addr).ok()?;
            (r.status == 200 && r.json()["value"]["ready"] == true).then_some(())
        });
        let profile = TestDir::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         format!("--user-data-dir={}", profile.data().display())],
            }
        }}});
        let mut b = Self {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        b.session = b.call("POST", "/session", Some(caps))["sessionId"]
            .as_str()
            .expect("a WebDriver session")
            .to_string();
        b
    }

    /// One WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let mut req = Request::new(method, path).header("content-type", "application/json");
        if let Some(body) = body {
            req = req.body(body.to_string().into_bytes());
        }
        let r = req.send(self.addr);
        assert_eq!(r.status, 200, "WebDriver {method} {path}: {r}");
        r.json()["value"].clone()
    }

    fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.session("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` in the page; its result.
    fn run(&self, script: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
    }

    /// The element `css` selects, once the page has one.
    fn find(&self, css: &str) -> String {
        wait_for(&format!("the page to show `{css}`"), || {
            let r = Request::new("POST", &format!("/session/{}/element", self.session))
                .header("content-type", "application/json")
                .body(
                    json!({"using": "css selector", "value": css})
                        .to_string()
                        .into_bytes(),
                )
                .send(self.addr);
            (r.status == 200).then(|| r.json()["value"][ELEMENT].as_str().unwrap().to_string())
        })
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.session("POST", &format!("/element/{e}/click"), Some(json!({})));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Request::new("DELETE", &format!("/session/{}", self.session)).try_send(self.addr);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn chromium() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromium (Debian chromium): run scripts/fetch-ops-tools.sh")
}

fn as_tenant(token: &str, method: &str, path: &str) -> Request {
    Request::new(method, path).header("authorization", &format!("Bearer {token}"))
}

#[test]
fn the_dashboard_shows_a_function_fills_its_charts_and_rolls_it_back() {
    let dir = TestDir::new();
    let node = Node::start(&dir.data(), Some("tenants = true"));
    let op = std::fs::read_to_string(node.data_dir().join("operator-token")).unwrap();
    let r = node.send(as_tenant(op.trim(), "POST", "/admin/v1/tenants/acme").body(b"{}".to_vec()));
    assert_eq!(r.status, 201, "{r}");
    let token = r.json()["token"].as_str().unwrap().to_string();
    let deploy = |fixture_name: &str| {
        let bytes = std::fs::read(fixture(fixture_name)).unwrap();
        let r = node.send(
            as_tenant(
                &token,
                "POST",
                "/admin/v1/functions/greet/versions?public=true",
            )
            .body(bytes),
        );
        assert_eq!(r.status, 201, "{r}");
        r.json()["version"].as_str().unwrap().to_string()
    };
    let v1 = deploy("greet-v1");
    let v2 = deploy("greet-v2");
    assert_eq!(node.get("/fn/acme/greet/").text(), "v2");

    // The assets are public and locked down; the data behind them needs a token.
    let js = node.get("/ui/app.js");
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(
        js.header("content-security-policy")
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(node.get("/ui/nothing-here").status, 404);
    let page = node.get("/ui");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/ui/app.js"));
    assert_eq!(node.get("/admin/v1/dashboard").status, 401);
    let overview = node.send(as_tenant(&token, "GET", "/admin/v1/dashboard"));
    assert_eq!(overview.status, 200, "{overview}");
    assert_eq!(overview.json()["functions"][0]["live"], v2.as_str());

    let browser = Browser::start();
    let ui = format!("http://{}/ui/", node.addr());
    // Without a token the page asks for one.
    browser.go(&ui);
    browser.find("#login:not([hidden])");
    // With the tenant's token (in the fragment, never sent to the server): its function.
    browser.go(&format!("{ui}#token={token}"));
    browser.find(&format!(
        ".function[data-name=\"greet\"] .live-version[data-version=\"{v2}\"]"
    ));
    // A chart fills as requests arrive.
    wait_for("the request-rate chart to show traffic", || {
        for _ in 0..20 {
            assert_eq!(node.get("/fn/acme/greet/").status, 200);
        }
        let max = browser.run(
            "const c = document.querySelector('.function[data-name=\"greet\"] .chart[data-metric=\"rate\"]');\
             return c ? Number(c.getAttribute('data-max')) : 0;",
        );
        (max.as_f64().unwrap_or(0.0) > 0.0).then_some(())
    });
    // Rollback from the page: the function answers with its previous version.
    browser.click("button[data-action=\"rollback\"][data-function=\"greet\"]");
    wait_for("the rollback to take effect", || {
        (node.get("/fn/acme/greet/").text() == "v1").then_some(())
    });
    browser.find(&format!(
        ".function[data-name=\"greet\"] .live-version[data-version=\"{v1}\"]"
    ));
}
