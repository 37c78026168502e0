//! Tests of the summary over a synthetic grid and of the presets.

use super::*;
use crate::names::Method;

fn run(method: Method, rank: usize, seed: u64, avg: f64) -> RunResult {
    RunResult {
        name: Cell { method, rank, seed }.name(),
        method,
        rank,
        seed,
        lr: 1e-3,
        trainable_params: rank as u64 * 1000,
        trainable_pct: 0.0,
        scores: Scores {
            tasks: Vec::new(),
            loglik_avg: Some(avg),
            generate_avg: None,
            unparseable_rate: None,
            average: avg,
            eval_s: 0.0,
        },
        final_loss: 0.0,
        val_loss: None,
        wall_s: 0.0,
        tokens_per_s: 0.0,
        dash_mean_sigma_ratio: None,
        dash_near_null_picks: None,
        dash_max_delta_sigma: None,
    }
}

/// Outcomes on 400 boolq examples: example `i` is right when `i % 10 < tenths`.
fn outcomes(tenths: usize) -> summary::Outcomes {
    let mut o = summary::Outcomes::new();
    o.insert(
        "boolq".into(),
        (0..400)
            .map(|i| {
                (
                    i,
                    i % 10 < tenths,
                    if i % 2 == 0 { "true" } else { "false" }.into(),
                )
            })
            .collect(),
    );
    o
}

fn summarize_grid(lora: &[(usize, usize)], dash: &[(usize, usize)]) -> summary::Summary {
    let mut p = Preset::named("cpu").unwrap();
    p.lora_ranks = lora.iter().map(|x| x.0).collect();
    p.dash_ranks = dash.iter().map(|x| x.0).collect();
    let mut results = Vec::new();
    let mut outs = Vec::new();
    for seed in [1, 2] {
        for (m, cells) in [(Method::Lora, lora), (Method::LoraDash, dash)] {
            for &(rank, tenths) in cells {
                let mut r = run(m, rank, seed, 10.0 * tenths as f64);
                r.scores.tasks.push(TaskScore {
                    task: "boolq".into(),
                    loglik: Some(10.0 * tenths as f64),
                    loglik_examples: 400,
                    generate: None,
                    generate_examples: 0,
                    unparseable: None,
                });
                results.push(r);
                outs.push(outcomes(tenths));
            }
        }
    }
    let data: Vec<summary::RunData> = results
        .iter()
        .zip(outs)
        .map(|(result, outcomes)| summary::RunData { result, outcomes })
        .collect();
    summary::summarize(&p, &data, None, &[], &[], &[]).unwrap()
}

#[test]
fn efficiency_ratio_is_the_smallest_lora_rank_not_significantly_below_dash() {
    // LoRA r1 50 %, r4 60 %, r16 70 %; LoRA-Dash r1 70 %: only LoRA r16 reaches it → 16×.
    let s = summarize_grid(&[(1, 5), (4, 6), (16, 7)], &[(1, 7)]);
    assert_eq!(s.comparisons.len(), 3);
    let e = &s.efficiency[0];
    assert_eq!(
        (e.lora_rank, e.ratio, e.informative),
        (Some(16), Some(16.0), true)
    );
    assert!(s.rank_effect.as_ref().unwrap().diff.lo > 0.0);
    assert!(s.verdict.starts_with("2 of 3 comparisons"), "{}", s.verdict);
    assert!(
        s.verdict.contains("minimum detectable effect"),
        "{}",
        s.verdict
    );
    assert_eq!(s.efficiency_by_task.len(), 1);
    assert!(!s.chance[0].at_chance);
    // Dash above every LoRA rank: no rank reaches it, the ratio is only bounded.
    let s = summarize_grid(&[(1, 5), (4, 6)], &[(1, 8)]);
    assert_eq!(
        (s.efficiency[0].lora_rank, s.efficiency[0].ratio),
        (None, None)
    );
    assert!(
        s.efficiency[0].note.contains("above 4/1"),
        "{}",
        s.efficiency[0].note
    );
}

#[test]
fn a_flat_lora_curve_makes_the_ratio_uninformative_and_chance_tasks_are_named() {
    // Every run at 50 % on a task whose majority answer is right 50 % of the time.
    let s = summarize_grid(&[(1, 5), (16, 5)], &[(1, 5)]);
    assert_eq!(s.efficiency[0].ratio, Some(1.0));
    assert!(!s.efficiency[0].informative);
    assert!(s.verdict.contains("cannot be told apart"), "{}", s.verdict);
    assert!(s.verdict.contains("rank buys nothing"), "{}", s.verdict);
    assert!(s.verdict.contains("At chance in every run") && s.verdict.contains("boolq"));
    assert!(s.chance[0].at_chance && s.efficiency_by_task.is_empty());
}

#[test]
fn presets_differ_only_where_documented() {
    let cpu = Preset::named("cpu").unwrap();
    // A cpu verdict that can decide: ≥ 3 seeds, ≥ 200 loglik and ≥ 20 generate examples per task.
    assert!(cpu.seeds.len() >= 3);
    assert!(cpu.loglik_limit.unwrap() >= 200 && cpu.generate_limit.unwrap() >= 20);
    let span = *cpu.lora_ranks.iter().max().unwrap() / *cpu.lora_ranks.iter().min().unwrap();
    assert!(span >= 16, "LoRA ranks must span at least 16×");
    assert!(
        cpu.steps.unwrap() - cpu.dash_t >= 150,
        "Δσ needs ≥ 150 dash steps"
    );
    let paper = Preset::named("paper").unwrap();
    assert_eq!(paper.lr_candidates, vec![2e-4]);
    assert_eq!((paper.batch_size, paper.epochs), (16, 3.0));
    assert_eq!(paper.protocol, Protocol::Generate);
    // The paper preset's own departures: the capture reference and the single seed
    // (regression: they were not listed).
    let d = paper.deviations(&[], 2e-4, &[]);
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d[0].contains("highest-rank LoRA run (r=64)") && d[1].contains("1 seed"));
    // An lr check ending at the edge of its extended range is stated.
    let cpu_d = cpu.deviations(&[], 8e-3, &[1e-3, 4e-3, 8e-3]);
    assert!(cpu_d.iter().any(|x| x.contains("upper edge")), "{cpu_d:?}");
    let inside = cpu.deviations(&[], 4e-3, &[1e-3, 4e-3, 8e-3]);
    assert!(!inside.iter().any(|x| x.contains("edge of the range")));
    assert!(Preset::named("gpu").is_err());
    // The grid's extent does not count as a different setting; the lr rule does.
    let mut more = cpu.clone();
    more.seeds.push(3);
    assert_eq!(more.run_settings(), cpu.run_settings());
    more.lr_check_steps += 1;
    assert_ne!(more.run_settings(), cpu.run_settings());
}
