//! Writer behaviour: atomic replacement, clean-up of unfinished writes, and
//! refusal of plans and data that would not make a valid file.

mod container_common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use container_common::*;
use qrt_format::container::*;
use qrt_format::FormatError;

fn four_tensors() -> Vec<(TensorPlan, Vec<u8>)> {
    random_tensors(&mut XorShift::new(42), 4)
}

/// Two tensors of 2.4 MB each: larger than the writer's buffer, so their bytes
/// (and the header) reach the temp file before `finish`.
fn big_tensors() -> Vec<(TensorPlan, Vec<u8>)> {
    let mut rng = XorShift::new(3);
    (0..2)
        .map(|i| {
            let plan = TensorPlan::dense(format!("big.{i}"), vec![600, 1000], ElemType::F32);
            let data = rng.bytes(2_400_000);
            (plan, data)
        })
        .collect()
}

fn plans(t: &[(TensorPlan, Vec<u8>)]) -> Vec<TensorPlan> {
    t.iter().map(|(p, _)| p.clone()).collect()
}

fn assert_no_files(path: &Path) {
    assert!(!path.exists(), "{} exists", path.display());
    let tmp = tmp_of(path, std::process::id());
    assert!(!tmp.exists(), "temp file {} left behind", tmp.display());
}

#[test]
fn dropping_an_unfinished_writer_leaves_nothing() {
    let tensors = four_tensors();
    let path = temp_path("drop");
    let mut w = QrtWriter::create(&path, &Metadata::new(), plans(&tensors)).unwrap();
    let tmp = tmp_of(&path, std::process::id());
    assert!(tmp.exists(), "writer should stream into {}", tmp.display());
    assert!(!path.exists());
    for (p, d) in &tensors[..2] {
        w.write_tensor(&p.name, &[d]).unwrap();
    }
    drop(w);
    assert_no_files(&path);
}

#[test]
fn finish_with_missing_tensors_fails_and_cleans_up() {
    let tensors = four_tensors();
    let path = temp_path("missing");
    let mut w = QrtWriter::create(&path, &Metadata::new(), plans(&tensors)).unwrap();
    for (p, d) in &tensors[..3] {
        w.write_tensor(&p.name, &[d]).unwrap();
    }
    let e = w.finish().unwrap_err();
    assert!(e.to_string().contains(&tensors[3].0.name), "{e}");
    assert!(e.to_string().contains("only 3 of 4"), "{e}");
    assert_no_files(&path);
}

