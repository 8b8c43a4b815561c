//! Instructions per call of the read path, reproducible: `cargo bench
//! --bench readcost` (needs valgrind).
//!
//! Runs the bare tonic echo server (`support/echo.rs`) and the release
//! consentd (and other builds: `READCOST_COMPARE=label@/path/to/consentd`)
//! under `valgrind --tool=callgrind --instr-atstart=no`, each on the store
//! and with the request mixes of the `load` bench (`support/reads.rs`).
//! For each server and scenario (Authorize, CheckApi): a warm-up, then
//! `callgrind_control --instr=on` and `--zero`, exactly `READCOST_CALLS`
//! calls (default 5,000) from 64 concurrent callers over 4 connections,
//! then `callgrind_control --dump`. Everything the process executed in that
//! window (every thread: the connection tasks, the handlers, the writer
//! thread's prompt audit batches) is divided by the number of calls.
//! `callgrind_annotate --inclusive=yes` then gives each function's
//! inclusive cost, summed into the groups of [`GROUPS`].
//!
//! Output: a table on stdout (instructions per call, per group) and the
//! callgrind files under `target/readcost/` for `callgrind_annotate`.

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use consentd::pb::authorization_client::AuthorizationClient;
use tonic::transport::Channel;

#[path = "support/process.rs"]
#[allow(dead_code)] // shared with the load bench, which uses all of it
mod process;

#[path = "support/echo.rs"]
mod echo;

#[path = "support/reads.rs"]
#[allow(dead_code)] // shared with the load bench
mod reads;

use process::Proc;
use reads::{authorize_call, channels, check_api_call, preload};

/// Rows of the table: a label, the functions (substrings of the demangled
/// names `callgrind_annotate` prints) whose inclusive costs it sums, and
/// the functions whose inclusive costs it then subtracts (a layer's own
/// cost is its call and future less the inner service's): the first of
/// these lists that matches anything (builds before the access layer have
/// the router right inside the metrics layer). The functions of one list
/// do not call each other, so nothing is counted twice.
type Group = (
    &'static str,
    &'static [&'static str],
    &'static [&'static [&'static str]],
);

/// The router under the layers: the sync call and the response future.
const ROUTER: &[&str] = &[
    "axum::routing::Router<S>::call_with_state",
    "<tonic::service::router::RoutesFuture as core::future::future::Future>::poll",
];

