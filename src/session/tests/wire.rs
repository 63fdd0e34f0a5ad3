//! The wire format alone: frames, the replay buffer's accounting, the
//! resume headers and their proofs.

use super::*;

#[test]
fn frames_round_trip() {
    let frames = [
        Frame::Data {
            offset: 42,
            payload: vec![9u8; MAX_DATA].into(),
        },
        Frame::Data {
            offset: u64::MAX - 1,
            payload: vec![1u8].into(),
        },
        Frame::Ack { consumed: 7 },
        Frame::Fin { offset: 1 << 40 },
        Frame::Close {
            code: frame::CLOSE_RESET,
        },
    ];
    let mut wire = BytesMut::new();
    for f in &frames {
        FrameCodec.encode(f.clone(), &mut wire).expect("encode");
    }
    // Fed one byte at a time: a partial frame is never an error or a frame.
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for b in wire {
        buf.put_u8(b);
        while let Some(f) = FrameCodec.decode(&mut buf).expect("decode") {
            out.push(f);
        }
    }
    assert_eq!(out, frames);
}

#[test]
fn a_data_payload_arriving_as_a_chunk_of_its_own_is_taken_without_a_copy() {
    let payload = bytes::Bytes::from(vec![7u8; 1000]);
    let mut wire = BytesMut::new();
    frame::put_data_header(&mut wire, 5, payload.len());
    let header = wire.clone();
    // The payload and, behind it, the start of the next frame.
    let mut chunk = bytes::Bytes::from([&payload[..], b"\x02"].concat());
    let mut src = header.clone();
    match FrameCodec.decode_data_from(&mut src, &mut chunk).unwrap() {
        Some(Frame::Data {
            offset: 5,
            payload: got,
        }) => {
            assert_eq!(got, payload);
            assert!(src.is_empty(), "the header is consumed");
            assert_eq!(&chunk[..], b"\x02", "what follows the payload stays");
        }
        other => panic!("expected the DATA frame, got {other:?}"),
    }
    // Too short a chunk: nothing is taken.
    let mut short = payload.slice(..999);
    let mut src = header.clone();
    assert_eq!(
        FrameCodec.decode_data_from(&mut src, &mut short).unwrap(),
        None
    );
    assert_eq!((src.len(), short.len()), (header.len(), 999));
    // More than a header in the buffer (a partial payload): not this path.
    let mut src = header.clone();
    src.put_u8(7);
    let mut more = payload.clone();
    assert_eq!(
        FrameCodec.decode_data_from(&mut src, &mut more).unwrap(),
        None
    );
    assert_eq!(more.len(), payload.len());
    // A header that could never be valid (type DATA, 16 MiB) is an error here too.
    let mut bad = BytesMut::from(&[0x01, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0][..]);
    let mut more = payload.clone();
    assert!(FrameCodec.decode_data_from(&mut bad, &mut more).is_err());
}

/// Decodes `wire` as the session's reader does, arriving in pieces that end
/// at `cuts`: whole frames from the buffer, then a payload from the next
/// piece when the buffer holds just its header, the rest appended.
fn decode_arriving_in_pieces(wire: &[u8], cuts: &[usize]) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut buf = BytesMut::new();
    let mut from = 0;
    for &to in cuts.iter().chain([&wire.len()]) {
        while let Some(f) = FrameCodec.decode(&mut buf).expect("decode") {
            frames.push(f);
        }
        let mut piece = bytes::Bytes::copy_from_slice(&wire[from..to]);
        from = to;
        if let Some(f) = FrameCodec
            .decode_data_from(&mut buf, &mut piece)
            .expect("decode")
        {
            frames.push(f);
        }
        buf.extend_from_slice(&piece);
    }
    while let Some(f) = FrameCodec.decode(&mut buf).expect("decode") {
        frames.push(f);
    }
    assert!(buf.is_empty(), "nothing is left over");
    frames
}

#[test]
fn frames_decode_the_same_however_the_bytes_are_cut() {
    let frames = vec![
        Frame::Ack { consumed: 3 },
        Frame::Data {
            offset: 0,
            payload: vec![1u8; 300].into(),
        },
        Frame::Data {
            offset: 300,
            payload: vec![2u8; 5].into(),
        },
        Frame::Fin { offset: 305 },
        Frame::Close { code: 0 },
    ];
    let mut wire = BytesMut::new();
    let mut ends = Vec::new();
    for f in &frames {
        FrameCodec.encode(f.clone(), &mut wire).expect("encode");
        ends.push(wire.len());
    }
    // Cut once anywhere, and twice at every pair of frame boundaries and
    // header ends (where the uncopied path applies).
    for cut in 0..=wire.len() {
        assert_eq!(
            decode_arriving_in_pieces(&wire, &[cut]),
            frames,
            "cut at {cut}"
        );
    }
    let data_header_ends = [ends[0] + 12, ends[1] + 12];
    let mut marks: Vec<usize> = ends.iter().copied().chain(data_header_ends).collect();
    marks.sort_unstable();
    for (i, &a) in marks.iter().enumerate() {
        for &b in &marks[i..] {
            assert_eq!(
                decode_arriving_in_pieces(&wire, &[a, b]),
                frames,
                "cuts at {a}, {b}"
            );
        }
    }
}

