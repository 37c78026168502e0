//! Records the versions of the dependencies that shape numerical results (from Cargo.lock) and of
//! rustc, so that run records and reports can name them; and the git commit the binary was built
//! from (`-dirty` with uncommitted changes to its sources; `unknown` outside a git checkout), which
//! report headers print.

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let mut found = Vec::new();
    let mut name = String::new();
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = n.trim_matches('"').to_string();
        } else if let Some(v) = line.strip_prefix("version = ") {
            if [
                "candle-core",
                "candle-nn",
                "faer",
                "gemm",
                "safetensors",
                "tokenizers",
            ]
            .contains(&name.as_str())
            {
                found.push(format!("{name} {}", v.trim_matches('"')));
            }
        }
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rv = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    found.push(rv);
    println!("cargo:rustc-env=TSD_BUILD_VERSIONS={}", found.join("; "));
    println!("cargo:rustc-env=TSD_COMMIT={}", commit());
}

fn git(args: &[&str]) -> Option<String> {
    let o = std::process::Command::new("git").args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The commit, re-read whenever HEAD, the branch it names or a tracked source changes.
fn commit() -> String {
    // What the binary is built from: "-dirty" means these differ from the commit.
    const SOURCES: [&str; 5] = ["src", "templates", "Cargo.toml", "Cargo.lock", "build.rs"];
    for p in SOURCES {
        println!("cargo:rerun-if-changed={p}");
    }
    let Some(sha) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    for path in [
        Some("HEAD".to_string()),
        git(&["rev-parse", "--symbolic-full-name", "HEAD"]),
        Some("packed-refs".to_string()),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(f) = git(&["rev-parse", "--git-path", &path]) {
            if std::path::Path::new(&f).exists() {
                println!("cargo:rerun-if-changed={f}");
            }
        }
    }
    let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
    status.extend(SOURCES);
    let dirty = git(&status).is_some_and(|s| !s.is_empty());
    format!("{sha}{}", if dirty { "-dirty" } else { "" })
}