const GROUPS: &[Group] = &[
    (
        "per request: hyper's H2Stream::poll (decode, layers, handler, encode)",
        &["<hyper::proto::h2::server::H2Stream<F,B,Ex> as core::future::future::Future>::poll"],
        &[],
    ),
    (
        "connection: h2 framing, hpack, socket I/O (Connection::poll)",
        &["<hyper::proto::h2::server::Server<T,S,B,E> as core::future::future::Future>::poll"],
        &[],
    ),
    (
        "request decode (tonic Streaming + prost, request body layers)",
        &["<tonic::codec::decode::Streaming<T> as futures_core::stream::Stream>::poll_next"],
        &[],
    ),
    (
        "response encode (tonic EncodeBody + prost)",
        &["<tonic::codec::encode::EncodeBody<T,U> as http_body::Body>::poll_frame"],
        &[],
    ),
    (
        "metrics layer, own (RpcService call + future)",
        &[
            "<consentd::metrics::RpcService<S> as tower_service::Service<http::request::Request<B>>>::call",
            "<consentd::metrics::RpcFuture<F> as core::future::future::Future>::poll",
        ],
        &[
            &["<consentd::grpc::access::AccessService<S> as tower_service::Service<http::request::Request<tonic::body::Body>>>::call"],
            ROUTER,
        ],
    ),
    (
        "access layer, own (AccessService call + future)",
        &["<consentd::grpc::access::AccessService<S> as tower_service::Service<http::request::Request<tonic::body::Body>>>::call"],
        &[ROUTER],
    ),
    (
        "handler (AuthorizationService::authorize / check_api)",
        &[
            "AuthorizationService as consentd::pb::authorization_server::Authorization>::authorize::{{closure}}",
            "AuthorizationService as consentd::pb::authorization_server::Authorization>::check_api::{{closure}}",
        ],
        &[],
    ),
    (
        "- convert: request (AuthorizeCall / CheckApiCall)",
        &[
            "<consentd::grpc::convert::requests::AuthorizeCall as core::convert::TryFrom",
            "<consentd::grpc::convert::requests::CheckApiCall as core::convert::TryFrom",
        ],
        &[],
    ),
    (
        "- convert: verdicts to pb::Decision",
        &["consentd::grpc::convert::decision"],
        &[],
    ),
    (
        "- broker: Broker::authorize / check_api",
        &[
            "consentd::broker::reads::<impl consentd::broker::Broker>::authorize",
            "consentd::broker::reads::<impl consentd::broker::Broker>::check_api",
        ],
        &[],
    ),
    (
        "-- store: subject read (SledStore::subject)",
        &["<consentd::store::sled_store::SledStore as consentd::store::Store>::subject"],
        &[],
    ),
    (
        "-- store: app index (SledStore::app)",
        &["<consentd::store::sled_store::SledStore as consentd::store::Store>::app"],
        &[],
    ),
    (
        "-- domain: verdicts (authorize::decide)",
        &["consentd::domain::authorize::decide"],
        &[],
    ),
    (
        "-- prompt audit and renewals (Broker::after_read)",
        &["consentd::broker::reads::<impl consentd::broker::Broker>::after_read"],
        &[],
    ),
    (
        "metrics: observe_verdict + observe_rpc",
        &[
            "consentd::metrics::Metrics::observe_verdict",
            "consentd::metrics::Metrics::observe_rpc",
        ],
        &[],
    ),
    (
        "writer thread (prompt audit batches)",
        &["consentd::store::sled_writer::Writer::run"],
        &[],
    ),
    (
        "tracing (spans, events)",
        &["tracing::span::Span::", "tracing_core::"],
        &[],
    ),
    (
        "allocator (malloc, free, realloc, calloc)",
        &["malloc", "free", "realloc", "calloc"],
        &[],
    ),
];

fn env_u64(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A callgrind wrapper: the command line that runs `binary` under valgrind,
/// instrumentation off until asked for.
fn callgrind(out_dir: &Path, label: &str) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--instr-atstart=no".into(),
        format!("--callgrind-out-file={}/{label}.out", out_dir.display()),
        format!("--log-file={}/{label}.valgrind.log", out_dir.display()),
    ]
}

