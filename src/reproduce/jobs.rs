//! `--emit-jobs`: the grid as independent commands for a cluster. `OUT/jobs/` gets `jobs.txt` (one
//! `tsd reproduce commonsense … --only PIECE` per line: the lr check first when the preset has
//! one, then every cell, the base model and the reference), `array.sbatch` (a Slurm array whose
//! task i runs line i + 1 of `jobs.txt`), `prepare.sbatch` (the lr check, when needed) and
//! `submit.sh` (submits them with the array depending on the check, then `--collect`).

use super::{cells, reference_cell, Preset};
use crate::error::Result;
use std::path::{Path, PathBuf};

/// Single-quotes `s` for a POSIX shell.
fn sh(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The pieces a cluster runs, in order: `lr-check` (if any) is a prerequisite of the rest.
pub fn pieces(p: &Preset) -> (Option<String>, Vec<String>) {
    let mut v: Vec<String> = cells(p).iter().map(|c| c.name()).collect();
    v.push("base".into());
    if let Some(c) = reference_cell(p) {
        v.push(c.name());
    }
    (p.needs_lr_check().then(|| "lr-check".to_string()), v)
}

/// Writes the job files under `out/jobs/`. `base_args` is the command line (program first) that
/// every job repeats, e.g. `["tsd", "reproduce", "commonsense", "--preset", "paper", "--out", …]`.
/// Returns the directory and the number of array tasks.
pub fn emit_jobs(p: &Preset, base_args: &[String], out: &Path) -> Result<(PathBuf, usize)> {
    let dir = out.join("jobs");
    let base: Vec<String> = base_args.iter().map(|a| sh(a)).collect();
    let base = base.join(" ");
    let (pre, pieces) = pieces(p);
    let mut jobs = String::new();
    for piece in &pieces {
        jobs += &format!("{base} --only {piece}\n");
    }
    crate::fsutil::atomic_write(&dir.join("jobs.txt"), jobs.as_bytes())?;
    let gpu = if p.device.starts_with("cuda") {
        "#SBATCH --gpus=1\n"
    } else {
        ""
    };
    let header = |name: &str| {
        format!(
            "#!/bin/bash\n#SBATCH --job-name={name}\n{gpu}#SBATCH --output={}/%x-%A_%a.log\nset -euo pipefail\ncd {}\n",
            sh(&dir.display().to_string()),
            sh(&std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| ".".into()))
        )
    };
    let array = format!(
        "{}#SBATCH --array=1-{}\nline=$(sed -n \"${{SLURM_ARRAY_TASK_ID}}p\" {})\neval \"$line\"\n",
        header("tsd-grid"),
        pieces.len(),
        sh(&dir.join("jobs.txt").display().to_string())
    );
    crate::fsutil::atomic_write(&dir.join("array.sbatch"), array.as_bytes())?;
    let collect = format!("{base} --collect");
    let submit = match &pre {
        Some(piece) => {
            let prep = format!("{}{base} --only {piece}\n", header("tsd-lr-check"));
            crate::fsutil::atomic_write(&dir.join("prepare.sbatch"), prep.as_bytes())?;
            format!(
                "#!/bin/bash\n# The lr check first; the grid after it; then gather the results.\nset -euo pipefail\nd=$(dirname \"$0\")\npre=$(sbatch --parsable \"$d/prepare.sbatch\")\narr=$(sbatch --parsable --dependency=afterok:$pre \"$d/array.sbatch\")\necho \"submitted $pre and array $arr; when both are done run:\"\necho {}\n",
                sh(&collect)
            )
        }
        None => format!(
            "#!/bin/bash\nset -euo pipefail\nd=$(dirname \"$0\")\narr=$(sbatch --parsable \"$d/array.sbatch\")\necho \"submitted array $arr; when it is done run:\"\necho {}\n",
            sh(&collect)
        ),
    };
    crate::fsutil::atomic_write(&dir.join("submit.sh"), submit.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let f = dir.join("submit.sh");
        let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755));
    }
    Ok((dir, pieces.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_spaces_and_quotes() {
        assert_eq!(sh("plain/path-1.0"), "plain/path-1.0");
        assert_eq!(sh("a b"), "'a b'");
        assert_eq!(sh("it's"), r"'it'\''s'");
        assert_eq!(sh(""), "''");
    }

    #[test]
    fn paper_grid_has_a_job_per_cell() {
        let p = Preset::named("paper").unwrap();
        let (pre, v) = pieces(&p);
        assert!(pre.is_none());
        assert_eq!(v.len(), p.lora_ranks.len() + p.dash_ranks.len() + 1);
        let c = Preset::named("cpu").unwrap();
        let (pre, v) = pieces(&c);
        assert_eq!(pre.as_deref(), Some("lr-check"));
        assert!(v.contains(&"full-ref-s1".to_string()));
    }
}
