//! CoQA (conversational question answering) evaluation, reproducing lm-evaluation-harness's
//! `coqa` task (version 3.0): loading the stories, the prompt and gold answers, and SQuAD
//! exact-match / F1 scoring.

pub mod data;
pub mod metrics;
pub mod prompt;
pub mod run;
