//! The benchmarks' records ([`crate::bench`]) as JSON and their one-line terminal summaries.

use crate::bench::{EvalBatchBench, Roofline, ScaleBench, SwitchBench, TrainComparison};
use crate::error::Result;
use serde::Serialize;

/// A benchmark record as the pretty JSON written under `reproductions/bench/`.
pub fn json<T: Serialize>(rec: &T) -> Result<String> {
    Ok(crate::render::to_json(rec)? + "\n")
}

/// `tsd bench switch`'s summary line.
pub fn switch_summary(rec: &SwitchBench) -> String {
    format!(
        "switch: {:.1} s ({:.1} CPU s, load {:.1}) for {} layer(s), {:.1} s per layer → ~{:.0} min for 32 layers (extrapolated)",
        rec.switch_seconds,
        rec.switch_cpu_seconds,
        rec.load_average_at_start,
        rec.layers,
        rec.seconds_per_layer,
        rec.extrapolated_32_layers_seconds / 60.0
    )
}

/// `tsd bench scale`'s summary line.
pub fn scale_summary(rec: &ScaleBench) -> String {
    format!(
        "LoRA {:.0} tokens/s, LoRA-Dash {:.0} tokens/s, switch {:.1} s, load {:.1} s",
        rec.lora_tokens_per_s, rec.dash_tokens_per_s, rec.switch_seconds, rec.load_seconds
    )
}

/// `tsd bench eval-batch`'s lines, one per batch size.
pub fn eval_batch_lines(rec: &EvalBatchBench) -> Vec<String> {
    rec.points
        .iter()
        .map(|p| {
            format!(
                "batch {:>3}: {:.2} s/example ({:.0} CPU s, load {:.1} → {:.1}){}",
                p.batch,
                p.seconds_per_example,
                p.cpu_seconds,
                p.load_average_before,
                p.load_average_after,
                if p.same_outputs_as_first {
                    ""
                } else {
                    " OUTPUTS DIFFER"
                }
            )
        })
        .collect()
}

/// `tsd bench train`'s summary: LoRA and LoRA-Dash, and beside PyTorch + PEFT (read from
/// `torch_path`) when its figures are there.
pub fn train_summary(rec: &TrainComparison, torch_path: &std::path::Path) -> Vec<String> {
    let gb = |b: u64| b as f64 / 1e9;
    let mut lines = vec![format!(
        "LoRA {:.0} tokens/s ({:.2} GB peak), LoRA-Dash {:.0} tokens/s ({:+.1}% per step, best steps {:+.1}%; rounds {}; kernel path {}; frozen products {})",
        rec.lora.tokens_per_s,
        gb(rec.lora.peak_rss_bytes),
        rec.lora_dash.tokens_per_s,
        100.0 * rec.dash_step_overhead_vs_lora,
        100.0 * rec.dash_best_step_overhead_vs_lora,
        rec.dash_step_overhead_per_round
            .iter()
            .map(|x| format!("{:+.1}%", 100.0 * x))
            .collect::<Vec<_>>()
            .join(" "),
        rec.kernel_path.name,
        rec.frozen_products
    )];
    if let (Some(m), Some((lo, hi, cov))) = (
        rec.dash_step_overhead_per_round_median,
        rec.dash_step_overhead_per_round_ci95,
    ) {
        lines.push(format!(
            "LoRA-Dash step over LoRA, median of {} rounds {:+.1}% ({:.1}% interval {:+.1}% … {:+.1}%)",
            rec.dash_step_overhead_per_round.len(),
            100.0 * m,
            100.0 * cov,
            100.0 * lo,
            100.0 * hi
        ));
    }
    if let Some(a) = rec.dash_arithmetic_overhead {
        lines.push(format!(
            "LoRA-Dash's extra arithmetic: {:+.1}% of a LoRA step's FLOPs (its s directions ride in LoRA's products)",
            100.0 * a
        ));
    }
    if let (Some(m), Some((lo, hi, cov))) = (
        rec.dash_cpu_overhead_per_round_median,
        rec.dash_cpu_overhead_per_round_ci95,
    ) {
        lines.push(format!(
            "LoRA-Dash step over LoRA in CPU time, median of {} rounds {:+.1}% ({:.1}% interval {:+.1}% … {:+.1}%)",
            rec.dash_cpu_overhead_per_round.len(),
            100.0 * m,
            100.0 * cov,
            100.0 * lo,
            100.0 * hi
        ));
    }
    if let (Some(r), Some(m)) = (
        rec.tsd_lora_tokens_per_s_over_pytorch_peft,
        rec.pytorch_peft_peak_rss_over_tsd_lora,
    ) {
        lines.push(format!(
            "vs PyTorch + PEFT ({}): {r:.2}x the tokens/s, {m:.2}x less peak memory",
            torch_path.display()
        ));
    }
    if let Some(f) = rec.lora_achieved_flops_per_s {
        let mut line = format!(
            "LoRA step: {:.1} model GFLOP per step, {:.1} GFLOP/s (median step)",
            rec.model_flops_per_step.unwrap_or(f64::NAN) / 1e9,
            f / 1e9
        );
        if let (Some(best), Some(peak), Some(r)) = (
            rec.lora_fraction_of_best_measured_product_rate,
            rec.lora_fraction_of_theoretical_peak,
            &rec.roofline,
        ) {
            line += &format!(
                " = {:.0} % of the best measured {p} product rate, {:.0} % of the theoretical {p} \
                 peak ({}{})",
                100.0 * best,
                100.0 * peak,
                r.source,
                r.precision_mismatch
                    .as_deref()
                    .map_or(String::new(), |m| format!("; {m}")),
                p = r.precision
            );
        }
        lines.push(line);
    }
    lines
}

