//! A session's payloads pass the HTTP/2 stream uncopied. Sending: staged
//! DATA payloads reach h2 as the session's own buffers, observed on the wire
//! (the logged socket of `scheduling`): each payload is a DATA frame of its
//! own, exactly its length, where a copying write puts the frame header and
//! the payload into one frame. Receiving: a payload that arrives as a chunk
//! of its own is taken as it is, counted in the session's stats.

use std::future::poll_fn;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::scheduling::{frames, pair, settle, DATA};

/// DATA frame lengths the bulk stream wrote after log offset `from`.
fn data_lens(p: &crate::scheduling::Pair, from: usize) -> Vec<usize> {
    let log = p.wire.log.lock().unwrap();
    frames(&log)
        .iter()
        .filter(|f| f.kind == DATA && f.stream == p.bulk_id && f.at >= from && f.len > 0)
        .map(|f| f.len)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_owned_payload_is_handed_to_h2_without_a_copy() {
    let mut p = pair(false).await;
    settle().await;
    let from = p.wire.logged();
    let mut stream = p.bulk.take().unwrap();
    let pieces = [
        Bytes::from_static(b"seventeen bytes.."),
        Bytes::from(vec![0x5a; 40 * 1024]),
    ];
    let n = poll_fn(|cx| stream.poll_write_owned(cx, pieces.iter()))
        .await
        .unwrap();
    assert_eq!(n, 17 + 40 * 1024, "both pieces are taken");
    assert!(
        !pieces[1].is_unique(),
        "h2 must hold the payload itself until it is written, not a copy"
    );
    settle().await;
    assert_eq!(
        data_lens(&p, from),
        vec![17, 40 * 1024],
        "the short piece is copied into a frame of its own, the payload goes as it is"
    );
    assert!(pieces[1].is_unique(), "written, h2 lets go of the payload");
}

#[tokio::test(start_paused = true)]
async fn a_session_over_an_http2_stream_writes_its_payloads_as_they_are() {
    let mut p = pair(false).await;
    settle().await;
    let stream = p.bulk.take().unwrap();
    let mut session = postern::testing::session::Session::new(Default::default(), stream, None);
    settle().await;
    let from = p.wire.logged();
    session.write_all(&[0xa7; 40 * 1024]).await.unwrap();
    session.flush().await.unwrap();
    settle().await;
    let lens = data_lens(&p, from);
    assert!(
        lens.contains(&(40 * 1024)),
        "the 40 KiB payload must be a DATA frame of its own (frames: {lens:?})"
    );
}

#[tokio::test(start_paused = true)]
async fn a_session_reading_an_http2_stream_takes_whole_payloads_without_a_copy() {
    let mut p = pair(false).await;
    settle().await;
    let sender = p.bulk.take().unwrap();
    let receiver = p.receivers.remove(0);
    let mut tx = postern::testing::session::Session::new(Default::default(), sender, None);
    let mut rx = postern::testing::session::Session::new(Default::default(), receiver, None);
    let sent: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    let writer = tokio::spawn(async move {
        tx.write_all(&sent).await.unwrap();
        tx.shutdown().await.unwrap();
        (tx, sent)
    });
    let mut got = Vec::new();
    rx.read_to_end(&mut got).await.unwrap();
    let (_tx, sent) = writer.await.unwrap();
    assert!(got == sent, "the bytes arrive intact and in order");
    let uncopied = rx.handle().stats().uncopied;
    assert!(
        uncopied >= 4,
        "300 KiB in frames of under 64 KiB: at least 4 payloads taken as they came, got {uncopied}"
    );
}
