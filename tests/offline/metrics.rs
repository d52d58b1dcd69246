//! The daemon's metrics registry and server, fed what the daemon reports
//! for the spec's Docker restart: its real wishes and the real plan from
//! the spec's dumps, scraped over loopback TCP and a Unix socket. The real
//! daemon's metrics are in `tests/kernel/metrics.rs`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pyfw::daemon::metrics::{CONTENT_TYPE, Listen, Metrics, ReconcileResult, serve};
use pyfw::plan::{Plan, plan};
use pyfw::state::{State, parse_ipset_save, parse_iptables_save};
use pyfw::wishes::{self, Wishes};

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/spec")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn spec() -> (Wishes, Plan) {
    let wishes = wishes::parse(&fixture("wishes.yaml"), Path::new("wishes.yaml")).unwrap();
    let state = State {
        v4: parse_iptables_save(&fixture("after-docker-restart.save")).unwrap(),
        ipsets: parse_ipset_save(&fixture("ipset.save")).unwrap(),
        ..State::default()
    };
    let planned = plan(&wishes, &state);
    assert_eq!(planned.commands.len(), 5, "the spec's five commands");
    (wishes, planned)
}

/// One HTTP exchange: the status line, the headers and the body.
fn exchange(mut conn: impl Read + Write, request: &str) -> (String, String, String) {
    conn.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a complete response");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

fn get_tcp(addr: &Listen, path: &str) -> (String, String, String) {
    let Listen::Tcp(addr) = addr else {
        panic!("not TCP: {addr:?}")
    };
    let conn = TcpStream::connect_timeout(addr, Duration::from_secs(5)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    exchange(
        conn,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {CONTENT_TYPE}\r\n\r\n"),
    )
}

/// The value of the sample `name{labels}` (labels as printed, sorted as
/// the encoder prints them), or of `name` without labels.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (s, v) = l.rsplit_once(' ')?;
        (s == series).then(|| v.parse().unwrap())
    })
}

#[test]
fn scrape_over_loopback_tcp() {
    let metrics = Arc::new(Metrics::new());
    let server = serve(
        &Listen::parse("127.0.0.1:0", false).unwrap(),
        metrics.clone(),
    )
    .unwrap();
    let addr = server.local_addr().clone();

    // Before anything happened.
    let (status, headers, body) = get_tcp(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains(CONTENT_TYPE), "{headers}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert_eq!(
        sample(&body, "pyfw_seconds_since_last_successful_reconcile"),
        Some(f64::INFINITY)
    );
    assert!(body.contains("pyfw_build_info{version=\""), "{body}");

    // The daemon's start-up reconcile after the spec's Docker restart: the
    // file loads, the plan finds drift in DOCKER and FORWARD, five
    // commands run, and the run ends repaired.
    let (wishes, plan) = spec();
    metrics.observe_wishes_load(true);
    metrics.observe_plan(&wishes, &plan);
    let (_, _, during) = get_tcp(&addr, "/metrics");
    for (chain, drift) in [("DOCKER", 1.0), ("FORWARD", 1.0), ("INPUT", 0.0)] {
        let series = format!("pyfw_drift{{family=\"ipv4\",table=\"filter\",chain=\"{chain}\"}}");
        assert_eq!(sample(&during, &series), Some(drift), "{series}\n{during}");
    }
    assert_eq!(
        sample(&during, "pyfw_ipset_drift{ipset=\"allowed_hosts\"}"),
        Some(0.0)
    );
    for c in &plan.commands {
        metrics.observe_correction(c);
    }
    metrics.observe_apply(Duration::from_millis(30));
    metrics.observe_reconcile("startup", ReconcileResult::Repaired);

    let (_, _, after) = get_tcp(&addr, "/metrics");
    assert_eq!(
        sample(
            &after,
            "pyfw_reconciles_total{trigger=\"startup\",result=\"repaired\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "pyfw_corrections_total{family=\"ipv4\",table=\"filter\",chain=\"FORWARD\",wish=\"allow_established\"}"
        ),
        Some(4.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "pyfw_corrections_total{family=\"ipv4\",table=\"filter\",chain=\"DOCKER\",wish=\"allowed_hosts_only\"}"
        ),
        Some(1.0)
    );
    for chain in ["DOCKER", "FORWARD", "INPUT"] {
        let series = format!("pyfw_drift{{family=\"ipv4\",table=\"filter\",chain=\"{chain}\"}}");
        assert_eq!(
            sample(&after, &series),
            Some(0.0),
            "repaired: {series}\n{after}"
        );
    }
    let since = sample(&after, "pyfw_seconds_since_last_successful_reconcile").unwrap();
    assert!((0.0..10.0).contains(&since), "{since}");
    let at = sample(&after, "pyfw_last_successful_reconcile_timestamp_seconds").unwrap();
    assert!(at > 1.7e9, "{at}");
    assert_eq!(
        sample(&after, "pyfw_apply_duration_seconds_count"),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, "pyfw_apply_duration_seconds_bucket{le=\"0.032\"}"),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, "pyfw_apply_duration_seconds_bucket{le=\"0.016\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&after, "pyfw_wishes_loaded"), Some(1.0));

    // A bad edit: the file fails to load, the last good wishes stay, and a
    // poll finds nothing to do.
    metrics.observe_wishes_load(false);
    metrics.observe_reconcile("timer", ReconcileResult::InSync);
    let (_, _, later) = get_tcp(&addr, "/metrics");
    assert_eq!(sample(&later, "pyfw_wishes_loaded"), Some(0.0));
    assert_eq!(sample(&later, "pyfw_wishes_load_failures_total"), Some(1.0));
    assert_eq!(
        sample(
            &later,
            "pyfw_reconciles_total{trigger=\"timer\",result=\"in-sync\"}"
        ),
        Some(1.0)
    );

    // Every metric the issue asks for has its TYPE line.
    for (name, kind) in [
        ("pyfw_reconciles", "counter"),
        ("pyfw_corrections", "counter"),
        ("pyfw_seconds_since_last_successful_reconcile", "gauge"),
        ("pyfw_apply_duration_seconds", "histogram"),
        ("pyfw_drift", "gauge"),
        ("pyfw_wishes_loaded", "gauge"),
    ] {
        assert!(
            later.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind}\n{later}"
        );
    }

    // Only /metrics, only GET and HEAD.
    assert!(get_tcp(&addr, "/").0.starts_with("HTTP/1.1 404"));
    let Listen::Tcp(a) = &addr else {
        unreachable!()
    };
    let (status, _, _) = exchange(
        TcpStream::connect(a).unwrap(),
        "POST /metrics HTTP/1.1\r\n\r\n",
    );
    assert!(status.starts_with("HTTP/1.1 405"), "{status}");

    // Dropping the server stops it and frees the port.
    drop(server);
    // Binding it again proves the port is free (a connect could, rarely,
    // connect to itself on a free loopback port).
    std::net::TcpListener::bind(a).expect("the port is free once the server is dropped");
}

