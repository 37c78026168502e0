//! The benchmarks' records ([`crate::bench`]) as JSON and their one-line terminal summaries.

use crate::bench::{EvalBatchBench, ScaleBench, SwitchBench, TrainComparison};
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
        "LoRA {:.0} tokens/s ({:.2} GB peak), LoRA-Dash {:.0} tokens/s ({:+.1}% per step, best steps {:+.1}%; rounds {})",
        rec.lora.tokens_per_s,
        gb(rec.lora.peak_rss_bytes),
        rec.lora_dash.tokens_per_s,
        100.0 * rec.dash_step_overhead_vs_lora,
        100.0 * rec.dash_best_step_overhead_vs_lora,
        rec.dash_step_overhead_per_round
            .iter()
            .map(|x| format!("{:+.1}%", 100.0 * x))
            .collect::<Vec<_>>()
            .join(" ")
    )];
    if let (Some(r), Some(m)) = (
        rec.tsd_lora_tokens_per_s_over_pytorch_peft,
        rec.pytorch_peft_peak_rss_over_tsd_lora,
    ) {
        lines.push(format!(
            "vs PyTorch + PEFT ({}): {r:.2}x the tokens/s, {m:.2}x less peak memory",
            torch_path.display()
        ));
    }
    lines
}
