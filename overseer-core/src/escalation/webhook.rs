//! [`Webhook`]: pages through the PagerDuty Events API v2 (or anything that
//! accepts its JSON shape).

use std::fmt::{self, Debug};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat};
use serde_json::{Map, Value, json};
use tokio::sync::OnceCell;

use super::{Escalation, Incident, IncidentChange};
use crate::error::{BoxError, Error};

/// PagerDuty's Events API v2 endpoint.
const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// Retries after the first attempt, by default.
const DEFAULT_MAX_RETRIES: u32 = 5;
/// The first pause between attempts, by default.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
/// The longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The time limit of one attempt, by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default `payload.source`.
const DEFAULT_SOURCE: &str = "overseer";
/// PagerDuty's limit on `payload.summary`, in characters.
const MAX_SUMMARY_CHARS: usize = 1024;
/// How much of an error response's body is quoted in the error.
const MAX_ERROR_BODY_BYTES: usize = 512;

/// The severity of a triggered PagerDuty event (`payload.severity`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Severity {
    /// `critical`.
    Critical,
    /// `error` (the default).
    #[default]
    Error,
    /// `warning`.
    Warning,
    /// `info`.
    Info,
}

impl Severity {
    /// The name PagerDuty uses: `critical`, `error`, `warning` or `info`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = Error;

    /// Parses `critical`, `error`, `warning` or `info` (any case).
    ///
    /// ```
    /// use overseer_core::escalation::Severity;
    /// assert_eq!("Warning".parse::<Severity>()?, Severity::Warning);
    /// assert!("fatal".parse::<Severity>().is_err());
    /// # Ok::<(), overseer_core::Error>(())
    /// ```
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "critical" => Ok(Severity::Critical),
            "error" => Ok(Severity::Error),
            "warning" => Ok(Severity::Warning),
            "info" => Ok(Severity::Info),
            _ => Err(Error::InvalidInput {
                what: "severity",
                reason: format!("{s:?} is not one of critical, error, warning, info"),
            }),
        }
    }
}

/// Pages through the [PagerDuty Events API v2] (or any endpoint that accepts
/// its JSON): an opened incident sends a `trigger` event, a resolved one a
/// `resolve` event with the same `dedup_key` ([`Incident::dedup_key`]), so
/// that PagerDuty opens and closes one alert per incident.
///
/// [`IncidentChange::Updated`] sends nothing: a check that keeps failing
/// does not re-page on every run (no alert storms); the incident's failure
/// count and latest message are in the trigger's `custom_details` only as of
/// the opening run.
///
/// A trigger looks like this (`routing_key` is left out when none is set;
/// `group` only appears when [`group`](Self::group) is set):
///
/// ```json
/// {
///   "routing_key": "R0UT1NGK3Y",
///   "event_action": "trigger",
///   "dedup_key": "completed_transfers_are_paid/transfers/t-1/1714564800000000",
///   "payload": {
///     "summary": "completed_transfers_are_paid fails for transfers/t-1: no bank payment",
///     "source": "overseer",
///     "severity": "error",
///     "timestamp": "2024-05-01T12:00:00Z",
///     "component": "transfers",
///     "class": "completed_transfers_are_paid",
///     "custom_details": {
///       "check": "completed_transfers_are_paid",
///       "root": { "model": "transfers", "id": "t-1" },
///       "message": "no bank payment",
///       "details": {},
///       "failures": 1,
///       "opened_at": "2024-05-01T12:00:00Z",
///       "trigger_commit_time": "2024-05-01T11:50:00Z"
///     }
///   }
/// }
/// ```
///
/// and a resolve carries only `routing_key`, `event_action: "resolve"` and
/// `dedup_key`.
///
/// # Delivery
///
/// Each event is posted up to `1 + max_retries` times: connection errors,
/// timeouts, HTTP 429 and 5xx are retried after a pause that starts at
/// [`backoff`](Self::backoff) and doubles up to 30 s; any other non-2xx
/// status fails at once with an error naming the status and (the start of)
/// the response body. Retrying is safe because PagerDuty deduplicates
/// events by `dedup_key`. The runner awaits the escalation, so the retries
/// and [`timeout`](Self::timeout) bound how long one transition can hold it
/// up.
///
/// # TLS
///
/// The `webhook` feature (on by default) speaks plain HTTP only. PagerDuty's
/// endpoint is `https://`, which needs the `webhook-rustls` feature of
/// `overseer-core`; without it, every event to an `https://` URL fails with
/// an error that says so (nothing is sent).
///
/// # Example
///
/// ```no_run
/// use std::collections::HashMap;
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use overseer_core::escalation::{Escalation, Severity, Webhook};
///
/// // PagerDuty (needs the `webhook-rustls` feature for https).
/// let pagerduty = Webhook::pagerduty("R0UT1NGK3Y")
///     .severity(Severity::Critical)
///     .source("overseer.payments.example.com");
///
/// // Any other receiver of the same JSON, over plain HTTP.
/// let relay = Webhook::new("http://alerts.internal:8080/events")
///     .routing_key("payments")
///     .max_retries(3)
///     .backoff(Duration::from_millis(200))
///     .timeout(Duration::from_secs(5));
///
/// // Checks name an escalation (`#[check(escalate = pagerduty)]`).
/// let mut escalations: HashMap<String, Arc<dyn Escalation>> = HashMap::new();
/// escalations.insert("pagerduty".into(), Arc::new(pagerduty));
/// escalations.insert("relay".into(), Arc::new(relay));
/// ```
///
/// [PagerDuty Events API v2]: https://developer.pagerduty.com/docs/events-api-v2/trigger-events/
#[derive(Clone)]
pub struct Webhook {
    url: String,
    routing_key: Option<String>,
    severity: Severity,
    source: String,
    group: Option<String>,
    max_retries: u32,
    backoff: Duration,
    timeout: Duration,
    /// Built on first use, so that the builder cannot fail.
    client: OnceCell<reqwest::Client>,
}

