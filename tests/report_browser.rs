//! HTML reports checked in a real browser (headless Chromium, installed by `scripts/test.sh`): every chart
//! rendered (SVG with drawn paths and text), no console errors, screenshots saved under
//! `target/report-screenshots/`; user strings come out escaped. The rendered geometry is measured
//! at a 1400 px window by a script injected into a copy of each page (the reports carry none):
//! no horizontal scrolling, no chart text under 11 px on screen, a `<title>` hover value on every
//! chart point. The committed reports that re-render from committed records are re-rendered and
//! measured too.

mod common;

use common::{fixture, tsd};
use std::path::{Path, PathBuf};
use std::process::Command;
use tsd::adapter::{Adapter, AdapterConfig, ModuleAdapter};
use tsd::inspect::{inspect, InspectOptions};
use tsd::linalg::Matrix;
use tsd::svd_cache::SvdCache;
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

/// The window the reports are designed for, and the smallest on-screen chart text.
const WINDOW_W: f64 = 1400.0;
const MIN_TEXT_PX: f64 = 11.0;

/// Measures a page's rendered geometry in headless Chromium at a 1400 px window, every
/// `<details>` opened: the script is
/// injected into a copy of the page (the page itself has none), writes its measurements as JSON
/// into the DOM, and `--dump-dom` returns them.
const MEASURE: &str = r#"<script>
(function () {
  // The first screen as it opens (details closed): the text within the top 900 px.
  var first = [];
  var walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  var node;
  while ((node = walk.nextNode())) {
    var rg = document.createRange();
    rg.selectNodeContents(node);
    var b = rg.getBoundingClientRect();
    if (b.height > 0 && b.bottom <= 900) first.push(node.textContent);
  }
  // Collapsed tables are measured open: the page must fit either way.
  document.querySelectorAll('details').forEach(function (d) { d.open = true; });
  var de = document.documentElement;
  var out = { scroll_width: de.scrollWidth, client_width: de.clientWidth, texts: 0, small: [],
              charts: [], first_screen: first.join(' ') };
  document.querySelectorAll('svg text').forEach(function (t) {
    var s = t.textContent.trim();
    if (!s) return;
    out.texts++;
    var r = t.getBoundingClientRect();
    var rot = (t.getAttribute('transform') || '').indexOf('rotate') >= 0;
    var m = t.getScreenCTM();
    var scale = m ? Math.hypot(m.a, m.b) : 1;
    var fs = parseFloat(getComputedStyle(t).fontSize) * scale;
    var h = rot ? r.width : r.height;
    if (h < 11 || fs < 11) out.small.push([s, Math.round(h * 10) / 10, Math.round(fs * 10) / 10]);
  });
  document.querySelectorAll('svg').forEach(function (svg) {
    var w = parseFloat(svg.getAttribute('width')) || 0;
    var targets = [];
    svg.querySelectorAll('title').forEach(function (t) {
      var p = t.parentElement;
      if (p.tagName === 'circle') targets.push([+p.getAttribute('cx'), +p.getAttribute('cy')]);
    });
    var points = 0, bare = [];
    svg.querySelectorAll('circle').forEach(function (c) {
      if (c.getAttribute('fill-opacity') === '0' || c.getAttribute('fill') === 'none') return;
      if (c.getAttribute('fill') === '#FFFFFF') return;
      var x = +c.getAttribute('cx'), y = +c.getAttribute('cy');
      if (x > w - 200) return; // the legend column
      points++;
      if (!targets.some(function (q) { return Math.abs(q[0] - x) <= 1.5 && Math.abs(q[1] - y) <= 1.5; }))
        bare.push([x, y]);
    });
    out.charts.push({ titles: svg.querySelectorAll('title').length, points: points,
                      bare: bare.slice(0, 5), bare_count: bare.length,
                      rendered_width: svg.getBoundingClientRect().width, width: w });
  });
  var pre = document.createElement('pre');
  pre.id = 'tsd-measure';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"#;

/// What [`MEASURE`] found on one page.
fn measure(browser: &Path, html: &Path) -> serde_json::Value {
    let d = tempfile::tempdir().unwrap();
    let copy = d.path().join("measured.html");
    let page = std::fs::read_to_string(html).unwrap();
    let i = page.rfind("</body>").expect("a </body>");
    std::fs::write(&copy, format!("{}{MEASURE}{}", &page[..i], &page[i..])).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={WINDOW_W},1000"))
        .args(["--dump-dom", &format!("file://{}", copy.display())])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let json = dom
        .split("<pre id=\"tsd-measure\">")
        .nth(1)
        .and_then(|r| r.split("</pre>").next())
        .unwrap_or_else(|| panic!("no measurement in the DOM of {}", html.display()));
    let json = json
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&json).unwrap()
}

/// The page fits a 1400 px window, its chart text is ≥ 11 px on screen, and every chart has hover
/// values, on every drawn point.
fn check_geometry(browser: &Path, html: &Path, name: &str) {
    let m = measure(browser, html);
    eprintln!(
        "{name}: scroll width {} px, {} chart texts, {} charts",
        m["scroll_width"],
        m["texts"],
        m["charts"].as_array().map_or(0, |c| c.len())
    );
    let sw = m["scroll_width"].as_f64().unwrap();
    assert!(
        sw <= WINDOW_W,
        "{name}: the page scrolls sideways at a {WINDOW_W} px window (scroll width {sw} px)"
    );
    assert!(m["texts"].as_u64().unwrap() > 0, "{name}: no chart text");
    let small = m["small"].as_array().unwrap();
    assert!(
        small.is_empty(),
        "{name}: {} chart text(s) under {MIN_TEXT_PX} px on screen ([text, box px, font px]): {:?}",
        small.len(),
        &small[..small.len().min(8)]
    );
    for (i, c) in m["charts"].as_array().unwrap().iter().enumerate() {
        assert!(
            c["titles"].as_u64().unwrap() > 0,
            "{name}: chart {i} has no <title> hover values"
        );
        assert_eq!(
            c["bare_count"].as_u64().unwrap(),
            0,
            "{name}: chart {i} has {} drawn point(s) without a hover value, e.g. {}",
            c["bare_count"],
            c["bare"]
        );
        assert!(
            c["rendered_width"].as_f64().unwrap() >= c["width"].as_f64().unwrap() - 0.5,
            "{name}: chart {i} is shrunk on screen ({} of {} px)",
            c["rendered_width"],
            c["width"]
        );
    }
}

/// The reproduction page's first screen (the top 900 px of a 1400 px window) shows every
/// configuration's mean accuracy with its 95 % interval, as the record (`results.json`) has them.
fn check_first_screen(browser: &Path, html: &Path, results: &Path, name: &str) {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results).unwrap()).unwrap();
    let first = measure(browser, html)["first_screen"]
        .as_str()
        .unwrap()
        .to_string();
    let configs = r["summary"]["configs"].as_array().unwrap();
    assert!(
        !configs.is_empty(),
        "{name}: no configuration in the record"
    );
    for c in configs {
        let mean = format!("{:.2}", c["mean"].as_f64().unwrap());
        assert!(
            first.contains(&mean),
            "{name}: the first screen lacks {} r={}'s mean {mean}: {first}",
            c["method"],
            c["rank"]
        );
        if let Some(ci) = c["ci"].as_object() {
            let iv = format!(
                "{:.2} … {:.2}",
                ci["lo"].as_f64().unwrap(),
                ci["hi"].as_f64().unwrap()
            );
            assert!(
                first.contains(&iv),
                "{name}: the first screen lacks {} r={}'s interval {iv}: {first}",
                c["method"],
                c["rank"]
            );
        }
    }
}

