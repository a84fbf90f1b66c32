//! `escalation::Webhook` against a scripted HTTP/1.1 server on 127.0.0.1.
//!
//! The server uses tokio's `net` and `io-util` features, which this crate's
//! dev-dependencies do not name: `net` comes with the `webhook` feature
//! (reqwest) and `io-util` with object_store.
#![cfg(feature = "webhook")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use overseer_core::RecordKey;
use overseer_core::Timestamp;
use overseer_core::escalation::{Escalation, Incident, IncidentChange, Severity, Webhook};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One request the server received.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    /// Header names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// What the server does with one connection.
#[derive(Clone, Copy, Debug)]
enum Reply {
    /// Answers with this status (and a small body).
    Status(u16),
    /// Reads the request, then closes the connection without answering.
    Hangup,
    /// Reads the request, then never answers.
    Stall,
    /// Answers with this status and a chunked body that never ends.
    EndlessBody(u16),
}

/// A scripted server: the n-th connection gets the n-th reply, and `202`
/// once the script has run out.
struct Server {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(script: Vec<Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            let mut script = script.into_iter();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let reply = script.next().unwrap_or(Reply::Status(202));
                let recorded = Arc::clone(&recorded);
                tokio::spawn(async move { serve(stream, reply, recorded).await });
            }
        });
        Server { addr, requests, task }
    }

    fn url(&self) -> String {
        format!("http://{}/v2/enqueue", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request (head, then `Content-Length` bytes of body), records
/// it and replies.
async fn serve(mut stream: TcpStream, reply: Reply, recorded: Arc<Mutex<Vec<Request>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut start = lines.next().unwrap_or_default().split(' ');
    let method = start.next().unwrap_or_default().to_owned();
    let path = start.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..head_end + length].to_vec();
    recorded.lock().expect("lock").push(Request {
        method,
        path,
        headers,
        body,
    });
    match reply {
        Reply::Status(status) => {
            let body = format!("{{\"status\":\"scripted\",\"code\":{status}}}");
            let response = format!(
                "HTTP/1.1 {status} Scripted\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Reply::EndlessBody(status) => {
            let head = format!(
                "HTTP/1.1 {status} Scripted\r\ncontent-type: text/plain\r\n\
                 transfer-encoding: chunked\r\n\r\n"
            );
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("1000\r\n{}\r\n", "x".repeat(0x1000));
            // Until the client hangs up.
            while stream.write_all(chunk.as_bytes()).await.is_ok() {}
        }
        Reply::Hangup => drop(stream),
        Reply::Stall => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(stream);
        }
    }
}

fn incident() -> Incident {
    Incident {
        check: "completed_transfers_are_paid".into(),
        root: RecordKey::new("transfers", "t-1").expect("valid key"),
        dedup_key: "completed_transfers_are_paid/transfers/t-1/1714564800000000".into(),
        opened_at: Timestamp::from_secs(1_714_564_800),
        updated_at: Timestamp::from_secs(1_714_564_800),
        resolved_at: None,
        failures: 1,
        message: "completed transfer has no bank payment".into(),
        details: json!({"status": "completed", "payment": null}),
        trigger_commit_time: Timestamp::from_millis(1_714_564_200_500),
    }
}

/// A webhook to `url` with tiny backoffs.
fn hook(url: String) -> Webhook {
    Webhook::new(url)
        .routing_key("R0UT1NGK3Y")
        .backoff(Duration::from_millis(5))
        .timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn trigger_posts_the_pagerduty_event() {
    let server = Server::start(vec![]).await;
    let hook = hook(server.url())
        .severity(Severity::Critical)
        .source("overseer-test");
    hook.escalate(IncidentChange::Opened, &incident())
        .await
        .expect("trigger sent");

    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/v2/enqueue");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.json(),
        json!({
            "routing_key": "R0UT1NGK3Y",
            "event_action": "trigger",
            "dedup_key": "completed_transfers_are_paid/transfers/t-1/1714564800000000",
            "payload": {
                "summary": "completed_transfers_are_paid fails for transfers/t-1: \
                            completed transfer has no bank payment",
                "source": "overseer-test",
                "severity": "critical",
                "timestamp": "2024-05-01T12:00:00Z",
                "component": "transfers",
                "class": "completed_transfers_are_paid",
                "custom_details": {
                    "check": "completed_transfers_are_paid",
                    "root": { "model": "transfers", "id": "t-1" },
                    "message": "completed transfer has no bank payment",
                    "details": { "status": "completed", "payment": null },
                    "failures": 1,
                    "opened_at": "2024-05-01T12:00:00Z",
                    "trigger_commit_time": "2024-05-01T11:50:00.500Z"
                }
            }
        })
    );
}

#[tokio::test]
async fn resolve_posts_the_same_dedup_key() {
    let server = Server::start(vec![]).await;
    let hook = hook(server.url());
    let mut incident = incident();
    hook.escalate(IncidentChange::Opened, &incident)
        .await
        .expect("trigger sent");
    incident.resolved_at = Some(Timestamp::from_secs(1_714_565_000));
    hook.escalate(IncidentChange::Resolved, &incident)
        .await
        .expect("resolve sent");

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let trigger = requests[0].json();
    assert_eq!(
        requests[1].json(),
        json!({
            "routing_key": "R0UT1NGK3Y",
            "event_action": "resolve",
            "dedup_key": trigger["dedup_key"],
        })
    );
    assert_eq!(trigger["dedup_key"], incident.dedup_key.as_str());
}

#[tokio::test]
async fn updated_sends_nothing() {
    let server = Server::start(vec![]).await;
    let hook = hook(server.url());
    let mut incident = incident();
    incident.failures = 7;
    hook.escalate(IncidentChange::Updated, &incident)
        .await
        .expect("nothing to send");
    // Give a stray request time to arrive.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff() {
    let server = Server::start(vec![Reply::Status(500), Reply::Status(503)]).await;
    let hook = hook(server.url()).backoff(Duration::from_millis(20));
    let started = Instant::now();
    hook.escalate(IncidentChange::Opened, &incident())
        .await
        .expect("accepted on the third attempt");
    let elapsed = started.elapsed();

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|r| r.body == requests[0].body));
    // 20 ms, then 40 ms.
    assert!(elapsed >= Duration::from_millis(60), "{elapsed:?}");
}

