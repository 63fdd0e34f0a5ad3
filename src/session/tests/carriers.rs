//! One session over carriers that are cut, replaced, reset or ended, with
//! the inner TLS on top.

use super::*;
use crate::session::registry::Usage;

#[tokio::test]
async fn a_large_transfer_both_ways_survives_many_cuts() {
    let window = 1024 * 1024;
    let (registry, mut server, mut client) = pair(window, 700_000);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let resumes = resumer(registry.clone(), client.handle(), move || {
        rng.random_range(50_000..3_000_000)
    });
    let len = 48 * 1024 * 1024;
    tokio::time::timeout(LIMIT, async {
        exchange(&mut server, &mut client, len).await;
        tokio::join!(server.finish(), client.finish());
    })
    .await
    .expect("transfer finished");
    let stats = client.handle().stats();
    assert!(
        stats.resumes >= 20,
        "cut often enough to mean something: {stats:?}"
    );
    assert!(
        stats.resent > 0,
        "cuts lost bytes in flight that were resent: {stats:?}"
    );
    assert_eq!(server.handle().phase(), Phase::Ended);
    assert_eq!(resumes.await.expect("resumer"), stats.resumes);
    drop(server);
    assert_eq!(
        registry.usage(),
        Usage {
            sessions: 0,
            detached: 0,
            detached_bytes: 0
        }
    );
}

#[tokio::test]
async fn moving_to_a_new_carrier_before_the_old_one_is_cut_loses_nothing() {
    let (registry, mut server, mut client) = pair(WINDOW, usize::MAX);
    let handle = client.handle();
    let mover = tokio::spawn(async move {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let Some(request) = handle.resume_request() else {
                return;
            };
            let (c, s) = relay(usize::MAX);
            let Ok((response, replaced)) = registry.resume(&request, s) else {
                return;
            };
            assert!(replaced, "the server replaced a live carrier");
            let replaced = handle
                .complete_resume(c, &request, &response)
                .expect("response verifies");
            assert!(replaced, "the client replaced a live carrier");
        }
    });
    tokio::time::timeout(LIMIT, exchange(&mut server, &mut client, 16 * 1024 * 1024))
        .await
        .expect("transfer finished");
    mover.await.expect("mover");
    // Moved ten times, never cut: each side ended its old carriers in turn.
    assert_eq!(client.handle().stats().cuts, 0, "client");
    assert_eq!(server.handle().stats().cuts, 0, "server");
}

#[tokio::test]
async fn what_the_client_sends_on_the_old_carrier_during_a_move_still_counts() {
    let (registry, mut server, mut client) = pair(WINDOW, usize::MAX);
    let ch = client.handle();
    let request = ch.resume_request().expect("request");
    let (c2, s2) = relay(usize::MAX);
    let (response, replaced) = registry.resume(&request, s2).expect("accepted");
    assert!(replaced);
    // The server has moved; the client has not heard yet, and writes on the
    // old carrier: the server reads it from there, without waiting for the
    // client to attach the new one and resend.
    write_now(&mut client, b"late").await;
    let got = read_n(&mut server, 4, "read from the retired carrier").await;
    assert_eq!(got, b"late");
    assert!(ch
        .complete_resume(c2, &request, &response)
        .expect("verified"));
    // The client resends "late" on the new carrier: a duplicate, dropped.
    write_now(&mut server, b"back").await;
    let got = read_n(&mut client, 4, "read over the new carrier").await;
    assert_eq!(got, b"back");
    tokio::time::timeout(LIMIT, exchange(&mut server, &mut client, 1 << 20))
        .await
        .expect("transfer finished");
    let both = async { tokio::join!(server.finish(), client.finish()) };
    tokio::time::timeout(LIMIT, both).await.expect("finished");
    assert_eq!(server.handle().phase(), Phase::Ended);
    assert_eq!((server.handle().stats().cuts, ch.stats().cuts), (0, 0));
}

