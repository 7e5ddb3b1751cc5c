//! The journal's frames written and read back, torn and damaged.

use std::path::{Path, PathBuf};

use super::file::Journal;
use super::*;

const SALT: u64 = 0x5a17;

#[test]
fn frames_of_every_size_read_back_across_blocks_and_restarts() {
    // Direct writes where the file system takes them, and buffered ones.
    for direct in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        frames_read_back(dir.path(), direct);
    }
}

fn frames_read_back(dir: &Path, direct: bool) {
    let path = journal_path(&dir.join("db.redb"));
    let mut j = Journal::open_with(&path, SALT, 1, direct).unwrap();
    let bodies: Vec<Vec<u8>> = (0..300u32)
        .map(|i| {
            let n = (i as usize * 977) % 9_000;
            (0..n).map(|b| (b as u32 ^ i) as u8).collect()
        })
        .collect();
    for b in &bodies {
        j.append(b).unwrap();
        assert_eq!(j.written() % BLOCK as u64, 0, "frames fill whole blocks");
    }
    let scan = scan(&path, SALT, 0).unwrap();
    assert_eq!(scan.problem, None);
    assert_eq!(scan.frames.len(), bodies.len());
    for (f, b) in scan.frames.iter().zip(&bodies) {
        assert_eq!(&f.body, b);
    }
    // After a restart with a new salt the new frames overwrite the old
    // ones from offset 0; the older cycle's frames behind them end the
    // journal, and are no damage.
    j.restart(SALT + 1);
    for b in &bodies[..5] {
        j.append(b).unwrap();
    }
    let scan2 = super::scan(&path, SALT + 1, 300).unwrap();
    assert_eq!(scan2.problem, None);
    assert_eq!(scan2.frames.len(), 5);
    assert_eq!(scan2.frames[4].lsn, 305);
    assert_eq!(scan2.frames[4].body, bodies[4]);
}

#[test]
fn ops_round_trip() {
    let ops = [
        Op::Event {
            position: 9,
            record: b"rec",
        },
        Op::IndexPut {
            name: "runs",
            key: "k",
            value: b"v",
        },
        Op::IndexDelete {
            name: "runs",
            key: "k",
        },
        Op::Snapshot {
            stream: "s",
            seq: 2,
            bytes: b"snap",
        },
    ];
    let mut body = Vec::new();
    for op in &ops {
        op.encode(&mut body);
    }
    assert_eq!(decode_ops(&body).unwrap(), ops);
    // A cut body is refused at the start of the op it cuts.
    let mut all_but_last = Vec::new();
    for op in &ops[..3] {
        op.encode(&mut all_but_last);
    }
    assert_eq!(
        decode_ops(&body[..body.len() - 1]).unwrap_err(),
        all_but_last.len()
    );
}

/// A journal with three frames of 1,000 bytes (one block each).
fn three_frames(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = journal_path(&dir.join("db.redb"));
    let mut j = Journal::open_with(&path, SALT, 1, false).unwrap();
    for i in 0..3u8 {
        j.append(&[i; 1000]).unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn a_torn_last_frame_is_dropped_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut bytes) = three_frames(dir.path());
    // The third frame's second sector never reached the disk (an
    // interrupted write keeps each sector old or new): zero, as before.
    bytes[2 * BLOCK + SECTOR..2 * BLOCK + 2 * SECTOR].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let s = scan(&path, SALT, 0).unwrap();
    assert_eq!(s.problem, None);
    assert_eq!(s.frames.len(), 2);
    // Its first sector missing instead: the same.
    let (path, mut bytes) = three_frames(dir.path());
    bytes[2 * BLOCK..2 * BLOCK + SECTOR].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let s = scan(&path, SALT, 0).unwrap();
    assert_eq!((s.problem, s.frames.len()), (None, 2));
}

#[test]
fn damage_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    // One flipped byte in the only... last frame: damage, not a tear.
    let (path, mut bytes) = three_frames(dir.path());
    bytes[2 * BLOCK + 100] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let s = scan(&path, SALT, 0).unwrap();
    assert_eq!(s.frames.len(), 2);
    assert!(
        matches!(s.problem, Some(JournalProblem::Damaged { lsn: 3, .. })),
        "{:?}",
        s.problem
    );
    // A damaged middle frame with an intact later one: the later one's
    // stamp shows the middle one was acknowledged.
    let (path, mut bytes) = three_frames(dir.path());
    bytes[BLOCK..BLOCK + SECTOR].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let s = scan(&path, SALT, 0).unwrap();
    assert_eq!(s.frames.len(), 1);
    let problem = s.problem.expect("refused").to_string();
    assert!(
        problem.contains("frame 2 cannot be read but frame 3 follows"),
        "{problem}"
    );
    // Missing and truncated files.
    std::fs::write(&path, &bytes[..BLOCK]).unwrap();
    assert!(matches!(
        scan(&path, SALT, 0).unwrap().problem,
        Some(JournalProblem::Truncated { len }) if len == BLOCK as u64
    ));
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        scan(&path, SALT, 0).unwrap().problem,
        Some(JournalProblem::Missing)
    );
}

#[test]
fn another_cycles_frames_are_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three_frames(dir.path());
    // Another salt (an older cycle, or another database's journal).
    let s = scan(&path, SALT ^ 1, 0).unwrap();
    assert_eq!((s.problem, s.frames.len()), (None, 0));
    // Frames already applied are not pending.
    let s = scan(&path, SALT, 3).unwrap();
    assert_eq!((s.problem, s.frames.len()), (None, 0));
}