#[test]
fn unfinished_temp_file_never_parses() {
    // Even with every byte of data written, the temp file is not a valid file
    // until finish() writes the magic and checksums.
    let tensors = big_tensors();
    let path = temp_path("nomagic");
    let mut w = QrtWriter::create(&path, &Metadata::new(), plans(&tensors)).unwrap();
    for (p, d) in &tensors {
        w.write_tensor(&p.name, &[d]).unwrap();
    }
    let tmp = tmp_of(&path, std::process::id());
    let on_disk = std::fs::read(&tmp).unwrap();
    assert!(
        on_disk.len() > 4_000_000,
        "only {} bytes reached the temp file",
        on_disk.len()
    );
    let e = QrtFile::open(&tmp).unwrap_err();
    assert!(matches!(e, FormatError::BadMagic { .. }), "{e}");
    // Everything else is already in place: with the magic it would open.
    let mut with_magic = on_disk;
    with_magic[..4].copy_from_slice(&QRT_MAGIC);
    with_magic.resize(with_magic.len().next_multiple_of(256), 0);
    let f = QrtFile::from_bytes(with_magic, "patched").unwrap();
    assert!(
        f.verify().is_err(),
        "checksums are only written by finish()"
    );
    w.finish().unwrap();
    assert!(!tmp.exists());
    QrtFile::open(&path).unwrap().verify().unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn existing_file_is_replaced_atomically() {
    let old = four_tensors();
    let path = temp_path("replace");
    let mut meta = Metadata::new();
    meta.insert("generation", 1u32);
    write_file(&path, &meta, &old);
    let before = std::fs::read(&path).unwrap();

    // An abandoned rewrite leaves the old file untouched.
    let new = random_tensors(&mut XorShift::new(5), 2);
    let mut w = QrtWriter::create(&path, &Metadata::new(), plans(&new)).unwrap();
    w.write_tensor(&new[0].0.name, &[&new[0].1]).unwrap();
    drop(w);
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // A finished rewrite replaces it.
    meta.insert("generation", 2u32);
    write_file(&path, &meta, &new);
    let f = QrtFile::open(&path).unwrap();
    assert_eq!(f.metadata().get_u64("generation").unwrap(), 2);
    assert_eq!(f.tensors().len(), 2);
    std::fs::remove_file(&path).unwrap();
}

/// Child half of `killed_writer_leaves_no_file`: does nothing unless the parent
/// test started this process with `QRT_KILLED_WRITER_PATH` set.
#[test]
fn killed_writer_child() {
    let Some(path) = std::env::var_os("QRT_KILLED_WRITER_PATH") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    let mut tensors = big_tensors();
    tensors.extend(four_tensors());
    let mut w = QrtWriter::create(&path, &Metadata::new(), plans(&tensors)).unwrap();
    for (p, d) in &tensors[..3] {
        w.write_tensor(&p.name, &[d]).unwrap();
    }
    println!("QRT-CHILD-READY");
    // Wait to be killed (exit eventually if the parent has gone away).
    std::thread::sleep(std::time::Duration::from_secs(60));
    std::process::abort();
}

#[test]
fn killed_writer_leaves_no_file() {
    let path = temp_path("killed");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killed_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("QRT_KILLED_WRITER_PATH", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("QRT-CHILD-READY"));
    assert!(ready, "child writer did not start");
    child.kill().unwrap(); // SIGKILL: no destructors run
    child.wait().unwrap();

    assert!(
        !path.exists(),
        "a killed writer left a file at the destination"
    );
    let tmp = tmp_of(&path, child.id());
    assert!(
        tmp.exists(),
        "expected the killed writer's temp file {}",
        tmp.display()
    );
    assert!(std::fs::metadata(&tmp).unwrap().len() > 4_000_000);
    let e = QrtFile::open(&tmp).expect_err("a killed writer's temp file must not parse");
    assert!(matches!(e, FormatError::BadMagic { .. }), "{e}");
    std::fs::remove_file(&tmp).unwrap();
}

#[test]
fn write_order_and_sizes_are_checked() {
    let tensors = four_tensors();
    let path = temp_path("misuse");
    let mut w = QrtWriter::create(&path, &Metadata::new(), plans(&tensors)).unwrap();
    let (p0, d0) = &tensors[0];
    let (p1, d1) = &tensors[1];

    let e = w.write_tensor(&p1.name, &[d1]).unwrap_err();
    assert!(e.to_string().contains("plan order"), "{e}");
    let e = w.write_tensor("nope", &[d0]).unwrap_err();
    assert!(e.to_string().contains("not in the plan"), "{e}");
    let e = w.write_tensor(&p0.name, &[&d0[1..]]).unwrap_err();
    assert!(e.to_string().contains("planned as"), "{e}");
    let e = w.write_tensor(&p0.name, &[d0, d0]).unwrap_err();
    assert!(e.to_string().contains("planned parts"), "{e}");
    let e = w.write_tensor(&p0.name, &[]).unwrap_err();
    assert!(matches!(e, FormatError::Write { .. }), "{e}");

    // Misuse is detected before anything is written: the writer still works.
    for (p, d) in &tensors {
        w.write_tensor(&p.name, &[d]).unwrap();
    }
    let e = w.write_tensor(&p0.name, &[d0]).unwrap_err();
    assert!(e.to_string().contains("already written"), "{e}");
    w.finish().unwrap();
    let f = QrtFile::open(&path).unwrap();
    f.verify().unwrap();
    for (p, d) in &tensors {
        assert_eq!(
            f.part_bytes(f.tensor(&p.name).unwrap(), "data").unwrap(),
            &d[..]
        );
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn invalid_plans_and_metadata_are_refused() {
    let path = temp_path("refused");
    let ok = TensorPlan::dense("w", vec![2, 2], ElemType::F32);
    let create =
        |meta: &Metadata, plans: Vec<TensorPlan>| QrtWriter::create(&path, meta, plans).map(drop);

    let mut bad_meta = Metadata::new();
    bad_meta.insert("mixed", vec![MetaValue::U32(1), MetaValue::Str("x".into())]);
    let e = create(&bad_meta, vec![ok.clone()]).unwrap_err();
    assert!(
        e.to_string().contains("not homogeneous") && e.to_string().contains("'mixed'"),
        "{e}"
    );

    let mut deep = MetaValue::U8(0);
    for _ in 0..=MAX_ARRAY_DEPTH {
        deep = MetaValue::Array(vec![deep]);
    }
    let mut deep_meta = Metadata::new();
    deep_meta.insert("deep", deep);
    assert!(create(&deep_meta, vec![])
        .unwrap_err()
        .to_string()
        .contains("nested"));

    let mut empty_key = Metadata::new();
    empty_key.insert("", 1u8);
    assert!(create(&empty_key, vec![])
        .unwrap_err()
        .to_string()
        .contains("empty key"));

    let none = Metadata::new();
    let e = create(&none, vec![ok.clone(), ok.clone()]).unwrap_err();
    assert!(e.to_string().contains("planned twice"), "{e}");

    let mut unknown = ok.clone();
    unknown.storage.name = "q4_k".into();
    let e = create(&none, vec![unknown]).unwrap_err();
    assert!(e.to_string().contains("unknown storage type 'q4_k'"), "{e}");

    let mut wrong_size = ok.clone();
    wrong_size.parts[0].2 = 12;
    assert!(create(&none, vec![wrong_size]).is_err());

    let mut odd = ok.clone();
    odd.parts[0].2 = 15;
    assert!(create(&none, vec![odd])
        .unwrap_err()
        .to_string()
        .contains("multiple"));

    let mut params = ok.clone();
    params.storage.params.insert("bits", 4u32);
    assert!(create(&none, vec![params])
        .unwrap_err()
        .to_string()
        .contains("no parameters"));

    for shape in [vec![], vec![0], vec![1; 9], vec![u64::MAX, 2]] {
        let p = TensorPlan::dense("s", shape.clone(), ElemType::F16);
        assert!(create(&none, vec![p]).is_err(), "shape {shape:?} accepted");
    }
    let mut unnamed = ok.clone();
    unnamed.name.clear();
    assert!(create(&none, vec![unnamed]).is_err());

    assert_no_files(&path);
}

#[test]
fn unwritable_destination_reports_the_path() {
    let path = std::env::temp_dir()
        .join("qrt-no-such-dir-for-test")
        .join("x.qrt");
    let e = QrtWriter::create(&path, &Metadata::new(), vec![]).unwrap_err();
    assert!(matches!(e, FormatError::Io { .. }), "{e}");
    assert!(e.to_string().contains("qrt-no-such-dir-for-test"), "{e}");
}