#[tokio::test]
async fn a_session_that_finishes_on_the_old_carrier_during_a_move_ends_done_not_cut() {
    let (registry, mut server, mut client, gate) = gated_pair(WINDOW, usize::MAX);
    let (sh, ch) = (server.handle(), client.handle());
    // Both FINs cross on the first carrier, which then holds back whatever
    // the client sends until the server has moved.
    client.shutdown().await.expect("fin");
    let mut rest = Vec::new();
    server
        .read_to_end(&mut rest)
        .await
        .expect("server reads the FIN");
    server.shutdown().await.expect("fin");
    client
        .read_to_end(&mut rest)
        .await
        .expect("client reads the FIN");
    let request = ch.resume_request().expect("request");
    gate.hold();
    let finished = tokio::spawn(async move {
        client.finish().await;
        client
    });
    let client = tokio::time::timeout(LIMIT, finished)
        .await
        .expect("the client finished (its CLOSE is held)")
        .expect("task");
    assert_eq!(ch.phase(), Phase::Ended);
    // The move reaches the server only now: its new carrier is dropped at
    // once (the client's session is over), and the client's CLOSE arrives
    // on the old one after that.
    let (c2, s2) = relay(usize::MAX);
    let (response, replaced) = registry.resume(&request, s2).expect("accepted");
    assert!(replaced);
    assert!(ch.complete_resume(c2, &request, &response).is_err());
    gate.release();
    tokio::time::timeout(LIMIT, server.finish())
        .await
        .expect("server finished");
    assert_eq!(sh.phase(), Phase::Ended);
    assert_eq!(sh.stats().cuts, 0, "the server's session never detached");
    drop(client);
}

#[tokio::test]
async fn a_half_close_crosses_a_cut_exactly_once() {
    // The first carrier carries the client's DATA frame and half of its FIN.
    let (registry, mut server, mut client) = pair(WINDOW, 12 + 5 + 6);
    let resumes = resumer(registry, client.handle(), || usize::MAX);
    tokio::time::timeout(LIMIT, async {
        client.write_all(b"hello").await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        server
            .read_to_end(&mut got)
            .await
            .expect("server reads to EOF");
        assert_eq!(got, b"hello");
        assert_eq!(server.read(&mut [0u8; 8]).await.expect("EOF again"), 0);
        // The other direction still works, and ends on its own.
        server.write_all(b"bye").await.expect("write back");
        server.shutdown().await.expect("server shutdown");
        let mut back = Vec::new();
        client
            .read_to_end(&mut back)
            .await
            .expect("client reads to EOF");
        assert_eq!(back, b"bye");
        assert!(
            client.write_all(b"more").await.is_err(),
            "no writes after shutdown"
        );
        tokio::join!(server.finish(), client.finish());
    })
    .await
    .expect("finished");
    assert!(client.handle().stats().resumes >= 1, "the cut happened");
    assert_eq!(
        resumes.await.expect("resumer"),
        client.handle().stats().resumes
    );
}

#[tokio::test]
async fn garbage_on_the_carrier_ends_the_session_with_a_reason() {
    let (carrier, mut peer) = tokio::io::duplex(1024);
    let mut session = Session::new(config(WINDOW), carrier, None);
    peer.write_all(b"SSH-2.0-OpenSSH_9.6\r\n")
        .await
        .expect("peer writes");
    let err = session
        .read(&mut [0u8; 16])
        .await
        .expect_err("garbage refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("unknown type 0x53"), "{err}");
}

#[tokio::test]
async fn a_dropped_session_tells_its_peer_at_once() {
    let (_registry, mut server, client) = pair(WINDOW, usize::MAX);
    drop(client);
    let err = tokio::time::timeout(LIMIT, server.read(&mut [0u8; 1]))
        .await
        .expect("the peer heard of it before any grace period")
        .expect_err("abandoned");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(err.to_string().contains("code 3"), "{err}");
}

#[tokio::test]
async fn a_reset_reaches_the_peer_as_a_reset() {
    let (_registry, mut server, mut client) = pair(WINDOW, usize::MAX);
    client.write_all(b"x").await.expect("write");
    tokio::time::timeout(LIMIT, client.reset())
        .await
        .expect("reset sent");
    let err = tokio::time::timeout(LIMIT, async {
        loop {
            if let Err(e) = server.read(&mut [0u8; 4]).await {
                return e;
            }
        }
    })
    .await
    .expect("reset arrives");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[tokio::test]
async fn the_inner_tls_runs_over_a_session_and_keys_its_resume() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["inner.test".into()]).expect("cert");
    let der = cert.cert.der().clone();
    let key =
        rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
    let server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let client_config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let registry = Registry::new(config(WINDOW), Limits::default());
    let (c, s) = relay(usize::MAX);
    let server = registry.open(s);
    let id = server.handle().id().expect("id");
    let client = Session::new(config(WINDOW), c, Some(id));
    let (sh, ch) = (server.handle(), client.handle());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let name = rustls_pki_types::ServerName::try_from("inner.test").expect("name");
    let (server_tls, client_tls) = tokio::time::timeout(LIMIT, async {
        tokio::join!(acceptor.accept(server), connector.connect(name, client))
    })
    .await
    .expect("handshakes");
    let (mut server_tls, mut client_tls) = (
        server_tls.expect("server TLS"),
        client_tls.expect("client TLS"),
    );
    // The chicken and egg: the key exists only now, over the first carrier.
    sh.set_key(ResumeKey::exported(server_tls.get_ref().1, &id).expect("export"));
    ch.set_key(ResumeKey::exported(client_tls.get_ref().1, &id).expect("export"));

    // A resume keyed this way is accepted (the two exports agree) and the
    // TLS session carries on over the new carrier without a new handshake.
    let request = ch.resume_request().expect("request");
    let (c2, s2) = relay(usize::MAX);
    let (response, _) = registry.resume(&request, s2).expect("accepted");
    ch.complete_resume(c2, &request, &response)
        .expect("verified");
    tokio::time::timeout(LIMIT, async {
        client_tls
            .write_all(b"over the new carrier")
            .await
            .expect("write");
        client_tls.flush().await.expect("flush");
        let mut got = [0u8; 20];
        server_tls.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"over the new carrier");
    })
    .await
    .expect("data flows");
    assert_eq!(sh.stats().resumes, 1);
}