impl Webhook {
    /// Posts events to `url` (`http://...`, or `https://...` with the
    /// `webhook-rustls` feature). The URL is checked when an event is sent:
    /// an invalid one makes every escalation fail.
    ///
    /// Defaults: no routing key, severity `error`, source `overseer`,
    /// 5 retries, 500 ms first backoff, 10 s timeout per attempt.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            routing_key: None,
            severity: Severity::default(),
            source: DEFAULT_SOURCE.to_owned(),
            group: None,
            max_retries: DEFAULT_MAX_RETRIES,
            backoff: DEFAULT_BACKOFF,
            timeout: DEFAULT_TIMEOUT,
            client: OnceCell::new(),
        }
    }

    /// Posts events to PagerDuty (`https://events.pagerduty.com/v2/enqueue`)
    /// with the integration key of a service (`routing_key`).
    ///
    /// The URL is `https://`: without the `webhook-rustls` feature, sending
    /// fails with an error that names the feature.
    pub fn pagerduty(routing_key: impl Into<String>) -> Self {
        Self::new(PAGERDUTY_URL).routing_key(routing_key)
    }

    /// Sets the `routing_key` of every event (a PagerDuty integration key).
    pub fn routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = Some(routing_key.into());
        self
    }

    /// Sets `payload.severity` of triggers (default [`Severity::Error`]).
    pub fn severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// Sets `payload.source` of triggers (default `overseer`): PagerDuty
    /// shows it as the affected system.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Sets `payload.group` of triggers (left out by default).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Sets how many times a failed post is retried (default 5, so up to 6
    /// attempts); `0` never retries.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Sets the pause before the first retry (default 500 ms); it doubles
    /// with every further retry, up to 30 s.
    pub fn backoff(mut self, initial: Duration) -> Self {
        self.backoff = initial;
        self
    }

    /// Sets the time limit of one attempt, from connecting to reading the
    /// response (default 10 s). A timed-out attempt is retried.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The event for a transition, or `None` for
    /// [`IncidentChange::Updated`].
    fn event(&self, change: IncidentChange, incident: &Incident) -> Option<Value> {
        let action = match change {
            IncidentChange::Opened => "trigger",
            IncidentChange::Resolved => "resolve",
            IncidentChange::Updated => return None,
        };
        let mut event = Map::new();
        if let Some(key) = &self.routing_key {
            event.insert("routing_key".into(), key.as_str().into());
        }
        event.insert("event_action".into(), action.into());
        event.insert("dedup_key".into(), incident.dedup_key.as_str().into());
        if change == IncidentChange::Opened {
            event.insert("payload".into(), self.payload(incident));
        }
        Some(Value::Object(event))
    }

    /// The `payload` of a trigger.
    fn payload(&self, incident: &Incident) -> Value {
        let summary = format!(
            "{} fails for {}: {}",
            incident.check, incident.root, incident.message
        );
        let summary = match summary.char_indices().nth(MAX_SUMMARY_CHARS) {
            Some((end, _)) => summary[..end].to_owned(),
            None => summary,
        };
        let mut payload = Map::new();
        payload.insert("summary".into(), summary.into());
        payload.insert("source".into(), self.source.as_str().into());
        payload.insert("severity".into(), self.severity.as_str().into());
        // PagerDuty wants RFC 3339; a time chrono cannot represent is left
        // out (PagerDuty then uses the time it received the event).
        if let Some(t) = DateTime::from_timestamp_micros(incident.opened_at.as_micros()) {
            let t = t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
            payload.insert("timestamp".into(), t.into());
        }
        payload.insert("component".into(), incident.root.model.as_str().into());
        if let Some(group) = &self.group {
            payload.insert("group".into(), group.as_str().into());
        }
        payload.insert("class".into(), incident.check.as_str().into());
        payload.insert(
            "custom_details".into(),
            json!({
                "check": incident.check,
                "root": { "model": incident.root.model.as_str(), "id": incident.root.id.as_str() },
                "message": incident.message,
                "details": incident.details,
                "failures": incident.failures,
                "opened_at": incident.opened_at.to_string(),
                "trigger_commit_time": incident.trigger_commit_time.to_string(),
            }),
        );
        Value::Object(payload)
    }

    /// The URL to post to, if it is one this build can post to.
    fn checked_url(&self) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| format!("invalid webhook URL: {e}"))?;
        match url.scheme() {
            "http" => Ok(url),
            "https" if cfg!(feature = "webhook-rustls") => Ok(url),
            "https" => Err(format!(
                "cannot post to {}: https needs TLS, which this build of overseer-core does not \
                 have; enable its `webhook-rustls` feature",
                origin(&url)
            )),
            other => Err(format!(
                "cannot post to {}: unsupported URL scheme {other:?} (use http or https)",
                origin(&url)
            )),
        }
    }

    /// Posts `body` until it is accepted, a non-retryable error occurs or the
    /// attempts run out.
    async fn post(&self, action: &str, dedup_key: &str, body: Bytes) -> Result<(), BoxError> {
        let failed = |reason: String| -> BoxError {
            format!("webhook {action} event for {dedup_key:?} failed: {reason}").into()
        };
        let url = self.checked_url().map_err(failed)?;
        let client = self
            .client
            .get_or_try_init(|| async {
                reqwest::Client::builder()
                    .user_agent(concat!("overseer/", env!("CARGO_PKG_VERSION")))
                    .build()
            })
            .await
            .map_err(|e| failed(format!("cannot build the HTTP client: {}", describe(e))))?;

        let attempts = self.max_retries.saturating_add(1);
        let mut pause = self.backoff.min(MAX_BACKOFF);
        let mut attempt = 1;
        loop {
            let error = match self.attempt(client, &url, body.clone()).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Fatal(error)) => return Err(failed(error)),
                Err(Attempt::Retryable(error)) => error,
            };
            if attempt >= attempts {
                return Err(failed(format!(
                    "gave up after {attempt} attempt{}; last error: {error}",
                    if attempt == 1 { "" } else { "s" }
                )));
            }
            tracing::debug!(
                action, dedup_key, attempt, error = %error, retry_in = ?pause,
                "webhook post failed; retrying"
            );
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }

    /// One post.
    async fn attempt(
        &self,
        client: &reqwest::Client,
        url: &reqwest::Url,
        body: Bytes,
    ) -> Result<(), Attempt> {
        let response = client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(self.timeout)
            .body(body)
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) if e.is_builder() => return Err(Attempt::Fatal(describe(e))),
            Err(e) => return Err(Attempt::Retryable(describe(e))),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = match error_body(response).await {
            Ok(text) => text,
            Err(e) => format!("<unreadable body: {}>", describe(e)),
        };
        let error = format!("{} answered HTTP {status}: {body}", origin(url));
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Err(Attempt::Retryable(error))
        } else {
            Err(Attempt::Fatal(format!("{error} (not retried)")))
        }
    }
}

