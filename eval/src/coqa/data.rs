//! Loading CoQA stories from the official JSON release or from Hugging Face JSONL exports.
//!
//! Accepted inputs, told apart by content:
//! - the official file (`coqa-dev-v1.0.json`): one JSON object whose `data` array holds the
//!   stories; `questions` and `answers` are arrays of `{"input_text", "turn_id", ...}` objects
//!   (sorted here by `turn_id`), `additional_answers` maps `"0"`, `"1"`, `"2"` to such arrays;
//! - JSON Lines, one story per line, in either Hugging Face schema: `stanfordnlp/coqa`
//!   (`questions` a list of strings, `answers` `{"input_text": [...], ...}`, no additional
//!   answers) or `EleutherAI/coqa` (`questions` and `answers` `{"input_text": [...], ...}`,
//!   `additional_answers` `{"0": {"input_text": [...]}, ...}`), used in the order given, as
//!   lm-evaluation-harness does.
//!
//! Every malformed input is an [`EvalError::Data`] naming the file and the line or story.

use std::path::Path;

use serde_json::{Map, Value};

use crate::EvalError;

/// One CoQA story with its whole conversation.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CoqaDoc {
    /// The file's `id`, or the story's 0-based position in the file when it has none.
    pub id: String,
    /// The story's domain (`mctest`, `race`, `cnn`, `wikipedia`, `gutenberg`, ...); empty when
    /// the file has none.
    pub source: String,
    /// The passage, exactly as in the file.
    pub story: String,
    /// The questions, one per turn, in turn order.
    pub questions: Vec<String>,
    /// The main answers (`input_text`), one per turn.
    pub answers: Vec<String>,
    /// The additional answers: one list per additional-answer key, in key order (`"0"`, `"1"`,
    /// `"2"`), each with at least one answer per turn. Empty when the file has none.
    pub additional_answers: Vec<Vec<String>>,
}

/// Reads a CoQA file (official JSON or Hugging Face JSONL; see the module docs).
pub fn load_coqa(path: &Path) -> Result<Vec<CoqaDoc>, EvalError> {
    let label = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| EvalError::Io {
        path: label.clone(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| EvalError::Data {
        path: label.clone(),
        reason: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
    parse_coqa(&text, &label)
}

/// Parses the text of a CoQA file; `label` names it in error messages.
pub fn parse_coqa(text: &str, label: &str) -> Result<Vec<CoqaDoc>, EvalError> {
    let fail = |reason: String| EvalError::Data {
        path: label.to_string(),
        reason,
    };
    if text.trim().is_empty() {
        return Err(fail("the file is empty".into()));
    }
    // A single JSON object with a `data` member is the official release; anything else is
    // read as JSON Lines.
    if let Ok(Value::Object(mut top)) = serde_json::from_str::<Value>(text) {
        if let Some(data) = top.remove("data") {
            let Value::Array(stories) = data else {
                return Err(fail("`data` is not an array of stories".into()));
            };
            if stories.is_empty() {
                return Err(fail("`data` holds no stories".into()));
            }
            return stories
                .iter()
                .enumerate()
                .map(|(index, story)| {
                    parse_story(story, index).map_err(|r| fail(format!("story {index}{r}")))
                })
                .collect();
        }
    }
    let mut docs = Vec::new();
    for (line_index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let index = docs.len();
        let ctx = format!("line {}: story {index}", line_index + 1);
        let value: Value =
            serde_json::from_str(line).map_err(|e| fail(format!("{ctx}: not JSON ({e})")))?;
        docs.push(parse_story(&value, index).map_err(|r| fail(format!("{ctx}{r}")))?);
    }
    Ok(docs)
}

/// One story object; errors are reasons to append to "story N" (they start with a space or a
/// colon).
fn parse_story(value: &Value, index: usize) -> Result<CoqaDoc, String> {
    let Value::Object(obj) = value else {
        return Err(": not a JSON object".into());
    };
    let story = match obj.get("story") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(": `story` is not a string".into()),
        None => return Err(" has no `story` (not a CoQA story)".into()),
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => index.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(": `id` is not a string".into()),
    };
    let source = match obj.get("source") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(": `source` is not a string".into()),
    };
    let questions = match obj.get("questions") {
        Some(v) => texts(v).map_err(|r| format!(": `questions` {r}"))?,
        None => return Err(" has no `questions`".into()),
    };
    if questions.is_empty() {
        return Err(" has no questions".into());
    }
    let answers = match obj.get("answers") {
        Some(v) => texts(v).map_err(|r| format!(": `answers` {r}"))?,
        None => return Err(" has no `answers`".into()),
    };
    if answers.len() != questions.len() {
        return Err(format!(
            " has {} answers for {} questions",
            answers.len(),
            questions.len()
        ));
    }
    let additional_answers = match obj.get("additional_answers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(map)) => additional(map, questions.len())?,
        Some(_) => return Err(": `additional_answers` is not an object".into()),
    };
    Ok(CoqaDoc {
        id,
        source,
        story,
        questions,
        answers,
        additional_answers,
    })
}

/// The additional-answer lists in key order (numeric keys by value, then any others by name).
fn additional(map: &Map<String, Value>, turns: usize) -> Result<Vec<Vec<String>>, String> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| (k.parse::<u64>().unwrap_or(u64::MAX), k.as_str()));
    keys.into_iter()
        .map(|key| {
            let list =
                texts(&map[key]).map_err(|r| format!(": `additional_answers` \"{key}\" {r}"))?;
            if list.len() < turns {
                return Err(format!(
                    " has {} additional answers under \"{key}\" for {turns} questions",
                    list.len()
                ));
            }
            Ok(list)
        })
        .collect()
}

/// The texts of a turn list in any of the accepted shapes: a list of strings, a list of
/// `{"input_text", "turn_id"}` objects (sorted by `turn_id` when every item has one), or an
/// object holding an `input_text` list of strings. Errors complete "`field` ...".
fn texts(value: &Value) -> Result<Vec<String>, String> {
    match value {
        Value::Array(items) => {
            let mut turns = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => turns.push((None, s.clone())),
                    Value::Object(o) => match o.get("input_text") {
                        Some(Value::String(s)) => {
                            turns.push((o.get("turn_id").and_then(Value::as_i64), s.clone()))
                        }
                        _ => return Err(format!("item {i} has no `input_text` string")),
                    },
                    _ => return Err(format!("item {i} is neither a string nor an object")),
                }
            }
            if turns.iter().all(|(turn, _)| turn.is_some()) {
                turns.sort_by_key(|(turn, _)| *turn);
            }
            Ok(turns.into_iter().map(|(_, s)| s).collect())
        }
        Value::Object(o) => match o.get("input_text") {
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(format!("`input_text` item {i} is not a string")),
                })
                .collect(),
            _ => Err("has no `input_text` list".into()),
        },
        _ => Err("is neither a list nor an object".into()),
    }
}