#[test]
fn malformed_frames_are_errors_that_say_what_is_wrong() {
    let cases: [(&[u8], &str); 7] = [
        (&[0x07, 0, 0, 0], "unknown type 0x07"),
        (
            &[0x02, 0, 0, 4, 0, 0, 0, 0],
            "ACK frame: length 4, expected 8",
        ),
        (&[0x03, 0, 0, 9], "FIN frame: length 9, expected 8"),
        (&[0x04, 0, 0, 8], "CLOSE frame: length 8, expected 4"),
        (&[0x01, 0, 0, 8], "0 payload bytes, expected 1 to 65536"),
        (&[0x01, 0x01, 0, 9], "65537 payload bytes"),
        (
            &[
                0x01, 0, 0, 10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2,
            ],
            "overflows",
        ),
    ];
    for (bytes, want) in cases {
        let err = FrameCodec
            .decode(&mut BytesMut::from(bytes))
            .expect_err("malformed");
        assert!(err.to_string().contains(want), "{bytes:?}: {err}");
    }
    // The header is judged before its payload arrives.
    assert!(matches!(
        FrameCodec.decode(&mut BytesMut::from(&[0x01, 0xff, 0xff, 0xff][..])),
        Err(FrameError::DataSize(_))
    ));
}

#[test]
fn random_garbage_never_panics_or_buffers_past_one_frame() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut errors = 0;
    for _ in 0..20_000 {
        let mut buf = BytesMut::new();
        let len = rng.random_range(0..64);
        buf.extend((0..len).map(|_| rng.random::<u8>()));
        match FrameCodec.decode(&mut buf) {
            Err(_) => errors += 1,
            Ok(_) => assert!(buf.capacity() <= frame::MAX_FRAME + 64, "bounded buffering"),
        }
    }
    assert!(errors > 15_000, "almost all garbage is refused: {errors}");
}

#[test]
fn replay_buffer_bounds_tiny_writes_by_their_overhead() {
    let mut replay = replay::Replay::new(64 * 1024);
    let mut taken = 0;
    // Each byte sent at once becomes its own chunk.
    loop {
        let n = replay.push(b"x");
        if n == 0 {
            break;
        }
        let _ = replay.read_at(taken, 1);
        taken += 1;
    }
    assert!(replay.charge() <= 64 * 1024);
    assert!(
        (taken as usize) < 64 * 1024 / replay::CHUNK_OVERHEAD,
        "overhead counted: {taken}"
    );
    replay.ack(taken);
    assert_eq!(replay.charge(), 0, "acknowledged chunks are freed");
    assert_eq!(replay.base(), taken);
}

#[test]
fn resume_headers_round_trip_and_proofs_bind_their_fields() {
    let key = ResumeKey::random();
    let id = SessionId::random();
    let request = ResumeRequest::new(&key, id, 3, 12345);
    let mut headers = http::HeaderMap::new();
    request.to_headers(&mut headers);
    let parsed = ResumeRequest::from_headers(&headers)
        .expect("parses")
        .expect("present");
    assert_eq!(parsed, request);
    assert!(parsed.verify(&key));
    assert!(
        !ResumeRequest {
            received: 12346,
            ..parsed.clone()
        }
        .verify(&key),
        "offset bound"
    );
    assert!(
        !ResumeRequest {
            generation: 4,
            ..parsed.clone()
        }
        .verify(&key),
        "generation bound"
    );
    assert!(!parsed.verify(&ResumeKey::random()), "key bound");

    let response = ResumeResponse::new(&key, &id, 4, 99);
    let mut headers = http::HeaderMap::new();
    response.to_headers(&mut headers);
    let parsed = ResumeResponse::from_headers(&headers).expect("parses");
    assert!(parsed.verify(&key, &id, 4));
    assert!(
        !parsed.verify(&key, &id, 3),
        "a request's proof is not a response's"
    );

    assert_eq!(
        ResumeRequest::from_headers(&http::HeaderMap::new()),
        Ok(None)
    );
    headers.insert(handshake::RESUME, "!!".parse().expect("value"));
    let err = ResumeRequest::from_headers(&headers).expect_err("malformed");
    assert!(err.starts_with("postern-resume:"), "{err}");
    let key_text = key.to_header();
    let back = ResumeKey::from_header(key_text.to_str().expect("ascii")).expect("parses");
    assert!(ResumeRequest::new(&back, id, 1, 0).verify(&key));
}
