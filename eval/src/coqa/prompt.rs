//! The CoQA prompt and gold answers, as lm-evaluation-harness's `coqa` task (version 3.0)
//! builds them: one request per story, asking its last question with every earlier turn and
//! its answer in the prompt.

use super::data::CoqaDoc;

/// Generation stops at the first of these strings (the harness's `until`).
pub const STOP_SEQUENCES: [&str; 1] = ["\nQ:"];

/// The most tokens generated per story (the harness's default `max_gen_toks`).
pub const MAX_NEW_TOKENS: usize = 256;

/// The prompt asking the story's last question (`doc_to_text`):
///
/// ```text
/// <story>\n\nQ: <q1>\n\nA: <a1>\n\n ... Q: <last question>\n\nA:
/// ```
///
/// The story and questions are used as they are. As in the harness, the turn list is
/// `zip_longest(questions, answers[:-1])`: a question without a paired answer gets `A:`
/// (answers beyond the questions, which [`load_coqa`](super::data::load_coqa) never yields,
/// are ignored).
pub fn build_prompt(doc: &CoqaDoc) -> String {
    let earlier = &doc.answers[..doc.answers.len().saturating_sub(1)];
    let mut text = format!("{}\n\n", doc.story);
    for (i, question) in doc.questions.iter().enumerate() {
        text.push_str("Q: ");
        text.push_str(question);
        text.push_str("\n\n");
        match earlier.get(i) {
            Some(answer) => {
                text.push_str("A: ");
                text.push_str(answer);
                text.push_str("\n\n");
            }
            None => text.push_str("A:"),
        }
    }
    text
}

/// The gold answers for the last turn (`doc_to_target`): the main answer, then each
/// additional answer (in key order) unless it equals, ignoring case, one already taken.
///
/// Case is compared with Rust's full Unicode lowercasing, the same mapping as Python's
/// `str.lower()` up to Unicode-version differences. Turns missing from a list are skipped
/// (never the case for loaded stories); a story without questions has no golds.
pub fn gold_answers(doc: &CoqaDoc) -> Vec<String> {
    let Some(turn) = doc.questions.len().checked_sub(1) else {
        return Vec::new();
    };
    let mut golds: Vec<String> = doc.answers.get(turn).cloned().into_iter().collect();
    let mut lowered: Vec<String> = golds.iter().map(|g| g.to_lowercase()).collect();
    for list in &doc.additional_answers {
        if let Some(answer) = list.get(turn) {
            let lower = answer.to_lowercase();
            if !lowered.contains(&lower) {
                golds.push(answer.clone());
                lowered.push(lower);
            }
        }
    }
    golds
}
