//! Reading the metrics endpoint: a hand-written HTTP/1.1 GET over a tokio
//! socket (three routes need no HTTP crate), and the Prometheus text
//! exposition parsed into samples looked up by name and labels.

use super::POOL;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Response {
    pub status: u16,
    pub body: String,
}

/// `GET path` over a fresh connection, reading until pgdyno closes it.
/// Connection errors are returned (the endpoint may be gone); a response
/// that takes more than 5 s fails the test.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<Response> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} got no whole response within 5 s"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET {path}: no end of headers in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: no status in {head:?}"));
    Ok(Response {
        status,
        body: body.to_owned(),
    })
}

/// `GET path`, retrying the connection for a few seconds: the endpoint
/// starts listening a moment after pgdyno's client port.
pub async fn http_get_ok(port: u16, path: &str) -> Response {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match http_get(port, path).await {
            Ok(response) => return response,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("GET {path} on 127.0.0.1:{port}: {e}"),
        }
    }
}

/// One sample of the text exposition: name, labels, value.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape of `/metrics`.
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Scrape {
    pub fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|line| {
                let (series, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("metric line without a value: {line:?}"));
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    v => v
                        .parse()
                        .unwrap_or_else(|_| panic!("bad value in {line:?}")),
                };
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                    None => (series, BTreeMap::new()),
                };
                Sample {
                    name: name.to_owned(),
                    labels,
                    value,
                }
            })
            .collect();
        Scrape { samples, text }
    }

    /// The value of the series `name` whose labels include `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Like `get`, failing the test (with the whole scrape) if absent.
    pub fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in /metrics:\n{}", self.text))
    }

    pub fn pool(&self, name: &str) -> f64 {
        self.must(name, POOL)
    }

    /// A counter that may not exist yet counts 0.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    pub fn has_name(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

/// `k="v",k2="v2"` (our values hold no quotes or commas).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("bad label {pair:?}"));
            (k.to_owned(), v.trim_matches('"').to_owned())
        })
        .collect()
}

pub async fn scrape(port: u16) -> Scrape {
    let response = http_get_ok(port, "/metrics").await;
    assert_eq!(response.status, 200, "GET /metrics: {}", response.body);
    Scrape::parse(response.body)
}

/// Scrapes until `done` holds (pgdyno adds a transaction's counts as its
/// backend is released, a moment after the client has its answer), or 5 s
/// have passed; returns the last scrape either way.
pub async fn scrape_until(port: u16, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = scrape(port).await;
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
