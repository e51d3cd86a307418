//! CoQA prompt, gold answers and scores on the official sample story (`coqa-dev-v1.0`'s first
//! story, 12 turns, 3 additional-answer sets), checked against values worked out by hand.
//! Skipped, with a message, when the shared data directory is absent.

use std::path::PathBuf;

use qrt_eval::coqa::data::{load_coqa, CoqaDoc};
use qrt_eval::coqa::metrics::{prediction_from_output, score, Scores};
use qrt_eval::coqa::prompt::{build_prompt, gold_answers};

fn sample() -> Option<CoqaDoc> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/coqa/coqa-dev-v1.0.sample.json");
    if !path.exists() {
        eprintln!("SKIP: {} is absent", path.display());
        return None;
    }
    let mut docs = load_coqa(&path).expect("the sample loads");
    assert_eq!(docs.len(), 1);
    docs.pop()
}

/// The story cut to its first `turns` turns, as if it were asked at that turn.
fn at_turn(doc: &CoqaDoc, turns: usize) -> CoqaDoc {
    let mut d = doc.clone();
    d.questions.truncate(turns);
    d.answers.truncate(turns);
    for list in &mut d.additional_answers {
        list.truncate(turns);
    }
    d
}

fn close(got: Scores, em: f64, f1: f64) {
    assert!(
        (got.em - em).abs() < 1e-12 && (got.f1 - f1).abs() < 1e-12,
        "got {got:?}, want em {em} f1 {f1}"
    );
}

#[test]
fn sample_fields() {
    let Some(doc) = sample() else { return };
    assert_eq!(doc.id, "3dr23u6we5exclen4th8uq9rb42tel");
    assert_eq!(doc.source, "mctest");
    assert_eq!(doc.questions.len(), 12);
    assert_eq!(doc.answers.len(), 12);
    assert_eq!(doc.additional_answers.len(), 3);
    assert!(doc.additional_answers.iter().all(|l| l.len() == 12));
    // Key order "0", "1", "2": turn 8's additional answers differ in each set.
    let turn8: Vec<&str> = doc
        .additional_answers
        .iter()
        .map(|l| l[7].as_str())
        .collect();
    assert_eq!(turn8, ["the farmer's", "the old farmer's", "the farmer's"]);
    assert!(doc
        .story
        .starts_with("Once upon a time, in a barn near a farm house"));
    assert!(doc.story.ends_with("I like being special\"."));
}

#[test]
fn sample_prompt_asks_the_last_turn() {
    let Some(doc) = sample() else { return };
    let expected_turns = "Q: What color was Cotton?\n\nA: white\n\n\
        Q: Where did she live?\n\nA: in a barn\n\n\
        Q: Did she live alone?\n\nA: no\n\n\
        Q: Who did she live with?\n\nA: with her mommy and 5 sisters\n\n\
        Q: What color were her sisters?\n\nA: orange and white\n\n\
        Q: Was Cotton happy that she looked different than the rest of her family?\n\nA: no\n\n\
        Q: What did she do to try to make herself the same color as her sisters?\n\nA: she painted herself\n\n\
        Q: Whose paint was it?\n\nA: the farmer\n\n\
        Q: What did Cotton's mother and siblings do when they saw her painted orange?\n\nA: they started laughing\n\n\
        Q: Where did Cotton's mother put her to clean the paint off?\n\nA: a bucket of water\n\n\
        Q: What did the other cats do when Cotton emerged from the bucket of water?\n\nA: licked her face\n\n\
        Q: Did they want Cotton to change the color of her fur?\n\nA:";
    let prompt = build_prompt(&doc);
    assert!(prompt.starts_with(
        "Once upon a time, in a barn near a farm house, there lived a little white kitten"
    ));
    assert_eq!(prompt, format!("{}\n\n{expected_turns}", doc.story));
    assert!(prompt
        .contains("I like being special\".\n\nQ: What color was Cotton?\n\nA: white\n\nQ: Where"));
    assert!(prompt.ends_with("\n\nQ: Did they want Cotton to change the color of her fur?\n\nA:"));
    // The last turn's answer ("no") is not in the prompt after its question.
    assert_eq!(prompt.matches("Q: ").count(), 12);
    assert_eq!(prompt.matches("A: ").count(), 11);
}