#[tokio::test]
async fn too_many_requests_is_retried() {
    let server = Server::start(vec![Reply::Status(429)]).await;
    hook(server.url())
        .escalate(IncidentChange::Opened, &incident())
        .await
        .expect("accepted on the second attempt");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let server = Server::start(vec![Reply::Status(400)]).await;
    let error = hook(server.url())
        .escalate(IncidentChange::Opened, &incident())
        .await
        .expect_err("400 fails");
    let text = error.to_string();
    assert_eq!(server.requests().len(), 1);
    assert!(text.contains("400"), "{text}");
    assert!(text.contains(r#""code":400"#), "body quoted: {text}");
    assert!(text.contains("not retried"), "{text}");
}

#[tokio::test]
async fn an_endless_error_body_is_read_only_as_far_as_it_is_quoted() {
    let server = Server::start(vec![Reply::EndlessBody(400)]).await;
    let error = hook(server.url())
        .escalate(IncidentChange::Opened, &incident())
        .await
        .expect_err("400 fails");
    let text = error.to_string();
    assert!(text.contains("HTTP 400"), "{text}");
    assert!(text.contains("xxxx… (cut at 512 bytes)"), "{text}");
    assert!(text.len() < 1024, "{} bytes: {text}", text.len());
}

#[tokio::test]
async fn retries_run_out() {
    let server = Server::start(vec![Reply::Status(502); 10]).await;
    let error = hook(server.url())
        .max_retries(2)
        .escalate(IncidentChange::Resolved, &incident())
        .await
        .expect_err("every attempt fails");
    let text = error.to_string();
    assert_eq!(server.requests().len(), 3);
    assert!(text.contains("after 3 attempts"), "{text}");
    assert!(text.contains("502"), "{text}");
}

#[tokio::test]
async fn hangups_are_retried() {
    let server = Server::start(vec![Reply::Hangup, Reply::Hangup]).await;
    hook(server.url())
        .escalate(IncidentChange::Opened, &incident())
        .await
        .expect("accepted on the third attempt");
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn timeouts_are_retried() {
    let server = Server::start(vec![Reply::Stall]).await;
    hook(server.url())
        .timeout(Duration::from_millis(100))
        .escalate(IncidentChange::Opened, &incident())
        .await
        .expect("accepted on the second attempt");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn connection_refused_fails_after_max_retries() {
    let server = Server::start(vec![]).await;
    let url = server.url();
    drop(server);
    // Wait until the port no longer accepts.
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/v2/enqueue")
        .to_owned();
    for _ in 0..100 {
        if TcpStream::connect(&addr).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    let error = hook(url)
        .max_retries(3)
        .backoff(Duration::from_millis(10))
        .escalate(IncidentChange::Opened, &incident())
        .await
        .expect_err("nobody listens");
    let elapsed = started.elapsed();
    let text = error.to_string();
    assert!(text.contains("after 4 attempts"), "{text}");
    assert!(text.contains("trigger"), "{text}");
    // 10 + 20 + 40 ms of backoff.
    assert!(elapsed >= Duration::from_millis(70), "{elapsed:?}");
}

#[cfg(not(feature = "webhook-rustls"))]
#[tokio::test]
async fn https_without_tls_names_the_feature() {
    // Fails before sending anything: no traffic leaves the machine.
    let error = Webhook::pagerduty("R0UT1NGK3Y")
        .escalate(IncidentChange::Opened, &incident())
        .await
        .expect_err("no TLS in this build");
    let text = error.to_string();
    assert!(text.contains("webhook-rustls"), "{text}");
    assert!(text.contains("https://events.pagerduty.com"), "{text}");
}