/// `tsd bench roofline`'s terminal view: the CPU, the derived peak, the bandwidth, then one row per
/// product shape (tsd's, PyTorch's and each system BLAS's GFLOP/s, and the fastest).
pub fn roofline_table(rec: &Roofline) -> String {
    let width = crate::env::columns().map_or(100, usize::from).max(40);
    let mut out: Vec<String> = roofline_header(rec)
        .iter()
        .flat_map(|l| wrap(l, width))
        .collect();
    out.push(roofline_products(rec));
    out.extend(wrap(
        "GFLOP/s as median / fastest sample; tsd layer: the product as tsd's layers run it \
         (FrozenLinear::product or input_grad, the decode's forwards on weights packed once as \
         inference runs them, the training LM head in 128-row blocks, its forward on the \
         head packed once as training runs it, LoRA's through matmul_2d); gemm direct: a bare candle matmul on the same operands; tsd/x: tsd \
         layer over x, below 1 x is faster; fastest: by median; ᵀ: the right operand is an [n, k] \
         weight (a linear's forward)",
        width,
    ));
    out.join("\n") + "\n"
}

/// The roofline's lines above its table: CPU, clock, peak, best rate, bandwidth, peer, load.
fn roofline_header(rec: &Roofline) -> Vec<String> {
    let c = &rec.cpu;
    let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or("–".to_string(), f);
    let loads = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    vec![
        format!(
            "CPU: {} ({}, family {} model {}), {} cores / {} threads, tsd pool {} threads, {}",
            c.model_name,
            c.vendor,
            c.family.map_or("?".into(), |f| f.to_string()),
            c.model.map_or("?".into(), |m| m.to_string()),
            c.cores,
            c.threads,
            rec.pool_threads,
            rec.hypervisor
                .as_deref()
                .map_or("no hypervisor".to_string(), |h| format!("hypervisor {h}")),
        ),
        format!(
            "flags: {}; gemm kernel path {}",
            c.kernel_flags.join(" "),
            rec.kernel_path
                .as_ref()
                .map_or("not recorded".to_string(), |k| k.name.clone())
        ),
        format!(
            "frequency: {:.3} GHz nominal; current {}",
            rec.peak.ghz,
            opt(rec.current_ghz, &|g| format!("{g:.3} GHz")).replace('–', "not readable")
        ),
        format!("assumed: {} — {}", rec.peak.microarch.name, rec.peak.microarch.assumption),
        format!("theoretical f32 FMA peak: {}", rec.peak.derivation),
        bf16_peak_line(rec),
        format!(
            "best measured f32 product rate (tsd, median): {:.1} GFLOP/s ({}), {:.0} % of the peak; fastest sample {:.1} GFLOP/s (needs ≥ {:.2} GHz)",
            rec.best_measured_f32_gflops,
            rec.best_measured_shape,
            100.0 * rec.best_measured_over_peak,
            rec.best_sample_f32_gflops,
            rec.implied_min_ghz
        ),
        match &rec.best_measured_bf16 {
            Some(b) => format!(
                "best measured bf16 product rate ({}, median): {:.1} GFLOP/s ({}){}",
                b.path,
                b.gflops,
                b.shape,
                b.over_peak
                    .map_or(String::new(), |f| format!(", {:.0} % of the bf16 peak", 100.0 * f))
            ),
            None => "best measured bf16 product rate: none measured".into(),
        },
        format!(
            "memory bandwidth (STREAM-like, {} MiB, {} threads, best of {}): copy {:.1} GB/s, triad {:.1} GB/s",
            rec.bandwidth.total_bytes >> 20,
            rec.bandwidth.threads,
            rec.bandwidth.runs,
            rec.bandwidth.copy_bytes_per_s / 1e9,
            rec.bandwidth.triad_bytes_per_s / 1e9
        ),
        match &rec.torch.skipped_because {
            Some(why) => format!("PyTorch peer: skipped ({why})"),
            None => format!(
                "PyTorch peer: torch {} on {} threads{}",
                rec.torch.torch_version.as_deref().unwrap_or("?"),
                rec.torch.threads.unwrap_or(0),
                rec.torch
                    .cpu_capability
                    .as_deref()
                    .map_or(String::new(), |c| format!(", capability {c}"))
            ),
        },
        system_blas_line(rec),
        format!(
            "load average before {} / after {}; median of {} samples per shape",
            loads(&rec.load_average_before),
            loads(&rec.load_average_after),
            rec.runs_per_shape
        ),
    ]
}

