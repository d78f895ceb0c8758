//! `explain`, tested like a product: for every canary, the failure it causes in its scenario is
//! drawn as a timeline, and the page is rendered in a real headless browser (Chromium, which
//! `make test` installs), which must run its script and show the violation mark, the fault lines and
//! a lane per server.
//!
//! Failures injected: each canary's historic bug, in its own scenario (first listed seed).
//! Invariants: the page holds the operation or moment the checker names, every scheduled fault, a
//! lane per server, leadership, and the nodes' log lines; rendered, the DOM still has them.
#![cfg(madsim)]

use std::path::Path;
use std::process::Command;

use durakv_sim::canaries::CASES;
use durakv_sim::explain::html;
use durakv_sim::harness::{RunOptions, Verdict, run_with};
use durakv_sim::scenario::Scenario;

fn count(page: &str, needle: &str) -> usize {
    page.matches(needle).count()
}

/// Render `file` in headless Chromium and return the DOM after its scripts ran, or `None` (said
/// loudly) where no Chromium is installed outside CI. In CI a missing browser fails the test.
fn render(file: &Path) -> Option<String> {
    let Some(browser) = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium is missing: `make deps` installs it (apt-get install chromium)"
        );
        eprintln!("SKIPPED the browser half of explain's test: no chromium (apt-get install chromium)");
        return None;
    };
    let profile = tempfile_dir("chromium-profile");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", file.display()))
        .output()
        .expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("durakv-explain-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn every_canary_failure_explains_itself_on_a_rendered_timeline() {
    let dir = tempfile_dir("pages");
    for case in CASES {
        let path = durakv_sim::repo_root().join("scenarios").join(case.scenario);
        let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let seed = case.seeds[0];
        let opts = RunOptions {
            canaries: vec![case.canary.to_string()],
            capture_logs: true,
            ..RunOptions::default()
        };
        let r = run_with(&scenario, seed, &opts);
        let Verdict::Fail(f) = &r.verdict else { panic!("{}: did not fail: {:?}", case.canary, r.verdict) };
        let page = html(&scenario, seed, &r, "durakv-sim run …");
        let what = format!("{} ({})", case.canary, f.explanation);
        assert_eq!(count(&page, "class=\"violation-line\""), 1, "{what}");
        assert!(page.contains(&format!("FAILED {}", f.invariant)), "{what}");
        assert_eq!(count(&page, "class=\"fault\""), scenario.faults.len(), "{what}");
        let servers = (scenario.cluster.nodes + scenario.cluster.spare) as usize;
        assert_eq!(count(&page, "class=\"server-lane\""), servers, "{what}");
        assert!(page.contains("class=\"leader\""), "{what}: leadership is drawn");
        assert!(!r.logs.is_empty(), "{what}: the nodes' logs were kept");
        // A failure that names a client's operation outlines it.
        if f.explanation.contains(" by client ") {
            assert!(page.contains("class=\"op violation\""), "{what}");
        }
        let file = dir.join(format!("{}.html", case.canary));
        std::fs::write(&file, &page).expect("write page");
        if let Some(dom) = render(&file) {
            assert!(dom.contains("data-rendered=\"yes\""), "{what}: the page's script ran");
            assert!(dom.contains("class=\"violation-line\""), "{what}: rendered with its violation");
            assert_eq!(count(&dom, "class=\"fault\""), scenario.faults.len(), "{what}: rendered faults");
            assert!(dom.contains("viewBox"), "{what}: the zoom set up its view box");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