#[test]
fn sample_prompt_at_first_turn() {
    let Some(doc) = sample() else { return };
    let first = at_turn(&doc, 1);
    assert_eq!(
        build_prompt(&first),
        format!("{}\n\nQ: What color was Cotton?\n\nA:", doc.story)
    );
}

#[test]
fn sample_golds() {
    let Some(doc) = sample() else { return };
    // Turn 12: "no", then "no", "No", "no": all the same ignoring case.
    assert_eq!(gold_answers(&doc), ["no"]);
    // Turn 4: "with her mommy and 5 sisters", then "her mommy and 5 other sisters" three times.
    assert_eq!(
        gold_answers(&at_turn(&doc, 4)),
        [
            "with her mommy and 5 sisters",
            "her mommy and 5 other sisters"
        ]
    );
    // Turn 5: "orange and white", "orange with white tiger stripes", "orange", "orange".
    assert_eq!(
        gold_answers(&at_turn(&doc, 5)),
        [
            "orange and white",
            "orange with white tiger stripes",
            "orange"
        ]
    );
    // Turn 8: "the farmer", "the farmer's", "the old farmer's", "the farmer's".
    assert_eq!(
        gold_answers(&at_turn(&doc, 8)),
        ["the farmer", "the farmer's", "the old farmer's"]
    );
    // Turn 10: four different answers.
    assert_eq!(
        gold_answers(&at_turn(&doc, 10)),
        [
            "a bucket of water",
            "dropped her into a big bucket of water",
            "into a big bucket of water",
            "a big bucket of water"
        ]
    );
}

#[test]
fn sample_scores() {
    let Some(doc) = sample() else { return };
    // One gold, "no".
    let golds = gold_answers(&doc);
    close(
        score(&golds, &prediction_from_output(" No.\nQ: What next?")),
        1.0,
        1.0,
    );
    // [no, they, did, not] vs [no]: p = 1/4, r = 1, F1 = 0.5 / 1.25 = 0.4.
    close(score(&golds, "No, they did not."), 0.0, 0.4);
    close(score(&golds, "Yes"), 0.0, 0.0);

    // Turn 5, golds g0 [orange and white], g1 [orange with white tiger stripes], g2 [orange].
    let golds = gold_answers(&at_turn(&doc, 5));
    // "orange": EM 0,0,1; F1 g0 = 2(1)(1/3)/(4/3) = 1/2, g1 = 2(1)(1/5)/(6/5) = 1/3, g2 = 1.
    // Leave out g0: max(g1, g2) = 1 / 1; g1: 1 / 1; g2: EM 0, F1 1/2. EM 2/3, F1 2.5/3.
    close(score(&golds, "orange"), 2.0 / 3.0, 2.5 / 3.0);
    // "white": EM 0; F1 g0 1/2, g1 1/3, g2 0. Leave-outs: 1/3, 1/2, 1/2 -> 4/9.
    close(score(&golds, "white"), 0.0, 4.0 / 9.0);

    // Turn 10, golds [bucket of water] (3), [dropped her into big bucket of water] (7),
    // [into big bucket of water] (5), [big bucket of water] (4); pred "a big bucket of water"
    // -> [big bucket of water]: F1 6/7, 8/11, 8/9, 1; EM 0, 0, 0, 1.
    // Leave-outs: 1, 1, 1, max(6/7, 8/11, 8/9) = 8/9 (EM 1, 1, 1, 0).
    let golds = gold_answers(&at_turn(&doc, 10));
    close(
        score(&golds, "a big bucket of water"),
        0.75,
        (3.0 + 8.0 / 9.0) / 4.0,
    );
}
