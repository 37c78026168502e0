//! HTML reports checked in a real browser (headless Chromium, installed by `scripts/test.sh`): every chart
//! rendered (SVG with drawn paths and text), no console errors, screenshots saved under
//! `target/report-screenshots/`; user strings come out escaped.

mod common;

use common::{fixture, tsd};
use std::path::{Path, PathBuf};
use std::process::Command;
use tsd::adapter::{Adapter, AdapterConfig, ModuleAdapter};
use tsd::inspect::{inspect, InspectOptions};
use tsd::linalg::cache::SvdCache;
use tsd::linalg::Matrix;
use tsd::weights::memory::InMemoryModel;

fn chromium() -> Option<PathBuf> {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(o) = Command::new("which").arg(c).output() {
            if o.status.success() {
                return Some(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
            }
        }
    }
    None
}

/// Loads `html` in headless Chromium: returns (serialised DOM, stderr) and writes a screenshot.
fn load(browser: &Path, html: &Path, shot: &Path) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ];
    let url = format!("file://{}", html.display());
    let dom = Command::new(browser)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--dump-dom", &url])
        .output()
        .unwrap();
    assert!(
        dom.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let profile2 = tempfile::tempdir().unwrap();
    let s = Command::new(browser)
        .args(flags)
        .arg(format!("--user-data-dir={}", profile2.path().display()))
        .args([
            "--window-size=1400,2200",
            &format!("--screenshot={}", shot.display()),
            &url,
        ])
        .output()
        .unwrap();
    assert!(
        s.status.success() && shot.exists(),
        "screenshot failed: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    (
        String::from_utf8_lossy(&dom.stdout).to_string(),
        String::from_utf8_lossy(&dom.stderr).to_string(),
    )
}

fn check_page(browser: &Path, html: &Path, name: &str, min_charts: usize) {
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/report-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let (dom, log) = load(browser, html, &shots.join(format!("{name}.png")));
    let svgs: Vec<&str> = dom.split("<svg").skip(1).collect();
    assert!(
        svgs.len() >= min_charts,
        "{name}: {} charts rendered, expected ≥ {min_charts}",
        svgs.len()
    );
    for (i, s) in svgs.iter().enumerate() {
        let body = s.split("</svg>").next().unwrap();
        let drawn = body.matches("<path").count()
            + body.matches("<polyline").count()
            + body.matches("<rect").count()
            + body.matches("<circle").count();
        assert!(drawn > 2, "{name}: chart {i} draws nothing");
        assert!(body.contains("<text"), "{name}: chart {i} has no text");
    }
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") && (l.contains("ERROR") || l.contains("Uncaught")))
        .collect();
    assert!(errors.is_empty(), "{name}: console errors: {errors:?}");
    assert!(
        !dom.contains("<script"),
        "{name}: a script element made it into the page"
    );
    for remote in ["http://", "https://"] {
        assert!(
            !std::fs::read_to_string(html)
                .unwrap()
                .contains(&format!("src=\"{remote}")),
            "{name}: external resource"
        );
    }
}

/// The browser the report checks need: a test that cannot load its pages fails, naming the fix.
fn browser() -> PathBuf {
    chromium().expect(
        "no Chromium found (chromium, chromium-browser or google-chrome on PATH): \
         scripts/test.sh installs Debian's package as root, or `sudo apt-get install chromium`",
    )
}