#[test]
fn scrape_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.sock");
    let listen = Listen::parse(&format!("unix:{}", path.display()), false).unwrap();
    let metrics = Arc::new(Metrics::new());
    metrics.observe_reconcile("sighup", ReconcileResult::Failed);
    let server = serve(&listen, metrics.clone()).unwrap();
    assert_eq!(server.local_addr(), &listen);

    let (status, headers, body) = exchange(
        UnixStream::connect(&path).unwrap(),
        "GET /metrics HTTP/1.0\r\n\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains(CONTENT_TYPE));
    assert_eq!(
        sample(
            &body,
            "pyfw_reconciles_total{trigger=\"sighup\",result=\"failed\"}"
        ),
        Some(1.0)
    );
    // A failed run is no success.
    assert_eq!(
        sample(&body, "pyfw_seconds_since_last_successful_reconcile"),
        Some(f64::INFINITY)
    );

    // A second server on a live socket is refused; the first keeps serving.
    let e = serve(&listen, metrics.clone()).err().expect("refused");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    assert!(UnixStream::connect(&path).is_ok());

    // Stopping removes the socket; a stale socket file is replaced.
    drop(server);
    assert!(!path.exists());
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a stale socket is left behind");
    let again = serve(&listen, metrics).unwrap();
    assert!(UnixStream::connect(&path).is_ok());
    drop(again);

    // A file that is not a socket is never removed.
    std::fs::write(&path, "not a socket").unwrap();
    assert!(serve(&listen, Arc::new(Metrics::new())).is_err());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a socket");
}

#[test]
fn only_loopback_unless_allowed() {
    for addr in ["0.0.0.0:9983", "[::]:9983", "192.0.2.1:9983"] {
        let e = Listen::parse(addr, false).unwrap_err();
        assert!(e.contains("not a loopback address"), "{addr}: {e}");
    }
    // Allowed on purpose: binds all interfaces (port 0: any free port).
    let server = serve(
        &Listen::parse("0.0.0.0:0", true).unwrap(),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let Listen::Tcp(bound) = server.local_addr().clone() else {
        unreachable!()
    };
    let local = Listen::Tcp(format!("127.0.0.1:{}", bound.port()).parse().unwrap());
    assert_eq!(get_tcp(&local, "/metrics").0, "HTTP/1.1 200 OK");
}