#[tokio::test]
async fn finishing_without_reading_the_fin_still_ends_both_sides() {
    // A TLS layer above stops reading at its close_notify, before the
    // session's FIN: finishing must acknowledge that FIN by itself.
    let (_registry, mut server, mut client) = pair(WINDOW, usize::MAX);
    client.write_all(b"abc").await.expect("write");
    client.shutdown().await.expect("fin");
    let mut got = [0u8; 3];
    server.read_exact(&mut got).await.expect("read");
    server.write_all(b"xyz").await.expect("write");
    server.shutdown().await.expect("fin");
    client.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"xyz");
    let both = async { tokio::join!(server.finish(), client.finish()) };
    tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("both ends finished without reading the FIN");
    assert_eq!(server.handle().phase(), Phase::Ended);
    assert_eq!(client.handle().phase(), Phase::Ended);
}

#[tokio::test]
async fn the_id_a_client_learns_later_wakes_whoever_waits_for_it() {
    let (c, _s) = relay(usize::MAX);
    let client = Session::new(config(WINDOW), c, None);
    let handle = client.handle();
    let waiting = tokio::spawn({
        let handle = handle.clone();
        async move { handle.known_id().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "no id yet");
    let id = SessionId::random();
    handle.set_id(id);
    let got = tokio::time::timeout(LIMIT, waiting)
        .await
        .expect("woken")
        .expect("task");
    assert_eq!(got, id);
}

#[tokio::test]
async fn an_ack_on_the_old_carrier_past_the_resumed_offset_skips_what_it_covers() {
    let (registry, mut server, mut client, gate) = gated_pair(WINDOW, usize::MAX);
    let ch = client.handle();
    // The client asks to move having received nothing, then reads 1 MiB on
    // the old carrier; its ACKs for it are held back until the server has
    // moved and begun resending from 0 on the new one.
    let request = ch.resume_request().expect("request");
    gate.hold();
    let sent = tokio::spawn(async move {
        write_now(&mut server, &vec![7u8; 1 << 20]).await;
        server
    });
    let got = read_n(&mut client, 1 << 20, "read on the old carrier").await;
    assert!(got.iter().all(|&b| b == 7));
    let mut server = sent.await.expect("writer");
    let (c2, s2) = relay(usize::MAX);
    let (response, replaced) = registry.resume(&request, s2).expect("accepted");
    assert!(replaced);
    // Now the ACK of the whole MiB reaches the server on the old carrier:
    // its replay buffer lets go of bytes the new carrier had not resent.
    gate.release();
    assert!(ch
        .complete_resume(c2, &request, &response)
        .expect("verified"));
    write_now(&mut server, b"after").await;
    let next = read_n(&mut client, 5, "read over the new carrier").await;
    assert_eq!(next, b"after", "the bytes after the MiB, none resent twice");
    tokio::time::timeout(LIMIT, exchange(&mut server, &mut client, 1 << 20))
        .await
        .expect("transfer finished");
}
