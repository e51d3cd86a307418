//! SQuAD normalization, exact match, token F1, CoQA leave-one-out scoring and answer
//! extraction, against values worked out by hand from the Python definitions.

use qrt_eval::coqa::metrics::{exact, f1, normalize_answer, prediction_from_output, score, Scores};

fn close(got: f64, want: f64) {
    assert!((got - want).abs() < 1e-12, "got {got}, want {want}");
}

fn golds(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn normalization() {
    assert_eq!(normalize_answer("The Cat"), "cat");
    assert_eq!(
        normalize_answer("  A  white\tcat,\n an apple!  "),
        "white cat apple"
    );
    assert_eq!(
        normalize_answer("the-end"),
        "theend",
        "punctuation goes before articles"
    );
    assert_eq!(normalize_answer("the_end"), "theend");
    assert_eq!(
        normalize_answer("then, anthem, a1, thea"),
        "then anthem a1 thea",
        "articles only as whole words"
    );
    assert_eq!(
        normalize_answer("a.n"),
        "",
        "`a.n` becomes `an`, an article"
    );
    assert_eq!(normalize_answer("The."), "");
    assert_eq!(normalize_answer("It's 5 o'clock"), "its 5 oclock");
    assert_eq!(normalize_answer("\"Yes,\" she said."), "yes she said");
    assert_eq!(normalize_answer("Café"), "café");
    assert_eq!(normalize_answer("ÀLA CARTE"), "àla carte");
    // Non-ASCII letters are word characters: no boundary inside `théâtre` or before `aé`.
    assert_eq!(normalize_answer("théâtre aé éa a"), "théâtre aé éa");
    // A combining accent is not a word character in Python's `re`: `the` + U+0301 loses `the`.
    assert_eq!(normalize_answer("the\u{301} cat"), "\u{301} cat");
    // Python's word characters are letters, numbers and `_` (values checked with CPython):
    // a spacing mark or a circled letter (Unicode `Alphabetic`, not letters) and a connector
    // punctuation end a word; superscript digits do not.
    assert_eq!(normalize_answer("aⒶ b"), "ⓐ b");
    assert_eq!(normalize_answer("a\u{903} x"), "\u{903} x");
    assert_eq!(normalize_answer("the‿cat"), "‿cat");
    assert_eq!(normalize_answer("a² b"), "a² b");
    // Full lowercasing: `İ` becomes `i` + U+0307 (not a word character), final sigma.
    assert_eq!(normalize_answer("İa"), "i\u{307}");
    assert_eq!(normalize_answer("ΟΔΟΣ a"), "οδο\u{3c2}");
    // Unicode punctuation is not in `string.punctuation`.
    assert_eq!(normalize_answer("“yes” — no…"), "“yes” — no…");
    // Python's whitespace: no-break space and the ASCII separators split words.
    assert_eq!(normalize_answer("a\u{a0}b\u{1f}c\u{3000}d"), "b c d");
}

#[test]
fn exact_and_f1() {
    for (pred, em, score_f1) in [
        ("white", 1.0, 1.0),
        ("white.", 1.0, 1.0),
        ("White kitten", 0.0, 2.0 / 3.0),
    ] {
        close(exact("white", pred), em);
        close(f1("white", pred), score_f1);
    }
    close(exact("Café", "café"), 1.0);
    // [café] vs [café, au, lait]: p = 1, r = 1/3 -> 1/2.
    close(f1("Café au lait", "CAFÉ"), 0.5);
    close(exact("the cat", "a cat!"), 1.0);
    // Empty answers.
    close(exact("white", ""), 0.0);
    close(f1("white", ""), 0.0);
    close(f1("", ""), 1.0);
    close(exact("", ""), 1.0);
    close(f1("The.", ""), 1.0);
    close(exact("The.", ""), 1.0);
    close(f1("The.", "a"), 1.0);
    close(f1("", "white"), 0.0);
    // Repeated tokens count as a multiset: gold [a1, a1, b] (no article: `a1` is a word),
    // pred [a1, a1, a1]: 2 in common, p = 2/3, r = 2/3.
    close(f1("a1 a1 b", "a1 a1 a1"), 2.0 / 3.0);
    // No overlap.
    close(f1("red", "blue green"), 0.0);
    // p = 2/4, r = 2/3 -> 2 * (1/2)(2/3) / (7/6) = 4/7.
    close(f1("big red dog", "one big dog here"), 4.0 / 7.0);
}

#[test]
fn leave_one_out() {
    let s = |g: &[&str], pred: &str| score(&golds(g), pred);
    // One gold: plain scores.
    assert_eq!(s(&["white"], "White!"), Scores { em: 1.0, f1: 1.0 });
    let one = s(&["white"], "white kitten");
    close(one.em, 0.0);
    close(one.f1, 2.0 / 3.0);
    // Two golds ["white", "white cat"] vs "white": leave out "white" -> vs "white cat":
    // EM 0, F1 2/3; leave out "white cat" -> EM 1, F1 1. Means 1/2 and 5/6.
    let two = s(&["white", "white cat"], "white");
    close(two.em, 0.5);
    close(two.f1, 5.0 / 6.0);
    // Three golds ["white", "white cat", "a white cat"] vs "white cat": every leave-out keeps
    // a "white cat" gold -> 1, 1.
    assert_eq!(
        s(&["white", "white cat", "a white cat"], "white cat"),
        Scores { em: 1.0, f1: 1.0 }
    );
    // vs "white": leave out "white" -> max(2/3, 2/3), EM 0; the others keep "white" -> 1.
    // EM 2/3, F1 (2/3 + 1 + 1) / 3 = 8/9.
    let three = s(&["white", "white cat", "a white cat"], "white");
    close(three.em, 2.0 / 3.0);
    close(three.f1, 8.0 / 9.0);
    // vs "cat": F1 0, 2/3, 2/3; leave-outs 2/3, 2/3, 2/3.
    let cat = s(&["white", "white cat", "a white cat"], "cat");
    close(cat.em, 0.0);
    close(cat.f1, 2.0 / 3.0);
    // No golds scores zero.
    assert_eq!(s(&[], "x"), Scores { em: 0.0, f1: 0.0 });
}

#[test]
fn answer_extraction() {
    assert_eq!(prediction_from_output("  Paris.\nQ: next"), "Paris.");
    assert_eq!(
        prediction_from_output("\n\n Paris \nQ: x"),
        "Paris ",
        "strip first, then the first line"
    );
    assert_eq!(prediction_from_output("Paris\r\nQ:"), "Paris\r");
    assert_eq!(prediction_from_output(""), "");
    assert_eq!(prediction_from_output(" \t\n "), "");
    assert_eq!(prediction_from_output("\u{a0}\u{1c}yes\u{3000}"), "yes");
}