/// The page without its header line (the command and date that rendered it).
fn without_header(page: &str) -> String {
    page.lines()
        .filter(|l| !l.contains("class=\"meta prov\""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn check_page(browser: &Path, html: &Path, name: &str, min_charts: usize) {
    check_geometry(browser, html, name);
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
    let html = tsd::render::inspect::inspect_html(&rep).unwrap();
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
    // heat maps, amplification bars, one spectrum per module type
    check_page(&browser, &html, "inspect", 3 + 1);
    let page = std::fs::read_to_string(&html).unwrap();
    for expected in [
        "Findings",
        "above null",
        "mean accuracy / null mean",
        "null δ band",
    ] {
        assert!(page.contains(expected), "inspect page lacks {expected:?}");
    }
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
    let page = std::fs::read_to_string(run.join("report.html")).unwrap();
    for expected in [
        "Capture against its null, per checkpoint",
        "null: mean to p95",
        "κ (tested)",
    ] {
        assert!(page.contains(expected), "run page lacks {expected:?}");
    }
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
    // measured, paper, a panel per task, loss curves, TSD capture per configuration
    check_page(&browser, &repro.join("report.html"), "reproduce", 4);
    check_first_screen(
        &browser,
        &repro.join("report.html"),
        &repro.join("results.json"),
        "reproduce",
    );
    let page = std::fs::read_to_string(repro.join("report.html")).unwrap();
    for expected in ["Accuracy against Params%", "Loss curves", "majority answer"] {
        assert!(
            page.contains(expected),
            "reproduction page lacks {expected:?}"
        );
    }
    // Re-rendered from the saved record alone (no data, no model): the same page.
    std::fs::remove_file(repro.join("report.html")).unwrap();
    let out = tsd(d.path())
        .args(["reproduce", "commonsense", "--out"])
        .arg(&repro)
        .args(["--render-only", "--data", "/nonexistent"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = std::fs::read_to_string(repro.join("report.html")).unwrap();
    assert_eq!(
        without_header(&again),
        without_header(&page),
        "the page re-rendered from results.json differs from the grid's"
    );
}

/// The committed reports that re-render from committed records (README, "Reports to open without
/// running anything"), re-rendered by today's tsd and measured: the run report from its saved
/// track (capture beside its null) and the inspect report of the committed
/// SmolLM2 LoRA on the default model, and the cpu reproduction's page from its committed record
/// (`results.json` and the runs' `record.json`, copied: the committed page is not touched), and
/// the demo run from its committed checkpoints and track.
#[test]
fn committed_reports_re_render_and_fit() {
    let browser = browser();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = tempfile::tempdir().unwrap();
    let cpu = root.join("reproductions/commonsense/cpu");
    let repro = d.path().join("cpu");
    std::fs::create_dir_all(&repro).unwrap();
    std::fs::copy(cpu.join("results.json"), repro.join("results.json")).unwrap();
    for e in std::fs::read_dir(cpu.join("runs")).unwrap() {
        let e = e.unwrap();
        let rec = e.path().join("record.json");
        if rec.exists() {
            let to = repro.join("runs").join(e.file_name());
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(&rec, to.join("record.json")).unwrap();
        }
    }
    let out = tsd(d.path())
        .args(["reproduce", "commonsense", "--out"])
        .arg(&repro)
        .arg("--render-only")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = repro.join("report.html");
    let page = std::fs::read_to_string(&html).unwrap();
    for expected in [
        "Accuracy against Params%",
        "null (q, k, v): mean to p95",
        "shuffled answers",
        "does not keep Δσ per direction",
    ] {
        assert!(
            page.contains(expected),
            "reproduction page lacks {expected:?}"
        );
    }
    // accuracy, paper, 7 tasks, loss curves, 3 capture panels
    check_page(&browser, &html, "committed-cpu-reproduction", 2 + 7 + 1 + 3);
    check_first_screen(
        &browser,
        &html,
        &repro.join("results.json"),
        "committed-cpu-reproduction",
    );
    let run = root.join("reproductions/commonsense/cpu/runs/dash-r1-s1");
    let html = d.path().join("run.html");
    let out = tsd(d.path())
        .args(["report", run.to_str().unwrap(), "--track"])
        .arg(run.join("track.json"))
        .arg("-o")
        .arg(&html)
        .arg("-q")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        !page.contains("No null in this record") && page.contains("above null"),
        "the committed track carries capture beside its null"
    );
    check_page(&browser, &html, "committed-dash-r1-s1-run", 6);
    // The demo run, committed with its checkpoints and its report's track record.
    let demo = root.join("reproductions/demo/run");
    let html = d.path().join("demo.html");
    let out = tsd(d.path())
        .args(["report", demo.to_str().unwrap(), "--track"])
        .arg(root.join("reports/demo-run-report.track.json"))
        .arg("-o")
        .arg(&html)
        .arg("-q")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_page(&browser, &html, "committed-demo-run", 4);
    let html = d.path().join("inspect.html");
    let out = common::tsd_with_default_model(d.path())
        .args([
            "inspect",
            root.join("data/adapters/smollm2-arc-lora")
                .to_str()
                .unwrap(),
            "--base",
            "default",
            "--html",
            html.to_str().unwrap(),
            "-o",
            d.path().join("inspect.txt").to_str().unwrap(),
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(&html).unwrap();
    for expected in [
        "Findings",
        "null δ band",
        "the null expects",
        "Near-null picks",
    ] {
        assert!(page.contains(expected), "inspect page lacks {expected:?}");
    }
    // heat maps (2), amplification bars, one spectrum per module type (5)
    check_page(&browser, &html, "committed-smollm2-inspect", 3 + 5);
}