/// The roofline's line on the bf16 peak: its derivation, or why there is none.
fn bf16_peak_line(rec: &Roofline) -> String {
    match (&rec.bf16_peak, &rec.bf16_peak_absent_because) {
        (Some(p), _) => format!(
            "theoretical bf16 peak (vdpbf16ps): {} — {}",
            p.derivation, p.assumption
        ),
        (None, Some(why)) => format!("theoretical bf16 peak: none ({why})"),
        (None, None) => "theoretical bf16 peak: not in this record".into(),
    }
}

/// The roofline's line on the system BLAS: each library measured, or why none was.
fn system_blas_line(rec: &Roofline) -> String {
    let b = &rec.system_blas;
    let found: Vec<String> = b
        .libraries
        .iter()
        .map(|l| {
            format!(
                "{} {} ({}, kernels {}{}, {} threads{})",
                l.name,
                l.version.as_deref().unwrap_or("?"),
                l.resolved.as_deref().unwrap_or(&l.file),
                l.kernels.as_deref().unwrap_or("?"),
                l.kernels_forced_by
                    .as_deref()
                    .map_or(String::new(), |e| format!(" by {e}")),
                l.threads,
                l.threading
                    .as_deref()
                    .map_or(String::new(), |t| format!(", {t}"))
            )
        })
        .collect();
    let missing: Vec<&str> = b.not_found.keys().map(String::as_str).collect();
    match (found.is_empty(), missing.is_empty()) {
        (true, true) => "system BLAS: not measured".to_string(),
        (true, false) => format!("system BLAS: none found ({})", missing.join(", ")),
        (false, true) => format!("system BLAS: {}", found.join("; ")),
        (false, false) => format!(
            "system BLAS: {}; not found: {}",
            found.join("; "),
            missing.join(", ")
        ),
    }
}

/// The product table: tsd's (layer path, gemm direct, bf16), PyTorch's (f32, bf16) and each system
/// BLAS's rates per shape, and the fastest f32 and bf16 paths.
fn roofline_products(rec: &Roofline) -> String {
    let libs: Vec<&str> = rec
        .system_blas
        .libraries
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    let mut header: Vec<String> = [
        "product",
        "m×k×n",
        "tsd layer f32",
        "gemm direct",
        "torch f32",
        "tsd/torch",
        "tsd bf16",
        "torch bf16",
    ]
    .map(String::from)
    .to_vec();
    for l in &libs {
        header.extend([format!("{l} f32"), format!("tsd/{l}")]);
    }
    header.extend(["fastest f32".into(), "fastest bf16".into()]);
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = crate::render::table::table(&header);
    let pair = |a: Option<f64>, b: Option<f64>, d: usize| match (a, b) {
        (Some(a), Some(b)) => format!("{a:.d$} / {b:.d$}"),
        _ => "–".to_string(),
    };
    for p in &rec.products {
        let s = &p.shape;
        let mut row = vec![
            s.name.clone(),
            format!(
                "{}×{}×{}{}",
                s.m,
                s.k,
                s.n,
                if s.rhs_transposed { "ᵀ" } else { "" }
            ),
            pair(Some(p.tsd_gflops), Some(p.tsd_best_gflops), 0),
            pair(p.gemm_direct_gflops, p.gemm_direct_best_gflops, 0),
            pair(p.torch_f32_gflops, p.torch_f32_best_gflops, 0),
            pair(p.tsd_over_torch, p.tsd_over_torch_best, 2),
            pair(p.tsd_bf16_gflops, p.tsd_bf16_best_gflops, 0),
            pair(p.torch_bf16_gflops, p.torch_bf16_best_gflops, 0),
        ];
        for l in &libs {
            let r = p.blas.get(*l);
            row.extend([
                pair(r.map(|r| r.gflops), r.map(|r| r.best_gflops), 0),
                pair(r.map(|r| r.tsd_over), r.map(|r| r.tsd_over_best), 2),
            ]);
        }
        let name = |f: &Option<crate::bench::roofline::Fastest>| {
            f.as_ref().map_or("–".to_string(), |f| f.name.clone())
        };
        row.extend([name(&p.fastest_f32), name(&p.fastest_bf16)]);
        t.add_row(row);
    }
    crate::render::table::right_align(&mut t, 2);
    t.to_string()
}