#[test]
fn user_strings_are_escaped_in_reports() {
    // A module name carrying markup, analysed against an in-memory base that has it.
    let evil = "model.layers.0.<script>alert(1)</script>.q_proj";
    let w = Matrix::new(
        6,
        5,
        (0..30).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect(),
    )
    .unwrap();
    let mut base = InMemoryModel::default();
    base.tensors.insert(format!("{evil}.weight"), w);
    let ad = Adapter {
        path: "<b>adapter</b>".into(),
        config: AdapterConfig {
            r: 1,
            lora_alpha: 1.0,
            ..Default::default()
        },
        modules: vec![ModuleAdapter {
            module: evil.into(),
            r: 1,
            alpha: 1.0,
            scaling: 1.0,
            a: Matrix::new(1, 5, vec![0.1, 0.2, -0.1, 0.3, 0.0]).unwrap(),
            b: Matrix::new(6, 1, vec![0.5, -0.2, 0.1, 0.0, 0.3, 0.2]).unwrap(),
            dora_magnitude: None,
            dash: None,
        }],
        warnings: vec!["<img src=x onerror=alert(1)>".into()],
        unmatched: vec![],
        metadata: Default::default(),
        extras: Default::default(),
    };
    let opts = InspectOptions {
        keep_spectrum: true,
        ..Default::default()
    };
    let rep = inspect(&ad, &base, None, &opts, &SvdCache::disabled(), &|_| {}).unwrap();
    let html = tsd::report::pages::inspect_html(&rep).unwrap();
    assert!(
        !html.contains("<script>alert"),
        "module name must be escaped"
    );
    assert!(!html.contains("<img src=x"), "warnings must be escaped");
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;")
            || html.contains("&lt;script&gt;alert(1)&lt;/script&gt;")
    );
    {
        let b = browser();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("evil.html");
        std::fs::write(&p, &html).unwrap();
        check_page(&b, &p, "inspect-escaped", 4);
    }
}

#[test]
fn inspect_and_run_reports_render_in_chromium() {
    let browser = browser();
    let d = tempfile::tempdir().unwrap();
    // inspect report from the PEFT fixture with a dense reference
    let html = d.path().join("inspect.html");
    let out = tsd(d.path())
        .args([
            "inspect",
            fixture("peft-lora").to_str().unwrap(),
            "--reference",
            fixture("tiny-llama-ft").to_str().unwrap(),
            "--html",
            html.to_str().unwrap(),
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_page(&browser, &html, "inspect", 3 + 10);
    // run report from a short LoRA-Dash run on the tiny model, tracked against itself
    let data = d.path().join("train.json");
    let ex: Vec<serde_json::Value> = (0..24)
        .map(|i| serde_json::json!({"instruction": format!("Question {i}?"), "input": "", "output": format!("the correct answer is answer{}", i % 3 + 1), "answer": "x"}))
        .collect();
    std::fs::write(&data, serde_json::to_string(&ex).unwrap()).unwrap();
    let run = d.path().join("run");
    let out = tsd(d.path())
        .args([
            "train",
            "--model",
            fixture("tiny-llama").to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ])
        .args([
            "--method",
            "lora-dash",
            "--rank",
            "4",
            "--max-steps",
            "6",
            "--dash-t",
            "2",
            "--dash-s",
            "3",
            "--batch-size",
            "2",
            "--micro-batch-size",
            "2",
        ])
        .args([
            "--save-every",
            "2",
            "--lr",
            "0.02",
            "--warmup-steps",
            "1",
            "--val-size",
            "4",
            "--eval-every",
            "2",
            "--cutoff-len",
            "96",
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tsd(d.path())
        .args([
            "report",
            run.to_str().unwrap(),
            "--reference",
            run.to_str().unwrap(),
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_page(&browser, &run.join("report.html"), "run", 6);
    // reproduction report from the smoke grid on the tiny model (lr check, capture, generate)
    let data = d.path().join("data");
    for (task, file, n, labels) in [
        ("ARC-Easy", "train.json", 30, ["answer1", "answer2"]),
        ("ARC-Easy", "test.json", 4, ["answer1", "answer2"]),
        ("boolq", "test.json", 4, ["true", "false"]),
    ] {
        std::fs::create_dir_all(data.join(task)).unwrap();
        let ex: Vec<serde_json::Value> = (0..n)
            .map(|i| serde_json::json!({"instruction": format!("Q{i}?"), "input": "", "output": format!("the correct answer is {}", labels[i % 2]), "answer": labels[i % 2]}))
            .collect();
        std::fs::write(
            data.join(task).join(file),
            serde_json::to_string(&ex).unwrap(),
        )
        .unwrap();
    }
    let repro = d.path().join("repro");
    let out = tsd(d.path())
        .args([
            "reproduce",
            "commonsense",
            "--preset",
            "smoke",
            "--model",
            fixture("tiny-llama").to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            repro.to_str().unwrap(),
            "--train-on-inputs",
            "true",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // measured, paper, unparseable rate, TSD capture
    check_page(&browser, &repro.join("report.html"), "reproduce", 4);
}
