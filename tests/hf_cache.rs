//! Base models resolved by Hugging Face id through a cache laid out as huggingface_hub writes it:
//! `models--owner--name/blobs/<hash>`, `snapshots/<sha>/<file>` as relative symlinks into
//! `blobs/`, `refs/<branch or tag>` holding the sha, `.no_exist/<sha>/<file>` markers. The cache
//! roots and revision answers expected are the real huggingface_hub's
//! (`tests/fixtures/hf-cache-rules.json`, from `scripts/make_hf_cache_rules.py`). Every case
//! runs the real binary offline, except the last ones, which point `HF_ENDPOINT` at a closed port
//! or at a local stand-in for the Hub to see how network and HTTP failures are reported.

mod common;

use common::{fixture, tsd};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

const ID: &str = "tsd-test/tiny-llama";
const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "cccccccccccccccccccccccccccccccccccccccc";

fn repo_dir(root: &Path, id: &str) -> PathBuf {
    root.join(format!("models--{}", id.replace('/', "--")))
}

/// Stores `bytes` as a blob named by its sha256 and links `snapshots/<commit>/<name>` to it with
/// a relative symlink, as huggingface_hub's `_create_symlink` does.
fn put(root: &Path, id: &str, commit: &str, name: &str, bytes: &[u8]) {
    let repo = repo_dir(root, id);
    let hash = format!("{:x}", Sha256::digest(bytes));
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::write(repo.join("blobs").join(&hash), bytes).unwrap();
    let link = repo.join("snapshots").join(commit).join(name);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    let depth = name.split('/').count() + 1;
    let target = format!("{}blobs/{hash}", "../".repeat(depth));
    std::os::unix::fs::symlink(target, &link).unwrap();
}

/// Every file of a fixture directory into one snapshot.
fn put_dir(root: &Path, id: &str, commit: &str, src: &Path) {
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        put(root, id, commit, &name, &std::fs::read(&p).unwrap());
    }
}

fn set_ref(root: &Path, id: &str, name: &str, commit: &str) {
    let p = repo_dir(root, id).join("refs").join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, commit).unwrap();
}

fn no_exist(root: &Path, id: &str, commit: &str, name: &str) {
    let p = repo_dir(root, id).join(".no_exist").join(commit).join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"").unwrap();
}

/// `tsd` with every Hugging Face variable cleared and `HOME` inside the test's directory.
fn cmd(home: &Path) -> assert_cmd::Command {
    let mut c = tsd(home);
    for v in [
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "XDG_CACHE_HOME",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "TRANSFORMERS_OFFLINE",
        // The stand-in Hub is on 127.0.0.1: no proxy in between.
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        c.env_remove(v);
    }
    c.env("HOME", home);
    c
}

/// `tsd inspect` of the PEFT fixture adapter on `base`: (exit code, parsed stdout, stderr).
fn inspect(
    c: &mut assert_cmd::Command,
    base: &str,
    extra: &[&str],
) -> (i32, Option<serde_json::Value>, String) {
    let adapter = fixture("peft-lora");
    let out = c
        .args(["inspect", adapter.to_str().unwrap(), "--base", base])
        .args(["--json", "-q"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).ok(),
        stderr,
    )
}

/// The directory in inspect's `base` ("safetensors model at DIR (N file(s))").
fn base_dir(json: &serde_json::Value) -> String {
    let base = json["base"].as_str().unwrap();
    let dir = base.strip_prefix("safetensors model at ").unwrap_or(base);
    dir.rsplit_once(" (").map_or(dir, |(d, _)| d).to_string()
}

/// The snapshot directory `tsd inspect` read the base from, on success.
fn base_used(c: &mut assert_cmd::Command, extra: &[&str]) -> String {
    let (code, json, err) = inspect(c, ID, extra);
    assert_eq!(code, 0, "{err}");
    base_dir(&json.unwrap())
}

fn tsd_tsds(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["tsd"].clone())
        .collect()
}

