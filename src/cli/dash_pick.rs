//! `tsd dash-pick`: its flags and the work are [`tsd::train::pick`]'s.

use anyhow::Result;
use tsd::train::pick::{pick_dash, DashPickArgs, DASH_PICK_SCHEMA};

pub fn run(a: DashPickArgs) -> Result<()> {
    let plan = a.plan();
    let logs = pick_dash(&plan, &super::track::warn)?;
    eprintln!(
        "picked {} direction(s) in each of {} module(s); wrote {}",
        a.dash_s,
        logs.len(),
        a.out.display()
    );
    if a.json {
        let v = serde_json::json!({
            "schema_version": DASH_PICK_SCHEMA,
            "s": a.dash_s,
            "out": a.out,
            "modules": logs,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}