/// A shell script that runs `binary "$@"` under `wrapper` (for
/// [`Proc::daemon_bin`], which takes a program path).
fn wrapper_script(out_dir: &Path, label: &str, wrapper: &[String], binary: &Path) -> PathBuf {
    let path = out_dir.join(format!("{label}.sh"));
    let line = wrapper.join(" ");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nexec {line} {} \"$@\"\n", binary.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn control(pid: u32, arg: &str) {
    let status = Command::new("callgrind_control")
        .arg(arg)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("callgrind_control (valgrind) is needed");
    assert!(status.success(), "callgrind_control {arg} {pid}: {status}");
}

/// Exactly `calls` calls from 64 callers over 4 connections; returns the
/// number that failed.
async fn drive<F, Fut>(server: &Proc, calls: u64, call: F) -> u64
where
    F: Fn(usize, u64, AuthorizationClient<Channel>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let chans = channels(server.addr, 4).await;
    let call = Arc::new(call);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|t| {
            let (client, call, next, errors) = (
                AuthorizationClient::new(chans[t % chans.len()].clone()),
                call.clone(),
                next.clone(),
                errors.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let seq = next.fetch_add(1, Ordering::Relaxed);
                    if seq >= calls {
                        break;
                    }
                    // The sequence number per caller, as the load bench has it.
                    if call(t, seq / 64, client.clone()).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    errors.load(Ordering::Relaxed)
}

/// Inclusive instructions per function from a callgrind file.
fn inclusive(file: &Path) -> (u64, BTreeMap<String, u64>) {
    let out = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(file)
        .output()
        .expect("callgrind_annotate");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0;
    let mut functions = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some((count, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        // "N (p%)  file:function [object]" or "N (100.0%)  PROGRAM TOTALS"
        let rest = rest.trim();
        let rest = rest
            .strip_prefix('(')
            .and_then(|r| r.split_once(')'))
            .map_or(rest, |(_, r)| r.trim());
        if rest.starts_with("PROGRAM TOTALS") {
            total = count;
            continue;
        }
        let name = rest.split_once(':').map_or(rest, |(_, f)| f);
        let name = name.rsplit_once(" [").map_or(name, |(f, _)| f).trim();
        *functions.entry(name.to_owned()).or_insert(0) += count;
    }
    (total, functions)
}

fn group_cost(functions: &BTreeMap<String, u64>, patterns: &[&str]) -> u64 {
    functions
        .iter()
        .filter(|(name, _)| {
            patterns.iter().any(|p| {
                if p.chars().all(|c| c.is_ascii_lowercase()) {
                    // An allocator entry point: the bare symbol.
                    name.as_str() == *p || name.ends_with(&format!("::{p}"))
                } else {
                    name.contains(p)
                }
            })
        })
        .map(|(_, n)| n)
        .sum()
}

struct Measured {
    server: String,
    scenario: &'static str,
    calls: u64,
    total: u64,
    groups: Vec<u64>,
}

async fn measure<F, Fut>(
    server: &Proc,
    label: &str,
    out_dir: &Path,
    scenario: &'static str,
    call: F,
) -> Measured
where
    F: Fn(usize, u64, AuthorizationClient<Channel>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<(), tonic::Status>> + Send,
{
    let calls = env_u64("READCOST_CALLS", 5_000);
    let warmup = env_u64("READCOST_WARMUP", 2_000);
    let pid = server.child.id();
    // Warm-up uninstrumented (fast), then a short instrumented warm-up so
    // that the translations are made before counting.
    assert_eq!(
        drive(server, warmup, call.clone()).await,
        0,
        "{label}: errors"
    );
    control(pid, "--instr=on");
    assert_eq!(drive(server, 500, call.clone()).await, 0, "{label}: errors");
    let before: Vec<PathBuf> = dumps(out_dir, label);
    control(pid, "--zero");
    let errors = drive(server, calls, call).await;
    assert_eq!(errors, 0, "{label} {scenario}: {errors} calls failed");
    control(pid, "--dump");
    control(pid, "--instr=off");
    let file = dumps(out_dir, label)
        .into_iter()
        .find(|f| !before.contains(f))
        .expect("callgrind wrote a dump");
    let named = out_dir.join(format!("{label}.{scenario}.callgrind"));
    std::fs::rename(&file, &named).unwrap();
    std::fs::write(named.with_extension("calls"), calls.to_string()).unwrap();
    analyse(out_dir, label, scenario)
}

/// The table's figures from the files [`measure`] left.
fn analyse(out_dir: &Path, label: &str, scenario: &'static str) -> Measured {
    let named = out_dir.join(format!("{label}.{scenario}.callgrind"));
    let calls = std::fs::read_to_string(named.with_extension("calls"))
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .expect("the number of calls beside the callgrind file");
    let (total, functions) = inclusive(&named);
    Measured {
        server: label.to_owned(),
        scenario,
        calls,
        total,
        groups: GROUPS
            .iter()
            .map(|(_, plus, minus)| {
                let plus = group_cost(&functions, plus);
                // Only where the row's functions ran (the echo has no layers).
                match plus {
                    0 => 0,
                    n => n.saturating_sub(
                        minus
                            .iter()
                            .map(|m| group_cost(&functions, m))
                            .find(|&c| c > 0)
                            .unwrap_or(0),
                    ),
                }
            })
            .collect(),
    }
}

fn dumps(out_dir: &Path, label: &str) -> Vec<PathBuf> {
    let prefix = format!("{label}.out");
    let mut v: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .collect();
    v.sort();
    v
}

fn main() {
    if std::env::args().any(|a| a == "--echo-server") {
        echo::run();
        return;
    }
    // `cargo test` builds every bench target; only `cargo bench` runs this.
    if !std::env::args().any(|a| a == "--bench") {
        println!("readcost: not run (run `cargo bench --bench readcost`; it needs valgrind)");
        return;
    }
    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/readcost");
    let mut servers: Vec<(String, Option<PathBuf>)> = vec![
        ("echo".into(), None),
        (
            "consentd".into(),
            Some(PathBuf::from(env!("CARGO_BIN_EXE_consentd"))),
        ),
    ];
    if let Ok(compare) = std::env::var("READCOST_COMPARE") {
        for entry in compare.split(',').filter(|e| !e.is_empty()) {
            let (label, binary) = entry
                .split_once('@')
                .expect("READCOST_COMPARE: label@/path/to/consentd");
            servers.push((label.to_owned(), Some(PathBuf::from(binary))));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // READCOST_ANALYSE=1: the table from the files of the last run, without
    // measuring again (e.g. after changing GROUPS).
    if std::env::var_os("READCOST_ANALYSE").is_some() {
        let results: Vec<Measured> = servers
            .iter()
            .flat_map(|(label, _)| {
                ["authorize", "checkapi"].map(|scenario| analyse(&out_dir, label, scenario))
            })
            .collect();
        print_table(&results, &out_dir);
        return;
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let results: Vec<Measured> = runtime.block_on(async {
        let mut results = Vec::new();
        for (label, binary) in &servers {
            let wrapper = callgrind(&out_dir, label);
            let data = tempfile::tempdir().unwrap();
            let server = match binary {
                None => echo::spawn_via(&wrapper),
                Some(binary) => {
                    let script = wrapper_script(&out_dir, label, &wrapper, binary);
                    let p = Proc::daemon_bin(&script, &data.path().join("data"), &[]);
                    preload(p.addr).await;
                    p
                }
            };
            results.push(measure(&server, label, &out_dir, "authorize", authorize_call).await);
            results.push(measure(&server, label, &out_dir, "checkapi", check_api_call).await);
            server.stop();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        results
    });
    print_table(&results, &out_dir);
}

fn print_table(results: &[Measured], out_dir: &Path) {
    let columns: Vec<String> = results
        .iter()
        .map(|m| format!("{} {}", m.server, m.scenario))
        .collect();
    println!(
        "\nInstructions per call (callgrind, inclusive; {} calls each, c=64 over 4 connections)\n",
        results[0].calls
    );
    println!(
        "| function (inclusive, per call) | {} |",
        columns.join(" | ")
    );
    println!("|---|{}", "---|".repeat(columns.len()));
    let per_call = |n: u64, m: &Measured| n as f64 / m.calls as f64;
    let cells: Vec<String> = results
        .iter()
        .map(|m| format!("{:.0}", per_call(m.total, m)))
        .collect();
    println!(
        "| **whole process (every thread)** | {} |",
        cells.join(" | ")
    );
    for (i, (name, _, _)) in GROUPS.iter().enumerate() {
        let cells: Vec<String> = results
            .iter()
            .map(|m| match m.groups[i] {
                0 => "-".to_owned(),
                n => format!("{:.0}", per_call(n, m)),
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    let echo_of = |scenario: &str| {
        results
            .iter()
            .find(|m| m.server == "echo" && m.scenario == scenario)
            .map(|m| per_call(m.total, m))
    };
    println!();
    for m in results.iter().filter(|m| m.server != "echo") {
        if let Some(echo) = echo_of(m.scenario) {
            println!(
                "{} {}: {:.2}x the echo's instructions per call",
                m.server,
                m.scenario,
                per_call(m.total, m) / echo
            );
        }
    }
    println!("\ncallgrind files: {}", out_dir.display());
}
