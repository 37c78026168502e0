//! Records the versions of the dependencies that shape numerical results (from Cargo.lock) and of
//! rustc, so that run records and reports can name them.

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
}