impl Debug for Webhook {
    /// Shows the URL's origin only and never the routing key (both can be
    /// secrets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = reqwest::Url::parse(&self.url).map_or_else(|_| "<invalid>".into(), |u| origin(&u));
        f.debug_struct("Webhook")
            .field("url", &url)
            .field("routing_key", &self.routing_key.as_ref().map(|_| "<redacted>"))
            .field("severity", &self.severity)
            .field("source", &self.source)
            .field("group", &self.group)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Escalation for Webhook {
    /// Sends `trigger` for [`IncidentChange::Opened`], `resolve` for
    /// [`IncidentChange::Resolved`] and nothing for
    /// [`IncidentChange::Updated`].
    async fn escalate(&self, change: IncidentChange, incident: &Incident) -> Result<(), BoxError> {
        let Some(event) = self.event(change, incident) else {
            return Ok(());
        };
        let action = if change == IncidentChange::Opened {
            "trigger"
        } else {
            "resolve"
        };
        let body = Bytes::from(serde_json::to_vec(&event)?);
        self.post(action, &incident.dedup_key, body).await
    }
}

/// How one post failed.
enum Attempt {
    /// Worth another try (connection error, timeout, 429, 5xx).
    Retryable(String),
    /// Not (other statuses, a request that cannot be built).
    Fatal(String),
}

/// `scheme://host[:port]` of a URL: enough to say where a post went without
/// quoting a path or query that may hold a token.
fn origin(url: &reqwest::Url) -> String {
    url.origin().ascii_serialization()
}

/// A reqwest error with its sources, without its URL.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The start of an error response's body, as quoted in the error: at most
/// [`MAX_ERROR_BODY_BYTES`] are read, so a target answering with a huge or
/// endless body costs no more than that.
async fn error_body(mut response: reqwest::Response) -> Result<String, reqwest::Error> {
    let mut read = Vec::with_capacity(MAX_ERROR_BODY_BYTES);
    let mut more = false;
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_ERROR_BODY_BYTES - read.len();
        read.extend_from_slice(chunk.get(..room).unwrap_or(&chunk));
        if chunk.len() > room {
            more = true;
            break;
        }
    }
    // A character cut at the end reads as U+FFFD.
    let text = String::from_utf8_lossy(&read);
    let text = text.trim();
    Ok(if more {
        format!("{text}… (cut at {MAX_ERROR_BODY_BYTES} bytes)")
    } else {
        text.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RecordKey;
    use crate::time::Timestamp;

    fn incident() -> Incident {
        Incident {
            check: "completed_transfers_are_paid".into(),
            root: RecordKey::new("transfers", "t-1").expect("valid key"),
            dedup_key: "completed_transfers_are_paid/transfers/t-1/1714564800000000".into(),
            opened_at: Timestamp::from_secs(1_714_564_800),
            updated_at: Timestamp::from_secs(1_714_564_800),
            resolved_at: None,
            failures: 1,
            message: "no bank payment".into(),
            details: json!({"amount_minor": 0}),
            trigger_commit_time: Timestamp::from_secs(1_714_564_200),
        }
    }

    #[test]
    fn trigger_has_the_pagerduty_shape() {
        let hook = Webhook::pagerduty("R0UT1NGK3Y").severity(Severity::Critical);
        let event = hook.event(IncidentChange::Opened, &incident());
        assert_eq!(
            event,
            Some(json!({
                "routing_key": "R0UT1NGK3Y",
                "event_action": "trigger",
                "dedup_key": "completed_transfers_are_paid/transfers/t-1/1714564800000000",
                "payload": {
                    "summary": "completed_transfers_are_paid fails for transfers/t-1: no bank payment",
                    "source": "overseer",
                    "severity": "critical",
                    "timestamp": "2024-05-01T12:00:00Z",
                    "component": "transfers",
                    "class": "completed_transfers_are_paid",
                    "custom_details": {
                        "check": "completed_transfers_are_paid",
                        "root": { "model": "transfers", "id": "t-1" },
                        "message": "no bank payment",
                        "details": { "amount_minor": 0 },
                        "failures": 1,
                        "opened_at": "2024-05-01T12:00:00Z",
                        "trigger_commit_time": "2024-05-01T11:50:00Z"
                    }
                }
            }))
        );
    }

    #[test]
    fn resolve_carries_only_the_key() {
        let hook = Webhook::pagerduty("R0UT1NGK3Y").group("payments");
        let event = hook.event(IncidentChange::Resolved, &incident());
        assert_eq!(
            event,
            Some(json!({
                "routing_key": "R0UT1NGK3Y",
                "event_action": "resolve",
                "dedup_key": "completed_transfers_are_paid/transfers/t-1/1714564800000000",
            }))
        );
        assert_eq!(hook.event(IncidentChange::Updated, &incident()), None);
    }

    #[test]
    fn optional_fields() {
        let hook = Webhook::new("http://127.0.0.1:1/").group("payments");
        let mut long = incident();
        long.message = "x".repeat(2000);
        let event = hook.event(IncidentChange::Opened, &long).expect("a trigger");
        assert!(event.get("routing_key").is_none());
        assert_eq!(event["payload"]["group"], "payments");
        let summary = event["payload"]["summary"].as_str().expect("a summary");
        assert_eq!(summary.chars().count(), MAX_SUMMARY_CHARS);
    }

    #[test]
    fn debug_hides_the_routing_key_and_path() {
        let hook = Webhook::new("http://example.com/hook/s3cr3t").routing_key("R0UT1NGK3Y");
        let text = format!("{hook:?}");
        assert!(!text.contains("R0UT1NGK3Y"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("http://example.com"), "{text}");
    }
}
