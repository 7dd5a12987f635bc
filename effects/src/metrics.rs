//! `GET /metrics`: what the engine and the workers counted, in the
//! OpenMetrics text format that Prometheus scrapes (docs/OPERATIONS.md,
//! "Metrics").
//!
//! Nothing here is counted on the hot path: the engine keeps plain
//! integers ([`tokenizer_auth_engine::metrics`]) and the workers relaxed
//! atomics ([`PoolStats`](crate::pool::PoolStats)); a scrape takes one
//! [`Scrape`] of them all (the runtime asks the thread that owns the
//! engine) and renders it here, through `prometheus-client`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokenizer_auth_engine::Engine;
use tokenizer_auth_engine::metrics::{EFFECT_KINDS, LATENCY_BOUNDS_US, LIMITS, Metrics, REPLY_KINDS};

use crate::audit::AuditCounts;
use crate::pool::{GROUP_SIZE_BOUNDS, PoolCounts};

/// Everything a scrape shows, read at one instant.
#[derive(Clone, Default, Debug)]
pub struct Scrape {
    /// The engine's counters.
    pub engine: Metrics,
    /// Connections open now.
    pub connections_open: usize,
    /// Password checks and hashes waiting or running now.
    pub password_checks: usize,
    /// The workers' counters.
    pub pool: PoolCounts,
    /// The audit trail's writer's counters.
    pub audit: AuditCounts,
}

impl Scrape {
    /// What the engine counted and holds now (the workers' counts are
    /// added by whoever holds the pool).
    pub fn of(engine: &Engine) -> Scrape {
        Scrape {
            engine: engine.metrics().clone(),
            connections_open: engine.connections(),
            password_checks: engine.password_checks(),
            pool: PoolCounts::default(),
            audit: AuditCounts::default(),
        }
    }

    /// Adds what another engine of the same server counted and holds (the
    /// workers' and the trail's counts are the server's, added once).
    pub fn add_engine(&mut self, other: &Scrape) {
        self.engine.add(&other.engine);
        self.connections_open += other.connections_open;
        self.password_checks += other.password_checks;
    }
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The text of one scrape.
pub fn render(scrape: Scrape) -> String {
    let mut registry = Registry::with_prefix("tokenizer_auth");
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &self.engine;
        labelled_counters(
            &mut encoder,
            "replies",
            "Replies, by kind (each error code by its name)",
            "kind",
            &REPLY_KINDS,
            &e.replies,
        )?;
        gauge(&mut encoder, "connections_open", "Connections open", self.connections_open as u64)?;
        counter(&mut encoder, "connections_refused", "Connections refused at max_connections", e.connections_refused)?;
        labelled_counters(
            &mut encoder,
            "limit_refusals",
            "Requests refused by each brute-force limit",
            "limit",
            &LIMITS,
            &e.limit_refusals,
        )?;
        gauge(
            &mut encoder,
            "password_checks_queued",
            "Password checks and hashes waiting or running",
            self.password_checks as u64,
        )?;
        let in_flight: Vec<u64> = e.effects.iter().map(|s| s.performed.saturating_sub(s.completed)).collect();
        let mut flight = encoder.encode_descriptor(
            "effects_in_flight",
            "Effects asked for and not yet answered",
            None,
            MetricType::Gauge,
        )?;
        for (kind, n) in EFFECT_KINDS.iter().zip(&in_flight) {
            flight.encode_family(&[("kind", *kind)])?.encode_gauge(&(*n as i64))?;
        }
        let mut latency = encoder.encode_descriptor(
            "effect_latency_seconds",
            "How long effects took to be answered, by kind",
            None,
            MetricType::Histogram,
        )?;
        for (kind, stats) in EFFECT_KINDS.iter().zip(&e.effects) {
            let buckets = buckets(&LATENCY_BOUNDS_US.map(|us| us as f64 / 1e6), &stats.latency_buckets);
            latency.encode_family(&[("kind", *kind)])?.encode_histogram::<NoLabelSet>(
                stats.latency_sum_us as f64 / 1e6,
                stats.completed,
                &buckets,
                None,
            )?;
        }
        let p = &self.pool;
        counter(&mut encoder, "session_cache_hits", "Session lookups answered from memory", p.cache_hits)?;
        counter(&mut encoder, "session_cache_misses", "Session lookups read from the file", p.cache_misses)?;
        counter(&mut encoder, "mail_sent", "Mail the relay (or the outbox) took", p.mail_sent)?;
        counter(&mut encoder, "mail_failed", "Mail that could not be sent", p.mail_failed)?;
        let a = &self.audit;
        counter(&mut encoder, "audit_lines", "Audit trail lines written", a.lines_written)?;
        counter(
            &mut encoder,
            "audit_lines_lost",
            "Audit trail lines lost (a failed write or a full queue)",
            a.lines_lost,
        )?;
        counter(&mut encoder, "audit_write_errors", "Audit trail writes that failed (a full disk)", a.write_errors)?;
        let groups: u64 = p.group_sizes.iter().sum();
        let sizes = buckets(&GROUP_SIZE_BOUNDS.map(|b| b as f64), &p.group_sizes);
        encoder
            .encode_descriptor(
                "commit_group_size",
                "Write batches per store commit (one fsync)",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(p.group_batches as f64, groups, &sizes, None)
    }
}

/// Per-bucket counts (the last past every bound) as the `(upper bound,
/// count)` pairs `prometheus-client` takes: not cumulative (it adds them
/// up), and `f64::MAX` for `+Inf`.
fn buckets(bounds: &[f64], counts: &[u64]) -> Vec<(f64, u64)> {
    bounds.iter().copied().chain([f64::MAX]).zip(counts.iter().copied()).collect()
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    encoder.encode_descriptor(name, help, None, MetricType::Counter)?.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    encoder.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&(value as i64))
}

fn labelled_counters(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: &[&'static str],
    counts: &[u64],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values.iter().zip(counts) {
        metric.encode_family(&[(label, *value)])?.encode_counter::<NoLabelSet, _, u64>(n, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_renders_every_family() {
        let mut scrape = Scrape { connections_open: 3, password_checks: 1, ..Scrape::default() };
        scrape.engine.replies[0] = 7;
        scrape.engine.limit_refusals[4] = 2;
        scrape.engine.effects[0].performed = 5;
        scrape.engine.effects[0].completed = 4;
        scrape.engine.effects[0].latency_buckets[0] = 3;
        scrape.engine.effects[0].latency_buckets[LATENCY_BOUNDS_US.len()] = 1;
        scrape.pool.group_sizes[1] = 2;
        scrape.pool.group_batches = 4;
        scrape.audit.lines_lost = 5;
        let text = render(scrape);
        for line in [
            "tokenizer_auth_replies_total{kind=\"authorized\"} 7",
            "tokenizer_auth_replies_total{kind=\"too_many_connections\"} 0",
            "tokenizer_auth_connections_open 3",
            "tokenizer_auth_limit_refusals_total{limit=\"max_consecutive_failures\"} 2",
            "tokenizer_auth_effects_in_flight{kind=\"read\"} 1",
            "tokenizer_auth_effect_latency_seconds_bucket{le=\"0.00005\",kind=\"read\"} 3",
            "tokenizer_auth_effect_latency_seconds_bucket{le=\"+Inf\",kind=\"read\"} 4",
            "tokenizer_auth_effect_latency_seconds_count{kind=\"read\"} 4",
            "tokenizer_auth_commit_group_size_count 2",
            "tokenizer_auth_audit_lines_lost_total 5",
            "tokenizer_auth_commit_group_size_bucket{le=\"2.0\"} 2",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
