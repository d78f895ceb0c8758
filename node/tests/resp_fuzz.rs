//! The RESP parser and the peer frame decoder never panic and never over-read: arbitrary bytes give a command, "need more", or
//! a protocol error; a command's consumed length never exceeds the input; valid commands survive
//! being cut anywhere and arriving in pieces.

use durakv::server::resp::{Limits, Reply, parse_command};
use proptest::collection::vec;
use proptest::prelude::*;

fn encode(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    Reply::Array(Some(args.iter().map(|a| Reply::Bulk(Some(a.clone()))).collect())).encode(&mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        if let Ok(Some((_, used))) = parse_command(&bytes, &Limits::default()) {
            prop_assert!(used <= bytes.len());
            prop_assert!(used > 0);
        }
    }

    #[test]
    fn protocol_shaped_noise_never_panics(parts in vec(prop_oneof![
        Just(b"*".to_vec()), Just(b"$".to_vec()), Just(b"\r\n".to_vec()), Just(b"-1".to_vec()),
        Just(b"3".to_vec()), Just(b"99999999999".to_vec()), Just(b"abc".to_vec()), Just(b"\"".to_vec()),
    ], 0..40)) {
        let bytes: Vec<u8> = parts.concat();
        let _ = parse_command(&bytes, &Limits::default());
    }

    #[test]
    fn valid_commands_parse_back_whole_and_in_pieces(
        args in vec(vec(any::<u8>(), 0..64), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let wire = encode(&args);
        let (got, used) = parse_command(&wire, &Limits::default()).expect("valid").expect("complete");
        prop_assert_eq!(&got, &args);
        prop_assert_eq!(used, wire.len());
        let at = cut.index(wire.len());
        prop_assert_eq!(parse_command(&wire[..at], &Limits::default()).expect("a prefix is valid"), None);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Peer frames: arbitrary bytes give a frame, "need more" or a typed error, never a panic, and a
    /// frame never claims more bytes than it was given.
    #[test]
    fn peer_frames_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        use durakv::transport::frame::{MAX_FRAME_BYTES, PeerFrame};
        if let Ok(Some((_, used))) = PeerFrame::decode(&bytes, MAX_FRAME_BYTES) {
            prop_assert!(used <= bytes.len());
        }
    }
}