/// `line` broken at spaces into lines of at most `width` characters (a longer word stays whole);
/// continuation lines are indented by two spaces.
fn wrap(line: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in line.split(' ') {
        let cur = lines.last_mut().expect("one line");
        let len = cur.chars().count();
        if len > 2 && len + 1 + word.chars().count() > width {
            lines.push(format!("  {word}"));
        } else {
            if !cur.is_empty() {
                cur.push(' ');
            }
            cur.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_breaks_at_spaces_within_the_width() {
        let w = wrap("aaa bbb ccc ddd", 8);
        assert_eq!(w, vec!["aaa bbb", "  ccc", "  ddd"]);
        assert_eq!(wrap("short", 80), vec!["short"]);
    }

    #[test]
    fn the_committed_roofline_record_renders() {
        let rec: Roofline =
            serde_json::from_str(include_str!("../../reproductions/bench/roofline.json")).unwrap();
        let text = roofline_table(&rec);
        assert!(text.contains(&rec.peak.derivation));
        for p in &rec.products {
            assert!(text.contains(&p.shape.name), "{}", p.shape.name);
        }
        for column in [
            "tsd layer f32",
            "gemm direct",
            "tsd bf16",
            "torch bf16",
            "fastest bf16",
        ] {
            assert!(text.contains(column), "{column}");
        }
        assert!(text.contains("theoretical bf16 peak"));
    }

    #[test]
    fn the_system_blas_columns_render() {
        let mut rec: Roofline =
            serde_json::from_str(include_str!("../../reproductions/bench/roofline.json")).unwrap();
        // The committed record has the libraries this host found: start from none.
        rec.system_blas.libraries.clear();
        rec.system_blas.not_found.clear();
        for p in &mut rec.products {
            p.blas.clear();
            p.fastest_f32 = None;
        }
        assert!(!roofline_table(&rec).contains("tsd/OpenBLAS"));
        rec.system_blas
            .libraries
            .push(crate::bench::system_blas::BlasInfo {
                name: "OpenBLAS".into(),
                file: "libopenblas.so.0".into(),
                resolved: None,
                version: Some("OpenBLAS 0.3.21".into()),
                kernels: Some("Haswell".into()),
                threads: 2,
                threading: Some("pthreads".into()),
                kernels_forced_by: None,
                environment: vec![],
            });
        rec.system_blas
            .not_found
            .insert("BLIS".into(), "not installed".into());
        for p in &mut rec.products {
            let g = p.tsd_gflops * 2.0;
            p.blas.insert(
                "OpenBLAS".into(),
                crate::bench::roofline::BlasRate {
                    repeats_per_sample: 1,
                    seconds: vec![],
                    gflops: g,
                    best_gflops: g,
                    tsd_over: 0.5,
                    tsd_over_best: 0.5,
                },
            );
            p.fastest_f32 = Some(crate::bench::roofline::Fastest {
                name: "OpenBLAS".into(),
                gflops: g,
            });
        }
        let text = roofline_table(&rec);
        assert!(
            text.contains("OpenBLAS f32") && text.contains("tsd/OpenBLAS"),
            "{text}"
        );
        assert!(text.contains("0.50 / 0.50"), "{text}");
        // the header lines wrap at the terminal's width
        assert!(
            text.replace("\n  ", " ").contains("not found: BLIS"),
            "{text}"
        );
    }
}
