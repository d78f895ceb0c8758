//! Decoders never panic: arbitrary and mutated bytes give records or a typed error.
//!
//! Failure injected: random bytes as a segment image, random mutations of valid segments, random files
//! in a WAL directory. Invariant: no panic; every problem is a typed error naming file and offset.

use std::path::Path;
use std::sync::Arc;

use durakv::io::{Fs, OpenOptions, SharedFs};
use durakv::wal::{
    Batch, Entry, Record, SEGMENT_HEADER_LEN, Wal, WalError, WalOptions, decode_frame, encode_frame,
    encode_segment_header, later_durable_after, scan_segment, single_bit_rot,
};
use durakv_faults::SimFs;
use proptest::collection::vec;
use proptest::prelude::*;

fn valid_segment(records: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut buf = encode_segment_header(1).to_vec();
    for (i, (term, data)) in records.iter().enumerate() {
        let durable_upto = buf.len() as u64;
        let r = Record::Entry(Entry { index: i as u64 + 1, term: *term, data: data.clone() });
        encode_frame(&mut buf, &r, durable_upto);
    }
    buf
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..2000)) {
        let _ = scan_segment(&bytes);
        for off in 0..bytes.len().min(6) {
            let _ = decode_frame(&bytes, off);
            let _ = single_bit_rot(&bytes, off, 512, None);
            let _ = later_durable_after(&bytes, off);
        }
    }

    #[test]
    fn arbitrary_frames_after_a_valid_header_never_panic(tail in vec(any::<u8>(), 0..3000)) {
        let mut bytes = encode_segment_header(1).to_vec();
        bytes.extend_from_slice(&tail);
        let scan = scan_segment(&bytes).expect("the header is valid");
        let mut prev_end = SEGMENT_HEADER_LEN as u64;
        for f in &scan.frames {
            prop_assert_eq!(f.offset, prev_end);
            prop_assert!(f.end <= bytes.len() as u64);
            prev_end = f.end;
        }
    }

    #[test]
    fn mutated_segments_decode_to_a_prefix_or_stop_with_a_reason(
        records in vec((1u64..5, vec(any::<u8>(), 0..300)), 1..8),
        flips in vec((any::<prop::sample::Index>(), 0u8..8), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let good = valid_segment(&records);
        let mut bad = good.clone();
        for (at, bit) in &flips {
            let i = at.index(bad.len());
            bad[i] ^= 1 << bit;
        }
        bad.truncate(cut.index(bad.len() + 1).max(1));
        if let Ok(scan) = scan_segment(&bad) {
            let original = scan_segment(&good).expect("valid").frames;
            // Whatever decodes is a prefix of what was written: CRCs let nothing altered through.
            for (i, f) in scan.frames.iter().enumerate() {
                prop_assert_eq!(&f.record, &original[i].record);
            }
        }
    }

    #[test]
    fn arbitrary_segment_files_open_to_a_wal_or_a_typed_error(
        tail in vec(any::<u8>(), 0..2000),
        valid_header in any::<bool>(),
    ) {
        let fs = SimFs::with_seed(1);
        let dir = Path::new("/w");
        fs.create_dir_all(dir).expect("mkdir");
        let mut bytes = if valid_header { encode_segment_header(1).to_vec() } else { Vec::new() };
        bytes.extend_from_slice(&tail);
        let mut f = fs.open(&dir.join("00000000000000000001.wal"), OpenOptions::create_new()).expect("create");
        f.write_at(&bytes, 0).expect("write");
        drop(f);
        let shared: SharedFs = Arc::new(fs.clone());
        match Wal::open(shared, dir, WalOptions::default()) {
            Ok((mut wal, _)) => {
                // A WAL that opened is usable.
                let next = wal.last_index().map_or(1, |l| l + 1).max(wal.compacted_below());
                wal.append(Batch::new().entry(next, 1, b"x".to_vec())).expect("append after open");
            }
            Err(WalError::Corrupt { path, .. }) => prop_assert!(path.starts_with(dir)),
            Err(WalError::InvalidArgument(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error kind: {}", other),
        }
    }
}
