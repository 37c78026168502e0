//! The eight LLM-Adapters commonsense tasks, their label sets, and answer extraction as
//! LLM-Adapters' `commonsense_evaluate.py` does it.

use crate::error::{Error, Result};
use serde::Serialize;

/// A commonsense task: its directory name and its label set, in the order `extract_answer` tries.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Task {
    pub name: &'static str,
    pub labels: &'static [&'static str],
}

const ANSWERS: &[&str] = &["answer1", "answer2", "answer3", "answer4", "answer5"];

/// The eight LLM-Adapters commonsense tasks.
pub const TASKS: &[Task] = &[
    Task {
        name: "boolq",
        labels: &["true", "false"],
    },
    Task {
        name: "piqa",
        labels: &["solution1", "solution2"],
    },
    Task {
        name: "social_i_qa",
        labels: ANSWERS,
    },
    Task {
        name: "hellaswag",
        labels: &["ending1", "ending2", "ending3", "ending4"],
    },
    Task {
        name: "winogrande",
        labels: &["option1", "option2"],
    },
    Task {
        name: "ARC-Easy",
        labels: ANSWERS,
    },
    Task {
        name: "ARC-Challenge",
        labels: ANSWERS,
    },
    Task {
        name: "openbookqa",
        labels: ANSWERS,
    },
];

/// A task by name (case-insensitive; `arc-e`/`arc-c`/`obqa`/`siqa` accepted).
pub fn task(name: &str) -> Option<Task> {
    let n = name.to_ascii_lowercase();
    let canonical = match n.as_str() {
        "arc-e" | "arc_easy" | "arc-easy" => "ARC-Easy",
        "arc-c" | "arc_challenge" | "arc-challenge" => "ARC-Challenge",
        "obqa" => "openbookqa",
        "siqa" | "social_iqa" => "social_i_qa",
        _ => name,
    };
    TASKS
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(canonical))
        .copied()
}

/// The tasks `names` name (see [`task`]), in that order; an unknown name is refused (exit 2).
pub fn tasks_named<S: AsRef<str>>(names: &[S]) -> Result<Vec<Task>> {
    names
        .iter()
        .map(|n| {
            let n = n.as_ref();
            task(n).ok_or_else(|| Error::InvalidArgument(format!("unknown task `{n}`")))
        })
        .collect()
}

/// The prediction in a generated response: the FIRST occurrence of any label of the task (what
/// `re.findall(r'a|b|…', text)[0]` returns), or None (counted wrong and unparseable).
pub fn extract_answer(task: &Task, text: &str) -> Option<&'static str> {
    let mut best: Option<(usize, &'static str)> = None;
    for &l in task.labels {
        if let Some(p) = text.find(l) {
            // Earliest start wins; at equal starts the regex alternation prefers the earlier label.
            if best.is_none_or(|(bp, _)| p < bp) {
                best = Some((p, l));
            }
        }
    }
    best.map(|b| b.1)
}

/// The text after `### Response:` (LLM-Adapters: `output.split("### Response:")[1].strip()`).
pub fn response_text(decoded: &str) -> &str {
    decoded
        .split("### Response:")
        .nth(1)
        .unwrap_or(decoded)
        .trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_label_in_the_text_wins() {
        let t = task("ARC-Easy").unwrap();
        assert_eq!(
            extract_answer(&t, "the correct answer is answer3, not answer1"),
            Some("answer3")
        );
        assert_eq!(extract_answer(&t, "I think answer1"), Some("answer1"));
        assert_eq!(extract_answer(&t, "no idea"), None);
        let b = task("boolq").unwrap();
        assert_eq!(
            extract_answer(&b, "the correct answer is false"),
            Some("false")
        );
        assert_eq!(task("obqa").unwrap().name, "openbookqa");
        assert!(task("mmlu").is_none());
        assert_eq!(
            response_text("prompt ### Response:\n   the correct answer is true  "),
            "the correct answer is true"
        );
    }
}
