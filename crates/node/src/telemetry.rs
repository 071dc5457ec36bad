//! Latency histograms for `/metrics`, in Prometheus text: of every HTTP API request by route, and of the
//! store's durable commits.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (Prometheus `le`).
const BUCKETS: [f64; 14] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Durations: how many fell at or under each bound, their count and their sum.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Histogram {
    at_or_under: [u64; BUCKETS.len()],
    count: u64,
    sum_s: f64,
}

impl Histogram {
    pub fn record(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        for (bound, n) in BUCKETS.iter().zip(self.at_or_under.iter_mut()) {
            if seconds <= *bound {
                *n += 1;
            }
        }
        self.count += 1;
        self.sum_s += seconds;
    }

    /// The series of metric `name` with `labels` (`key="value",...`, or empty).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let braced = |extra: &str| {
            let all: Vec<&str> = [labels, extra].into_iter().filter(|l| !l.is_empty()).collect();
            if all.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", all.join(","))
            }
        };
        for (bound, n) in BUCKETS.iter().zip(self.at_or_under) {
            let _ = writeln!(out, "{name}_bucket{} {n}", braced(&format!("le=\"{bound}\"")));
        }
        let _ = writeln!(out, "{name}_bucket{} {}", braced("le=\"+Inf\""), self.count);
        let _ = writeln!(out, "{name}_sum{} {}", braced(""), self.sum_s);
        let _ = writeln!(out, "{name}_count{} {}", braced(""), self.count);
    }
}

/// Latency of every HTTP API request, by method and route template (`PUT /v1/kv/{key}`, not the key).
#[derive(Debug, Default)]
pub struct RequestLatency {
    /// Method, then route.
    by_route: Mutex<BTreeMap<String, BTreeMap<String, Histogram>>>,
}

impl RequestLatency {
    pub fn record(&self, method: &str, route: &str, took: Duration) {
        let Ok(mut methods) = self.by_route.lock() else { return };
        // Found without allocating once the route has been seen.
        let routes = match methods.get_mut(method) {
            Some(routes) => routes,
            None => methods.entry(method.to_owned()).or_default(),
        };
        let h = match routes.get_mut(route) {
            Some(h) => h,
            None => routes.entry(route.to_owned()).or_default(),
        };
        h.record(took);
    }

    /// The histograms as Prometheus text (`rampart_http_request_duration_seconds`).
    pub fn render(&self, out: &mut String) {
        let name = "rampart_http_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} HTTP API request latency, by method and route");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let Ok(methods) = self.by_route.lock() else { return };
        for (method, route, h) in methods.iter().flat_map(|(m, routes)| routes.iter().map(move |(r, h)| (m, r, h))) {
            h.render(out, name, &format!("method=\"{method}\",route=\"{route}\""));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_routes_apart() {
        let l = RequestLatency::default();
        l.record("PUT", "/v1/kv/{key}", Duration::from_micros(300));
        l.record("PUT", "/v1/kv/{key}", Duration::from_millis(3));
        l.record("PUT", "/v1/kv/{key}", Duration::from_secs(20));
        l.record("GET", "/v1/kv/{key}", Duration::from_millis(1));
        let mut out = String::new();
        l.render(&mut out);
        let line = |s: &str| out.lines().find(|l| l.starts_with(s)).map(str::to_owned);
        let put = r#"rampart_http_request_duration_seconds_bucket{method="PUT",route="/v1/kv/{key}","#;
        assert_eq!(line(&format!("{put}le=\"0.0005\"}}")).as_deref(), Some(&*format!("{put}le=\"0.0005\"}} 1")));
        assert_eq!(line(&format!("{put}le=\"0.005\"}}")).as_deref(), Some(&*format!("{put}le=\"0.005\"}} 2")));
        assert_eq!(line(&format!("{put}le=\"10\"}}")).as_deref(), Some(&*format!("{put}le=\"10\"}} 2")));
        assert_eq!(line(&format!("{put}le=\"+Inf\"}}")).as_deref(), Some(&*format!("{put}le=\"+Inf\"}} 3")));
        let get = r#"rampart_http_request_duration_seconds_count{method="GET",route="/v1/kv/{key}"}"#;
        assert_eq!(line(get).as_deref(), Some(&*format!("{get} 1")));
    }

    #[test]
    fn a_histogram_without_labels_renders_valid_series() {
        let mut h = Histogram::default();
        h.record(Duration::from_millis(3));
        h.record(Duration::from_millis(300));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "");
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.contains(&r#"x_seconds_bucket{le="0.002"} 0"#), "{out}");
        assert!(lines.contains(&r#"x_seconds_bucket{le="0.005"} 1"#), "{out}");
        assert!(lines.contains(&r#"x_seconds_bucket{le="0.5"} 2"#), "{out}");
        assert!(lines.contains(&r#"x_seconds_bucket{le="+Inf"} 2"#), "{out}");
        assert!(lines.contains(&"x_seconds_count 2"), "{out}");
    }
}
