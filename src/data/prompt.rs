//! The Alpaca prompts of LLM-Adapters: the training prompt (instruction, input and output) and the
//! evaluation prompt (instruction and input; the model writes the response).
//!
//! The prompt templates are copied byte for byte, odd indentation included, because a model
//! fine-tuned on one layout and evaluated on another loses accuracy for reasons unrelated to the
//! method. Sources:
//! - training: `generate_prompt` of `finetune.py` in AGI-Edgerunners/LLM-Adapters at commit
//!   `91770aba93bbbde16f3e16d1bf395a59706fa390`; the same bytes are in NVlabs/DoRA
//!   `commonsense_reasoning/finetune.py` (`bd3ed6f91bcfb1a1725089b6ba0325ab79404de0`) and in the
//!   LoRA-Dash code, Chongjie-Si/Subspace-Tuning `CR_MR/finetune.py`
//!   (`5fb16a745240d5fd3e67d09f90164e11b869b9b4`). (An older LLM-Adapters revision,
//!   `063e3d420afb85aae1893a9e9ea4a4e21a7cb5ed`, had `  # noqa: E501` *inside* the string; the
//!   DoRA / LoRA-Dash experiments use the later text reproduced here.)
//! - evaluation: `generate_prompt` of LLM-Adapters `commomsense_evaluate.py` (sic) at
//!   `e0efdc0e8bb43875201e24528d3ee0fe2595876d`, identical in NVlabs/DoRA
//!   `commonsense_reasoning/commonsense_evaluate.py` (`7393fa6c76a7bf74407a75c2370f30b4d78f3cb1`).

use super::Example;

/// The 16 spaces the Python triple-quoted f-strings carry at the start of every line after the
/// first (and alone on the "blank" lines of the training template).
const IND: &str = "                ";

/// The training prompt (prompt + output), byte for byte LLM-Adapters' `generate_prompt`:
/// note the trailing space(s) after "request." (one with input, two without), the 16-space
/// indentation, and the "blank" lines that hold 16 spaces. Python's `if data_point["input"]:`
/// picks the with-input variant for any non-empty input.
pub fn train_prompt(ex: &Example) -> String {
    if !ex.input.is_empty() {
        format!(
            "Below is an instruction that describes a task, paired with an input that provides \
             further context. Write a response that appropriately completes the request. \n\
             \n\
             {IND}### Instruction:\n\
             {IND}{}\n\
             {IND}\n\
             {IND}### Input:\n\
             {IND}{}\n\
             {IND}\n\
             {IND}### Response:\n\
             {IND}{}",
            ex.instruction, ex.input, ex.output
        )
    } else {
        format!(
            "Below is an instruction that describes a task. Write a response that appropriately \
             completes the request.  \n\
             \n\
             {IND}### Instruction:\n\
             {IND}{}\n\
             {IND}\n\
             {IND}### Response:\n\
             {IND}{}",
            ex.instruction, ex.output
        )
    }
}

/// The evaluation prompt, byte for byte LLM-Adapters' `commonsense_evaluate.py`
/// `generate_prompt(instruction, input=None)`: unlike the training template, the blank lines are
/// empty, "request." has no trailing space with input and one without, and the text ends with
/// the 16 spaces after "### Response:\n". (That script never passes `input`, so its evaluation
/// always uses the without-input variant.)
pub fn eval_prompt(instruction: &str, input: Option<&str>) -> String {
    match input.filter(|s| !s.is_empty()) {
        Some(input) => format!(
            "Below is an instruction that describes a task, paired with an input that provides \
             further context. Write a response that appropriately completes the request.\n\
             \n\
             {IND}### Instruction:\n\
             {IND}{instruction}\n\
             \n\
             {IND}### Input:\n\
             {IND}{input}\n\
             \n\
             {IND}### Response:\n\
             {IND}"
        ),
        None => format!(
            "Below is an instruction that describes a task. Write a response that appropriately \
             completes the request. \n\
             \n\
             {IND}### Instruction:\n\
             {IND}{instruction}\n\
             \n\
             {IND}### Response:\n\
             {IND}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::load_examples;
    use std::path::PathBuf;

    /// The first example of `ARC-Easy/train.json`, as stored there.
    fn arc_easy_first() -> Example {
        Example {
            instruction: "Please choose the correct answer to the question: Which factor will most likely cause a person to develop a fever?\n\nAnswer1: a leg muscle relaxing after exercise Answer2: a bacterial population in the bloodstream Answer3: several viral particles on the skin Answer4: carbohydrates being digested in the stomach\n\nAnswer format: answer1/answer2/answer3/answer4".into(),
            input: String::new(),
            output: "the correct answer is answer2".into(),
            answer: Some("answer2".into()),
        }
    }

    /// Written out in full (not through `IND`), so that the template is checked independently.
    fn arc_easy_first_prompt() -> String {
        let ex = arc_easy_first();
        format!(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n\n                ### Instruction:\n                {}\n                \n                ### Response:\n                the correct answer is answer2",
            ex.instruction
        )
    }

    #[test]
    fn train_prompt_without_input_is_byte_exact() {
        assert_eq!(train_prompt(&arc_easy_first()), arc_easy_first_prompt());
        // Python's truthiness: a null input is the empty string.
        let mut ex = arc_easy_first();
        ex.input = String::new();
        assert!(train_prompt(&ex).starts_with(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n\n"
        ));
    }
    #[test]
    fn train_prompt_with_input_is_byte_exact() {
        let ex = Example {
            instruction: "Add the numbers.".into(),
            input: "2 and 3".into(),
            output: "5".into(),
            answer: None,
        };
        assert_eq!(
            train_prompt(&ex),
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request. \n\n                ### Instruction:\n                Add the numbers.\n                \n                ### Input:\n                2 and 3\n                \n                ### Response:\n                5"
        );
    }
    #[test]
    fn eval_prompt_is_byte_exact() {
        assert_eq!(
            eval_prompt("Q?", None),
            "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n\n                ### Instruction:\n                Q?\n\n                ### Response:\n                "
        );
        assert_eq!(eval_prompt("Q?", Some("")), eval_prompt("Q?", None));
        assert_eq!(
            eval_prompt("Q?", Some("ctx")),
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n                ### Instruction:\n                Q?\n\n                ### Input:\n                ctx\n\n                ### Response:\n                "
        );
    }
    #[test]
    fn real_arc_easy_example_loads_and_renders() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/llm-adapters/ARC-Easy/train-head.json");
        let examples = load_examples(&path).unwrap();
        assert_eq!(examples.len(), 3);
        assert_eq!(examples[0], arc_easy_first());
        assert_eq!(train_prompt(&examples[0]), arc_easy_first_prompt());
        assert!(examples.iter().all(|e| e.input.is_empty()));
    }
}
