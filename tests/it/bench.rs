//! `postern bench` end to end: the real binary starts its own server and
//! client processes; the JSON must carry positive figures for both Postern
//! and the raw TCP baseline, and Postern's CPU above the plain relays' (no
//! timing thresholds: the machine is shared).

use std::process::Command;

#[test]
fn bench_bulk_writes_positive_figures() {
    let dir = std::env::temp_dir().join(format!("postern-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["bench", "--quick", "--scenario", "bulk", "--bulk-mib", "64"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("upload 64 MiB"), "table: {stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let throughput: Vec<_> = rows.iter().filter(|r| r["unit"] == "MB/s").collect();
    assert_eq!(throughput.len(), 2, "upload and download rows: {rows:?}");
    for row in throughput {
        let postern = row["postern"].as_f64().unwrap();
        let baseline = row["baseline"].as_f64().unwrap();
        assert!(postern > 0.0 && baseline > 0.0, "{row}");
    }
    let cpu: Vec<_> = rows.iter().filter(|r| r["unit"] == "s/GB").collect();
    assert_eq!(cpu.len(), 2, "CPU rows: {rows:?}");
    for row in cpu {
        // Beside Postern's CPU, the two plain relays' as the floor under it:
        // 64 MiB through two TLS layers takes Postern many clock ticks, the
        // relays' plain copies fewer (perhaps none).
        let postern = row["postern"].as_f64().unwrap();
        let floor = row["baseline"].as_f64().unwrap();
        assert!(postern > 0.0, "{row}");
        assert!((0.0..=postern).contains(&floor), "{row}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The WebSocket scenario: every row has a positive figure for the
/// WebSocket and for HTTP/2 beside it, bulk, CPU, round trips, first byte
/// and tunnel rate alike.
#[test]
fn bench_websocket_writes_positive_figures_beside_http2() {
    let dir = std::env::temp_dir().join(format!("postern-bench-ws-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args([
            "bench",
            "--quick",
            "--scenario",
            "websocket",
            "--bulk-mib",
            "16",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let count = |unit: &str| rows.iter().filter(|r| r["unit"] == unit).count();
    // Upload and download; their CPU; p50 and p99; first byte against an
    // open and a cold HTTP/2 connection at p50 and p99; the tunnel rate.
    assert_eq!(
        [
            count("MB/s"),
            count("s/GB"),
            count("µs"),
            count("ms"),
            count("1/s")
        ],
        [2, 2, 2, 4, 1],
        "{rows:?}"
    );
    for row in rows {
        assert_eq!(row["scenario"], "websocket", "{row}");
        let ws = row["postern"].as_f64().unwrap();
        let h2 = row["baseline"].as_f64().unwrap();
        assert!(ws > 0.0 && h2 > 0.0, "{row}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
