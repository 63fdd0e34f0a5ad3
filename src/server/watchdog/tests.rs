//! The timeout logic under a paused clock: the sleeps below cost no real
//! time, and the instants they reach are exact.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};

use super::*;

const S: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn idle_timeout_fires_after_silence() {
    let started = Instant::now();
    let activity = Activity::new();
    let expired = expiry(&activity, Some(10 * S), None).await;
    assert_eq!(expired, Expired::Idle(10 * S));
    assert_eq!(started.elapsed(), 10 * S);
}

#[tokio::test(start_paused = true)]
async fn activity_defers_the_idle_timeout() {
    let started = Instant::now();
    let activity = Activity::new();
    let fut = expiry(&activity, Some(10 * S), None);
    tokio::pin!(fut);
    assert!(timeout(6 * S, &mut fut).await.is_err(), "fired before 10 s");
    activity.touch();
    // 12 s since the start, 6 s since the byte: not idle yet.
    assert!(
        timeout(6 * S, &mut fut).await.is_err(),
        "traffic did not defer it"
    );
    assert_eq!(fut.await, Expired::Idle(10 * S));
    assert_eq!(started.elapsed(), 16 * S, "10 s after the last byte");
}

#[tokio::test(start_paused = true)]
async fn max_lifetime_ends_a_busy_tunnel() {
    let started = Instant::now();
    let activity = Activity::new();
    let fut = expiry(&activity, Some(10 * S), Some(30 * S));
    tokio::pin!(fut);
    // A byte every 5 s keeps the idle timeout away; the lifetime still ends it.
    for _ in 0..5 {
        assert!(timeout(5 * S, &mut fut).await.is_err());
        activity.touch();
    }
    assert_eq!(fut.await, Expired::Lifetime(30 * S));
    assert_eq!(started.elapsed(), 30 * S);
}

#[tokio::test(start_paused = true)]
async fn lifetime_alone_ignores_silence() {
    let activity = Activity::new();
    let started = Instant::now();
    assert_eq!(
        expiry(&activity, None, Some(30 * S)).await,
        Expired::Lifetime(30 * S)
    );
    assert_eq!(started.elapsed(), 30 * S);
}

#[tokio::test(start_paused = true)]
async fn no_limits_never_expire() {
    let activity = Activity::new();
    let never = timeout(24 * 3600 * S, expiry(&activity, None, None)).await;
    assert!(never.is_err(), "expired with no limit set: {never:?}");
}

#[tokio::test(start_paused = true)]
async fn metered_socket_stamps_activity_both_ways() {
    let (a, mut b) = tokio::io::duplex(64);
    let activity = Activity::new();
    let mut metered = Metered::new(a, activity.clone(), Arc::new(Metrics::new()));
    let before = activity.last();
    tokio::time::advance(3 * S).await;
    metered.write_all(b"ping").await.unwrap();
    assert_eq!(activity.last(), before + 3 * S, "a write is activity");
    tokio::time::advance(2 * S).await;
    b.write_all(b"pong").await.unwrap();
    let mut buf = [0; 4];
    metered.read_exact(&mut buf).await.unwrap();
    assert_eq!(activity.last(), before + 5 * S, "a read is activity");
}
