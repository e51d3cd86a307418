//! Loading CoQA: the Hugging Face JSONL export of the dev set, both JSONL schemas, the
//! official schema's turn ordering, and every malformed input rejected with a message that
//! names the file.

use std::path::PathBuf;

use qrt_eval::coqa::data::{load_coqa, parse_coqa, CoqaDoc};
use qrt_eval::EvalError;

fn data_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/coqa");
    if dir.exists() {
        Some(dir)
    } else {
        eprintln!("SKIP: {} is absent", dir.display());
        None
    }
}

#[test]
fn hf_jsonl_dev_set() {
    let Some(dir) = data_dir() else { return };
    let docs = load_coqa(&dir.join("coqa-dev.hf.jsonl")).expect("the JSONL loads");
    assert_eq!(docs.len(), 500);
    for (i, doc) in docs.iter().enumerate() {
        assert_eq!(doc.id, i.to_string());
        assert_eq!(doc.questions.len(), doc.answers.len());
        assert!(
            doc.additional_answers.is_empty(),
            "stanfordnlp/coqa has no additional answers"
        );
    }
    let sources: Vec<&str> = docs.iter().map(|d| d.source.as_str()).collect();
    assert_eq!(sources[..3], ["mctest", "mctest", "race"]);
    assert_eq!(sources[499], "wikipedia");
    for domain in ["mctest", "race", "cnn", "wikipedia", "gutenberg"] {
        assert_eq!(
            sources.iter().filter(|s| **s == domain).count(),
            100,
            "{domain}"
        );
    }
    assert_eq!(
        docs[1].questions.last().map(String::as_str),
        Some("were they excited")
    );
    assert_eq!(docs[1].answers.last().map(String::as_str), Some("unknown"));

    let official = load_coqa(&dir.join("coqa-dev-v1.0.sample.json")).expect("the sample loads");
    assert_eq!(docs[0].story, official[0].story);
    assert_eq!(docs[0].questions, official[0].questions);
    assert_eq!(docs[0].answers, official[0].answers);
    assert_eq!(docs[0].source, official[0].source);
}

#[test]
fn eleutherai_schema() {
    let line = r#"{"id": "s1", "source": "race", "story": "S.", "questions": {"input_text": ["q1", "q2"], "turn_id": [1, 2]}, "answers": {"input_text": ["a1", "a2"], "span_start": [0, 1]}, "additional_answers": {"1": {"input_text": ["c1", "c2"]}, "0": {"input_text": ["b1", "b2"]}, "2": {"input_text": ["d1", "d2"]}}}"#;
    let docs = parse(&format!("{line}\n\n{}\n", line.replace("\"s1\"", "\"s2\"")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docs.len(), 2);
    let d = &docs[0];
    assert_eq!(
        (d.id.as_str(), d.source.as_str(), d.story.as_str()),
        ("s1", "race", "S.")
    );
    assert_eq!(d.questions, ["q1", "q2"]);
    assert_eq!(d.answers, ["a1", "a2"]);
    assert_eq!(
        d.additional_answers,
        [["b1", "b2"], ["c1", "c2"], ["d1", "d2"]]
    );
    assert_eq!(docs[1].id, "s2");
}

/// `parse_coqa` with the label `dev.jsonl`.
fn parse(text: &str) -> Result<Vec<CoqaDoc>, EvalError> {
    parse_coqa(text, "dev.jsonl")
}

#[test]
fn official_schema_sorted_by_turn() {
    let text = r#"{"version": "1.0", "data": [
        {"source": "cnn", "id": "x", "story": "  Story with spaces.  ",
         "questions": [{"input_text": "q2", "turn_id": 2}, {"input_text": "q1", "turn_id": 1}],
         "answers": [{"input_text": "a1", "turn_id": 1}, {"input_text": "a2", "turn_id": 2}],
         "additional_answers": {"0": [{"input_text": "b2", "turn_id": 2}, {"input_text": "b1", "turn_id": 1}]}},
        {"source": "race", "story": "T", "questions": [{"input_text": "q", "turn_id": 1}],
         "answers": [{"input_text": "a", "turn_id": 1}]}
    ]}"#;
    let docs = parse_coqa(text, "dev.json").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docs.len(), 2);
    assert_eq!(
        docs[0].story, "  Story with spaces.  ",
        "the story is kept as is"
    );
    assert_eq!(docs[0].questions, ["q1", "q2"]);
    assert_eq!(docs[0].answers, ["a1", "a2"]);
    assert_eq!(docs[0].additional_answers, [["b1", "b2"]]);
    assert_eq!(docs[1].id, "1", "no id: the story's position");
    assert!(docs[1].additional_answers.is_empty());
}

#[test]
fn stanford_single_line() {
    let text = r#"{"source": "wikipedia", "story": "S", "questions": ["q"], "answers": {"input_text": ["a"], "answer_start": [0], "answer_end": [1]}}"#;
    let docs = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].id, "0");
    assert_eq!(docs[0].questions, ["q"]);
    assert_eq!(docs[0].answers, ["a"]);
}