/// What the real huggingface_hub answered (scripts/make_hf_cache_rules.py).
fn rules() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("hf-cache-rules.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_cache_root_is_the_one_huggingface_hub_uses() {
    let d = tempfile::tempdir().unwrap();
    let tiny = fixture("tiny-llama");
    let rules = rules();
    let cases = rules["roots"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for case in cases {
        let root = d.path().join(case["root"].as_str().unwrap());
        if !root.exists() {
            put_dir(&root, ID, A, &tiny);
            set_ref(&root, ID, "main", A);
        }
    }
    let base = d.path().to_str().unwrap();
    for case in cases {
        let mut c = cmd(d.path());
        for (k, v) in case["env"].as_object().unwrap() {
            c.env(k, v.as_str().unwrap().replace("{base}", base));
        }
        let used = base_used(&mut c, &[]);
        let want = d
            .path()
            .join(case["root"].as_str().unwrap())
            .join(format!("models--tsd-test--tiny-llama/snapshots/{A}"));
        assert_eq!(PathBuf::from(&used), want, "{}", case["env"]);
    }
    // The symlinked snapshot reads as the plain directory does.
    let (_, from_dir, err) = inspect(&mut cmd(d.path()), tiny.to_str().unwrap(), &[]);
    let from_dir = from_dir.unwrap_or_else(|| panic!("{err}"));
    let (_, from_hub, err) = inspect(
        cmd(d.path()).env("HF_HUB_CACHE", d.path().join("hub-cache")),
        ID,
        &[],
    );
    assert_eq!(
        tsd_tsds(&from_hub.unwrap_or_else(|| panic!("{err}"))),
        tsd_tsds(&from_dir)
    );
}

#[test]
fn revisions_by_branch_tag_and_sha_resolve_as_huggingface_hub_does_offline() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("hub");
    let tiny = fixture("tiny-llama");
    // The layout scripts/make_hf_cache_rules.py gave huggingface_hub.
    for commit in [A, B, C] {
        put_dir(&root, ID, commit, &tiny);
    }
    set_ref(&root, ID, "main", A);
    set_ref(&root, ID, "dev", B);
    // A tag is stored as refs/<tag>, like a branch; a PR ref nests.
    set_ref(&root, ID, "v1.0", C);
    set_ref(&root, ID, "refs/pr/1", B);
    let run = |rev: &str| {
        let mut c = cmd(d.path());
        c.env("HF_HUB_CACHE", &root);
        inspect(&mut c, ID, &["--revision", rev, "--offline"])
    };
    let rules = rules();
    let cases = rules["revisions"].as_object().unwrap();
    assert!(cases.values().any(|v| v.is_null()) && cases.contains_key(B));
    for (rev, want) in cases {
        let (code, json, err) = run(rev);
        match want.as_str() {
            Some(sha) => {
                assert_eq!(code, 0, "{rev}: {err}");
                let base = base_dir(&json.unwrap());
                assert!(base.ends_with(&format!("snapshots/{sha}")), "{rev}: {base}");
            }
            // Not in the cache for huggingface_hub either: refused, naming the revision.
            None => {
                assert_eq!(code, 2, "{rev}: {err}");
                assert!(err.contains(rev.as_str()), "{rev}: {err}");
                assert!(err.contains("offline"), "{rev}: {err}");
                assert_eq!(err.trim().lines().count(), 1, "{err}");
            }
        }
    }
    // No revision is `main`.
    let (code, json, err) = inspect(cmd(d.path()).env("HF_HUB_CACHE", &root), ID, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(base_dir(&json.unwrap()).ends_with(&format!("snapshots/{A}")));
    // A path-like revision never leaves the cache.
    let (code, _, err) = run("../../x");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--revision"), "{err}");
}

#[test]
fn a_sharded_checkpoint_resolves_through_the_cache() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("hub");
    put_dir(&root, ID, A, &fixture("tiny-llama-sharded"));
    set_ref(&root, ID, "main", A);
    let (code, hub, err) = inspect(cmd(d.path()).env("HF_HUB_CACHE", &root), ID, &[]);
    assert_eq!(code, 0, "{err}");
    let dir = fixture("tiny-llama-sharded");
    let (_, local, _) = inspect(&mut cmd(d.path()), dir.to_str().unwrap(), &[]);
    assert_eq!(tsd_tsds(&hub.unwrap()), tsd_tsds(&local.unwrap()));
    // A shard the index names but the cache lacks is named, offline.
    let repo = repo_dir(&root, ID);
    std::fs::remove_file(
        repo.join("snapshots")
            .join(A)
            .join("model-00002-of-00002.safetensors"),
    )
    .unwrap();
    let (code, _, err) = inspect(cmd(d.path()).env("HF_HUB_CACHE", &root), ID, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    assert!(err.contains("offline"), "{err}");
}

#[test]
fn pickle_only_and_missing_weights_are_refused_offline() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("hub");
    let config = std::fs::read(fixture("tiny-llama/config.json")).unwrap();
    let run = || inspect(cmd(d.path()).env("HF_HUB_CACHE", &root), ID, &[]);
    // config.json alone: the weights are not cached, and offline mode says so.
    put(&root, ID, A, "config.json", &config);
    set_ref(&root, ID, "main", A);
    let (code, _, err) = run();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("offline"), "{err}");
    assert!(err.contains("model.safetensors"), "{err}");
    // `.no_exist` markers for both safetensors names: the repo has none (not "not cached").
    no_exist(&root, ID, A, "model.safetensors");
    no_exist(&root, ID, A, "model.safetensors.index.json");
    let (code, _, err) = run();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the repo has neither"), "{err}");
    // A pickle checkpoint: refused by name, never unpickled.
    put(
        &root,
        ID,
        A,
        "pytorch_model.bin",
        b"\x80\x02not really a pickle",
    );
    let (code, _, err) = run();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pytorch_model.bin"), "{err}");
    assert!(err.contains("pickle weights are not read"), "{err}");
    assert!(err.contains("convert to safetensors"), "{err}");
    // `.no_exist` for the single file does not hide a cached sharded index.
    for e in std::fs::read_dir(fixture("tiny-llama-sharded")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name != "config.json" {
            put(&root, ID, A, &name, &std::fs::read(&p).unwrap());
        }
    }
    std::fs::remove_file(
        repo_dir(&root, ID)
            .join(".no_exist")
            .join(A)
            .join("model.safetensors.index.json"),
    )
    .unwrap();
    let (code, _, err) = run();
    assert_eq!(code, 0, "{err}");
    // A missing config.json recorded absent is named as such.
    let d2 = tempfile::tempdir().unwrap();
    let root2 = d2.path().join("hub");
    put(
        &root2,
        ID,
        A,
        "model.safetensors",
        &std::fs::read(fixture("tiny-llama/model.safetensors")).unwrap(),
    );
    set_ref(&root2, ID, "main", A);
    no_exist(&root2, ID, A, "config.json");
    let (code, _, err) = inspect(cmd(d2.path()).env("HF_HUB_CACHE", &root2), ID, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("config.json") && err.contains("absent"),
        "{err}"
    );
}

