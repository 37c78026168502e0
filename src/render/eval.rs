//! An evaluation record ([`crate::eval::EvalRecord`]) as a terminal table, CSV or JSON.

use crate::data::Protocol;
use crate::error::{Error, Result};
use crate::eval::EvalRecord;

/// The per-task results as pretty JSON (the record's `results`, as `tsd eval --json` prints).
/// With `--chat-template` every result carries `"prompt": "chat_template"`.
pub fn json(r: &EvalRecord) -> Result<String> {
    if r.chat_template.is_none() {
        return Ok(crate::render::to_json(&r.results)? + "\n");
    }
    let mut rows =
        serde_json::to_value(&r.results).map_err(|e| Error::Internal(format!("eval JSON: {e}")))?;
    for row in rows.as_array_mut().into_iter().flatten() {
        if let Some(o) = row.as_object_mut() {
            o.insert("prompt".into(), "chat_template".into());
        }
    }
    Ok(crate::render::to_json(&rows)? + "\n")
}

/// One row per task: `task,protocol,examples,correct,accuracy` (fields quoted where they need it),
/// and a `prompt` column saying `chat_template` with `--chat-template`.
pub fn csv(r: &EvalRecord) -> Result<String> {
    let err = |e: &dyn std::fmt::Display| Error::Internal(format!("eval CSV: {e}"));
    let chat = r.chat_template.is_some();
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["task", "protocol", "examples", "correct", "accuracy"];
    if chat {
        header.push("prompt");
    }
    w.write_record(header).map_err(|e| err(&e))?;
    for t in &r.results {
        let mut row = vec![
            t.task.clone(),
            t.protocol.to_string(),
            t.examples.to_string(),
            t.correct.to_string(),
            t.accuracy.to_string(),
        ];
        if chat {
            row.push("chat_template".into());
        }
        w.write_record(row).map_err(|e| err(&e))?;
    }
    String::from_utf8(w.into_inner().map_err(|e| err(&e))?).map_err(|e| err(&e))
}

/// What the protocol line of the table says.
fn protocol_line(r: &EvalRecord) -> String {
    match r.protocol {
        Protocol::Loglik => "loglik (label log-likelihood, not beam-search generation)".to_string(),
        Protocol::Generate => format!(
            "generate ({} beams, at most {} new tokens, first label in the response)",
            r.beams.num_beams, r.beams.max_new_tokens
        ),
    }
}

/// The terminal table: the model and protocol, a line per task, the mean over tasks.
pub fn table(r: &EvalRecord) -> String {
    let adapter = r
        .adapter
        .as_ref()
        .map_or(String::new(), |p| format!(" + {}", p.display()));
    let mut s = format!(
        "model {}{adapter} · protocol {}\n",
        r.model,
        protocol_line(r)
    );
    if let Some(origin) = &r.chat_template {
        s += &format!(
            "prompts wrapped in the model's chat template ({origin}) as one user turn: not the LLM-Adapters protocol's plain prompt\n"
        );
    }
    for t in &r.results {
        s += &format!(
            "{:<14} {:>6} examples  accuracy {:6.2}%  unparseable {}  truncated prompts {}\n",
            t.task,
            t.examples,
            100.0 * t.accuracy,
            t.unparseable,
            t.truncated
        );
    }
    s + &format!(
        "{:<14} {:>6}           accuracy {:6.2}% (mean over tasks)\n",
        "average",
        "",
        100.0 * r.mean_accuracy()
    )
}

/// A progress bar per task, notices and warnings on stderr.
pub struct Bars {
    quiet: bool,
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
}

impl Bars {
    pub fn new(quiet: bool) -> Bars {
        Bars {
            quiet,
            bar: std::sync::Mutex::new(None),
        }
    }
}

impl crate::eval::EvalProgress for Bars {
    fn note(&self, msg: &str) {
        eprintln!("tsd eval: {msg}");
    }
    fn warn(&self, msg: &str) {
        eprintln!("warning: {msg}");
    }
    fn task_started(&self, task: &str, examples: usize) {
        let pb = crate::render::progress_bar(examples as u64, task, self.quiet);
        *self.bar.lock().unwrap_or_else(|p| p.into_inner()) = Some(pb);
    }
    fn example_done(&self) {
        if let Some(pb) = &*self.bar.lock().unwrap_or_else(|p| p.into_inner()) {
            pb.inc(1);
        }
    }
    fn task_finished(&self, _: &crate::eval::TaskResult) -> crate::Result<()> {
        if let Some(pb) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            pb.finish_and_clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{BeamSettings, TaskResult};

    fn result(task: &str, accuracy: f64) -> TaskResult {
        TaskResult {
            task: task.into(),
            protocol: Protocol::Loglik,
            examples: 3,
            correct: 2,
            accuracy,
            unparseable: 0,
            truncated: 0,
            predictions: vec![],
        }
    }

    /// Ordinary values come out as the old `format!` rows did; a field that needs it is quoted.
    #[test]
    fn csv_rows_match_the_plain_format_and_quote_where_needed() {
        let rec = EvalRecord {
            model: "m".into(),
            adapter: None,
            protocol: Protocol::Loglik,
            beams: BeamSettings::LLM_ADAPTERS,
            chat_template: None,
            results: vec![result("boolq", 2.0 / 3.0), result("a,b", 0.5)],
        };
        let want = format!(
            "task,protocol,examples,correct,accuracy\nboolq,loglik,3,2,{}\n\"a,b\",loglik,3,2,0.5\n",
            2.0f64 / 3.0
        );
        assert_eq!(csv(&rec).unwrap(), want);
    }
}