/// Every case must fail with a Data error naming the label and containing `needle`.
fn rejects(text: &str, needle: &str) {
    rejects_as(text, "dev.jsonl", needle);
}

/// `text` read as file `label` must fail with a Data error naming `label` and containing
/// `needle`.
fn rejects_as(text: &str, label: &str, needle: &str) {
    match parse_coqa(text, label) {
        Err(e @ EvalError::Data { .. }) => {
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("{label}: ")), "{msg}");
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        }
        other => panic!("{text:?} gave {other:?}"),
    }
}

const GOOD: &str = r#"{"source": "cnn", "story": "S", "questions": ["q1", "q2"], "answers": {"input_text": ["a1", "a2"]}}"#;

#[test]
fn bad_inputs_are_errors() {
    rejects("", "empty");
    rejects(" \n\n  \n", "empty");
    rejects("hello", "line 1: story 0: not JSON");
    rejects(
        &format!("{GOOD}\n{{\"story\": \"S\", \"questions\": [\"q\"]"),
        "line 2: story 1: not JSON",
    );
    rejects("[1, 2]", "line 1: story 0: not a JSON object");
    rejects(
        &format!("{GOOD}\n\n{}", GOOD.replace("\"story\"", "\"text\"")),
        "line 3: story 1 has no `story`",
    );
    rejects(&GOOD.replace("\"S\"", "3"), "`story` is not a string");
    rejects(
        &GOOD.replace("[\"q1\", \"q2\"]", "[]"),
        "line 1: story 0 has no questions",
    );
    rejects(
        &GOOD.replace("\"questions\"", "\"qs\""),
        "story 0 has no `questions`",
    );
    rejects(
        &GOOD.replace("\"answers\"", "\"as\""),
        "story 0 has no `answers`",
    );
    rejects(
        &GOOD.replace("[\"a1\", \"a2\"]", "[\"a1\"]"),
        "story 0 has 1 answers for 2 questions",
    );
    rejects(
        &GOOD.replace("[\"q1\", \"q2\"]", "[\"q1\", 2]"),
        "`questions` item 1 is neither a string nor an object",
    );
    rejects(
        &GOOD.replace("[\"a1\", \"a2\"]", "[\"a1\", null]"),
        "`answers` `input_text` item 1 is not a string",
    );
    rejects(
        &GOOD.replace("\"questions\": [\"q1\", \"q2\"]", "\"questions\": 7"),
        "`questions` is neither a list nor an object",
    );
    rejects(
        &GOOD.replace("\"source\"", "\"id\": 5, \"source\""),
        "`id` is not a string",
    );
    let short = GOOD.replace(
        "\"answers\"",
        "\"additional_answers\": {\"0\": {\"input_text\": [\"b1\", \"b2\"]}, \"1\": {\"input_text\": [\"c1\"]}}, \"answers\"",
    );
    rejects(
        &short,
        "story 0 has 1 additional answers under \"1\" for 2 questions",
    );
    rejects(
        &GOOD.replace("\"answers\"", "\"additional_answers\": [], \"answers\""),
        "`additional_answers` is not an object",
    );
}

#[test]
fn bad_official_inputs_are_errors() {
    let fail = |text: &str, needle: &str| rejects_as(text, "coqa-dev.json", needle);
    fail(
        r#"{"version": "1.0", "data": {}}"#,
        "`data` is not an array",
    );
    fail(r#"{"version": "1.0", "data": []}"#, "no stories");
    fail(
        r#"{"data": [{"source": "cnn", "questions": [], "answers": []}]}"#,
        "story 0 has no `story`",
    );
    fail(
        r#"{"data": [{"story": "S", "questions": [], "answers": []}]}"#,
        "story 0 has no questions",
    );
    fail(
        r#"{"data": [{"story": "S", "questions": [{"input_text": "q", "turn_id": 1}], "answers": [{"turn_id": 1}]}]}"#,
        "story 0: `answers` item 0 has no `input_text` string",
    );
    fail(
        r#"{"data": [{"story": "S", "questions": [{"input_text": "q", "turn_id": 1}], "answers": [{"input_text": "a", "turn_id": 1}], "additional_answers": {"0": []}}]}"#,
        "story 0 has 0 additional answers under \"0\" for 1 questions",
    );
}

#[test]
fn unreadable_files_are_errors() {
    let missing = PathBuf::from("/nonexistent/coqa.jsonl");
    match load_coqa(&missing) {
        Err(e @ EvalError::Io { .. }) => {
            assert!(e.to_string().starts_with("/nonexistent/coqa.jsonl: "))
        }
        other => panic!("{other:?}"),
    }
    let path = std::env::temp_dir().join(format!("qrt-coqa-bad-utf8-{}.jsonl", std::process::id()));
    std::fs::write(&path, b"{\"story\": \"\xff\"}\n").expect("temp file");
    let got = load_coqa(&path);
    std::fs::remove_file(&path).ok();
    match got {
        Err(e @ EvalError::Data { .. }) => assert!(e.to_string().contains("not UTF-8"), "{e}"),
        other => panic!("{other:?}"),
    }
}