#[test]
fn params_reads_a_config_from_the_cache() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("hf/hub");
    put_dir(&root, ID, A, &fixture("tiny-llama"));
    set_ref(&root, ID, "main", A);
    let out = cmd(d.path())
        .env("HF_HOME", d.path().join("hf"))
        .args(["params", "--model", ID, "--rank", "4", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // tiny-llama: 2 layers; q 64x64, k,v 32x64, up 160x64, down 64x160 → r·(in+out) summed
    let per_layer = 4 * ((64 + 64) + 2 * (32 + 64) + 2 * (160 + 64));
    assert_eq!(v[0]["trainable"], 2 * per_layer);
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn an_unreachable_hub_is_a_network_error() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cmd(d.path());
    c.env_remove("HF_HUB_OFFLINE")
        .env("HF_HUB_CACHE", d.path().join("hub"))
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{}", closed_port()));
    let (code, _, err) = inspect(&mut c, ID, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("network error"), "{err}");
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
}

/// One HTTP answer of the stand-in Hub.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A minimal HTTP/1.1 server on 127.0.0.1 answering each request (path, Range header) with
/// `route`, one connection per request; runs until the test process ends. Returns its endpoint.
fn stand_in_hub(route: impl Fn(&str, Option<&str>) -> Reply + Send + 'static) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut range = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("range") {
                        range = Some(v.trim().to_string());
                    }
                }
            }
            let r = route(&path, range.as_deref());
            let mut head = format!("HTTP/1.1 {} X\r\n", r.status);
            for (k, v) in &r.headers {
                head += &format!("{k}: {v}\r\n");
            }
            head += &format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                r.body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&r.body);
            let _ = s.flush();
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        }
    });
    endpoint
}

fn json_reply(status: u16, v: serde_json::Value, headers: &[(&str, &str)]) -> Reply {
    Reply {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("Content-Type".to_string(), "application/json".to_string())])
            .collect(),
        body: serde_json::to_vec(&v).unwrap(),
    }
}

