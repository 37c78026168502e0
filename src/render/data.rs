//! `tsd data preview`'s terminal text and CSV: the data's manifest and tokenization settings, then
//! each example as the model sees it, with the text that carries no loss between `⟪` and `⟫`.

use crate::error::Result;
use crate::train::preview::{PreviewExample, PreviewRecord};
use std::fmt::Write;

/// Marks around text that carries no loss.
pub const NO_LOSS_OPEN: &str = "⟪";
pub const NO_LOSS_CLOSE: &str = "⟫";

/// The header lines and every shown example.
pub fn preview_text(r: &PreviewRecord) -> String {
    let mut s = String::new();
    let d = &r.data;
    for f in &d.manifest.files {
        let _ = writeln!(
            s,
            "data: {} ({} rows, {} bytes, sha256 {})",
            f.path,
            f.rows,
            crate::render::thousands(f.bytes),
            &f.sha256[..f.sha256.len().min(12)]
        );
    }
    let _ = writeln!(
        s,
        "schema {}; model {}; chat template {}; loss on {}; max length {} tokens",
        d.manifest.schema.label(),
        r.model,
        d.chat_template
            .as_deref()
            .unwrap_or("none (not conversational)"),
        d.loss_on.as_str(),
        d.max_length
    );
    let _ = writeln!(
        s,
        "{} examples: {} cut to {} tokens, {} dropped (no token with loss); showing {}. \
         Text between {NO_LOSS_OPEN} and {NO_LOSS_CLOSE} carries no loss.",
        r.total_examples,
        r.truncated_examples,
        d.max_length,
        d.dropped_examples,
        r.examples.len()
    );
    for e in &r.examples {
        s.push('\n');
        s.push_str(&example_text(e));
    }
    s
}

/// One example: its origin and counts, then its tokens' text with the no-loss spans marked.
pub fn example_text(e: &PreviewExample) -> String {
    let with_loss = e.loss_mask.iter().filter(|&&m| m == 1).count();
    let mut s = format!(
        "── {} row {}: {} tokens{}, {with_loss} with loss{}\n",
        e.file,
        e.row,
        e.input_ids.len(),
        if e.truncated {
            format!(" (cut from {})", e.untruncated_tokens)
        } else {
            String::new()
        },
        if e.dropped { "; dropped" } else { "" }
    );
    let mut open = false;
    for (t, &m) in e.tokens.iter().zip(&e.loss_mask) {
        if m == 0 && !open {
            s.push_str(NO_LOSS_OPEN);
            open = true;
        } else if m == 1 && open {
            s.push_str(NO_LOSS_CLOSE);
            open = false;
        }
        s.push_str(t);
    }
    if open {
        s.push_str(NO_LOSS_CLOSE);
    }
    s.push('\n');
    s
}

/// One CSV row per token: file, row, position, id, label, loss mask, text.
pub fn preview_csv(r: &PreviewRecord) -> Result<String> {
    let header = ["file", "row", "position", "id", "label", "loss", "token"];
    let rows = r.examples.iter().flat_map(|e| {
        (0..e.input_ids.len()).map(move |i| {
            vec![
                e.file.clone(),
                e.row.to_string(),
                i.to_string(),
                e.input_ids[i].to_string(),
                e.labels[i].to_string(),
                e.loss_mask[i].to_string(),
                e.tokens[i].clone(),
            ]
        })
    });
    super::table::csv_text(&header, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> PreviewExample {
        PreviewExample {
            file: "d.jsonl".into(),
            row: 2,
            input_ids: vec![1, 2, 3, 4],
            labels: vec![-100, -100, 3, 4],
            loss_mask: vec![0, 0, 1, 1],
            tokens: vec!["Q:".into(), " hi".into(), " A".into(), "<eos>".into()],
            untruncated_tokens: 6,
            truncated: true,
            dropped: false,
        }
    }

    #[test]
    fn no_loss_spans_are_bracketed() {
        let t = example_text(&example());
        assert!(t.contains("⟪Q: hi⟫ A<eos>"), "{t}");
        assert!(t.contains("4 tokens (cut from 6), 2 with loss"), "{t}");
        let mut e = example();
        e.loss_mask = vec![1, 1, 0, 0];
        assert!(example_text(&e).contains("Q: hi⟪ A<eos>⟫"));
    }
}
