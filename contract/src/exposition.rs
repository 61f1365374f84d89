//! How `/metrics` answers, the sidecar's and the operator's alike: in the
//! format the scraper's `Accept` prefers. Prometheus asks for OpenMetrics
//! first and the classic text format (0.0.4) after it; `promtool check
//! metrics`, curl and older scrapers read only the classic format, which is
//! also the answer when `Accept` says nothing about either.

use prometheus_client::registry::Registry;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`, the Prometheus text format.
    Text,
}

impl Exposition {
    /// The format an `Accept` header prefers: OpenMetrics only when it
    /// weighs `application/openmetrics-text` at least as high as anything
    /// that also takes the classic format (`text/plain`, `text/*`, `*/*`).
    /// Ties go to OpenMetrics, as they do in Prometheus's own client.
    pub fn negotiate(accept: Option<&[u8]>) -> Self {
        let Some(accept) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
            return Self::Text;
        };
        let (mut open_metrics, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| {
                    v.trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))
                });
            // A malformed weight makes the range unusable, not preferred.
            let Some(q) = q else { continue };
            match media.as_str() {
                "application/openmetrics-text" => open_metrics = open_metrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if open_metrics > 0.0 && open_metrics >= text {
            Self::OpenMetrics
        } else {
            Self::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    pub fn encode(self, registry: &Registry) -> String {
        let mut out = String::new();
        match self {
            Self::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry),
            Self::Text => prometheus_client::encoding::prometheus_text::encode(&mut out, registry),
        }
        .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Exposition::{self, OpenMetrics, Text};

    fn negotiate(accept: &str) -> Exposition {
        Exposition::negotiate(Some(accept.as_bytes()))
    }

    #[test]
    fn what_scrapers_send() {
        // Prometheus 3's default scrape_protocols.
        assert_eq!(
            negotiate(
                "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
            ),
            OpenMetrics
        );
        // scrape_protocols: [PrometheusText0.0.4]
        assert_eq!(negotiate("text/plain;version=0.0.4;q=0.1,*/*;q=0.1"), Text);
        assert_eq!(Exposition::negotiate(None), Text, "curl, promtool");
        assert_eq!(negotiate("*/*"), Text);
        assert_eq!(negotiate("application/json"), Text);
        assert_eq!(negotiate("application/openmetrics-text"), OpenMetrics);
        assert_eq!(
            negotiate("Application/OpenMetrics-Text; q=0.9, text/plain; q=0.5"),
            OpenMetrics
        );
        assert_eq!(
            negotiate("application/openmetrics-text;q=0.2,text/plain;q=0.9"),
            Text
        );
        assert_eq!(negotiate("application/openmetrics-text;q=0"), Text);
        assert_eq!(negotiate("application/openmetrics-text;q=2"), Text);
        assert_eq!(negotiate("application/openmetrics-text;q=x"), Text);
        assert_eq!(Exposition::negotiate(Some(b"\xff\xfe")), Text);
    }

    #[test]
    fn the_two_formats_differ_where_scrapers_care() {
        let mut registry = prometheus_client::registry::Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("sluice_things", "Things", counter.clone());
        counter.inc();
        let text = Text.encode(&registry);
        assert!(
            text.contains("# TYPE sluice_things_total counter\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        let open = OpenMetrics.encode(&registry);
        assert!(open.contains("# TYPE sluice_things counter\n"), "{open}");
        assert!(open.ends_with("# EOF\n"), "{open}");
    }
}