/// The stand-in Hub serving one repo at commit `A` with these files: the listing API, and each
/// file's `resolve` URL with the headers hf-hub reads (ETag, X-Repo-Commit, Content-Range).
fn hub_with_files(files: Vec<(String, Vec<u8>)>) -> String {
    stand_in_hub(move |path, range| {
        if path.starts_with(&format!("/api/models/{ID}/revision/")) {
            let siblings: Vec<serde_json::Value> = files
                .iter()
                .map(|(n, _)| serde_json::json!({ "rfilename": n }))
                .collect();
            return json_reply(
                200,
                serde_json::json!({"sha": A, "siblings": siblings}),
                &[],
            );
        }
        let prefix = format!("/{ID}/resolve/{A}/");
        let found = path
            .strip_prefix(&prefix)
            .and_then(|name| files.iter().find(|(n, _)| n == name));
        let Some((_, bytes)) = found else {
            return json_reply(
                404,
                serde_json::json!({"error": "Entry not found"}),
                &[("X-Error-Code", "EntryNotFound")],
            );
        };
        let etag = format!("\"{:x}\"", Sha256::digest(bytes));
        let body = if range == Some("bytes=0-0") {
            bytes[..1].to_vec()
        } else {
            bytes.clone()
        };
        Reply {
            status: 206,
            headers: vec![
                ("ETag".into(), etag),
                ("X-Repo-Commit".into(), A.into()),
                (
                    "Content-Range".into(),
                    format!("bytes 0-{}/{}", body.len() - 1, bytes.len()),
                ),
            ],
            body,
        }
    })
}

#[test]
fn http_answers_are_told_from_network_failures() {
    let d = tempfile::tempdir().unwrap();
    let online = |endpoint: &str| {
        let mut c = cmd(d.path());
        c.env_remove("HF_HUB_OFFLINE")
            .env("HF_HUB_CACHE", d.path().join("hub"))
            .env("HF_ENDPOINT", endpoint);
        inspect(&mut c, ID, &[])
    };
    let missing = stand_in_hub(|_, _| {
        json_reply(
            404,
            serde_json::json!({"error": "Repository not found"}),
            &[("X-Error-Code", "RepoNotFound")],
        )
    });
    let (code, _, err) = online(&missing);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such repository"), "{err}");
    assert!(!err.contains("network error"), "{err}");
    let no_rev = stand_in_hub(|_, _| {
        json_reply(
            404,
            serde_json::json!({"error": "Invalid rev id"}),
            &[("X-Error-Code", "RevisionNotFound")],
        )
    });
    let (code, _, err) = online(&no_rev);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no such revision") && err.contains("`main`"),
        "{err}"
    );
    // A repo that lists only pickle weights is refused from the listing, before any download.
    let config = std::fs::read(fixture("tiny-llama/config.json")).unwrap();
    let pickle = hub_with_files(vec![
        ("config.json".into(), config),
        ("pytorch_model.bin".into(), b"\x80\x02".to_vec()),
    ]);
    let (code, _, err) = online(&pickle);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pickle weights are not read"), "{err}");
    assert!(!repo_dir(&d.path().join("hub"), ID).join("blobs").exists());
}

#[test]
fn downloads_land_in_the_cache_layout_and_then_resolve_offline() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("hub");
    let tiny = fixture("tiny-llama");
    let files: Vec<(String, Vec<u8>)> = ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read(tiny.join(n)).unwrap()))
        .collect();
    let endpoint = hub_with_files(files.clone());
    let mut c = cmd(d.path());
    c.env_remove("HF_HUB_OFFLINE")
        .env("HF_HUB_CACHE", &root)
        .env("HF_ENDPOINT", &endpoint);
    let (code, _, err) = inspect(&mut c, ID, &["--revision", "v1.0"]);
    assert_eq!(code, 0, "{err}");
    let repo = repo_dir(&root, ID);
    assert_eq!(std::fs::read_to_string(repo.join("refs/v1.0")).unwrap(), A);
    assert!(
        !repo.join("refs").join(A).exists(),
        "no ref named by the sha itself"
    );
    for (name, bytes) in &files {
        let link = repo.join("snapshots").join(A).join(name);
        let target = std::fs::read_link(&link).unwrap();
        assert!(target.is_relative(), "{}", target.display());
        assert_eq!(&std::fs::read(&link).unwrap(), bytes);
    }
    // The repo has no tokenizer_config.json: recorded as huggingface_hub records a 404.
    assert!(repo
        .join(".no_exist")
        .join(A)
        .join("tokenizer_config.json")
        .is_file());
    // Offline, the same revision now resolves from what was downloaded.
    let mut c = cmd(d.path());
    c.env("HF_HUB_CACHE", &root);
    let (code, json, err) = inspect(&mut c, ID, &["--revision", "v1.0"]);
    assert_eq!(code, 0, "{err}");
    assert!(base_dir(&json.unwrap()).ends_with(&format!("snapshots/{A}")));
}
