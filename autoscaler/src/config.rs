//! Server-level autoscaler settings: Knative's `config-autoscaler` knobs plus Zeroflow's own
//! (`tick-interval`, `max-replicas-cap`). Per-Executor settings come from `jcloud.autoscale` and
//! are turned into a [`crate::ScalingSpec`].

use std::collections::BTreeMap;

use tokio::time::Duration;

use crate::Error;

/// Knative's smallest and largest stable window (`autoscaling.WindowMin` / `WindowMax`).
pub const WINDOW_MIN: Duration = Duration::from_secs(6);
pub const WINDOW_MAX: Duration = Duration::from_secs(3600);
/// Knative's `autoscaling.TargetMin`: a smaller per-replica target would divide by ~0.
pub const TARGET_MIN: f64 = 0.01;

#[derive(Debug, Clone, PartialEq)]
pub struct AutoscalerConfig {
    /// How often every decider runs (Knative's fixed 2 s tick).
    pub tick_interval: Duration,
    /// Fallback stable window for a spec without one; `jcloud.autoscale` always has one.
    pub stable_window: Duration,
    /// The panic window as a percentage of the stable window, in [1, 100].
    pub panic_window_percentage: f64,
    /// Panic when the panic-window demand reaches this percentage of the ready capacity.
    pub panic_threshold_percentage: f64,
    /// Desired may be at most ceil(rate × ready) per tick.
    pub max_scale_up_rate: f64,
    /// Desired may be at least floor(ready / rate) per tick.
    pub max_scale_down_rate: f64,
    /// How long an Executor that wants zero keeps its last replica, so that the activator is
    /// surely in the path before the replica goes.
    pub scale_to_zero_grace_period: Duration,
    /// Minimum time the last replica stays once zero is wanted; the larger of this and the grace
    /// period applies.
    pub scale_to_zero_pod_retention_period: Duration,
    /// The share of `target` a replica is meant to carry in the stable state, in percent (0, 100].
    pub container_concurrency_target_percentage: f64,
    /// Per-replica concurrency target when a spec gives 0.
    pub container_concurrency_target_default: f64,
    /// Per-replica rps target when a spec gives 0.
    pub requests_per_second_target_default: f64,
    /// Spare concurrent capacity to keep before the activator may leave the path; −1 = the
    /// activator always stays, 0 = only while at zero.
    pub target_burst_capacity: f64,
    /// Server-level scale-down delay; JCloud's per-Executor default (30 s) comes from the spec.
    pub scale_down_delay: Duration,
    pub enable_scale_to_zero: bool,
    /// Concurrent requests one activator task is sized for (kept for parity; Zeroflow runs one
    /// activator in-process).
    pub activator_capacity: f64,
    /// Replicas a new Executor starts with, clamped to its [min, max].
    pub initial_scale: u32,
    pub allow_zero_initial_scale: bool,
    /// Upper bound for a spec whose `max` is 0; 0 = unbounded.
    pub max_scale: u32,
    /// Hard cap on any Executor's replicas (JCloud caps at 5); 0 = no cap.
    pub max_replicas_cap: u32,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig {
            tick_interval: Duration::from_secs(2),
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            container_concurrency_target_percentage: 70.0,
            container_concurrency_target_default: 100.0,
            requests_per_second_target_default: 200.0,
            target_burst_capacity: 211.0,
            scale_down_delay: Duration::ZERO,
            enable_scale_to_zero: true,
            activator_capacity: 100.0,
            initial_scale: 1,
            allow_zero_initial_scale: false,
            max_scale: 0,
            max_replicas_cap: 5,
        }
    }
}

/// Knative keys that Zeroflow does not model, with the reason given back to the user.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "pod-autoscaler-class",
        "the class follows jcloud.autoscale.metric (KPA for concurrency/rps, HPA-style for cpu/memory)",
    ),
    (
        "min-scale",
        "each Executor's min comes from jcloud.autoscale.min, which always has a value",
    ),
    (
        "max-scale-limit",
        "use max-replicas-cap, which clamps an Executor's max instead of rejecting it",
    ),
];

impl AutoscalerConfig {
    /// The fraction of `target` a replica should carry (0.7 by default).
    pub fn utilization(&self) -> f64 {
        self.container_concurrency_target_percentage / 100.0
    }

    /// How long an Executor that wants zero keeps its last replica.
    pub fn zero_grace(&self) -> Duration {
        self.scale_to_zero_grace_period
            .max(self.scale_to_zero_pod_retention_period)
    }

    /// Parses Knative-style keys (`panic-window-percentage: "10.0"`) over the defaults and
    /// validates the result. Keys starting with `_` (such as `_example`) are ignored, as Knative
    /// does; an unknown key is an error so that a typo is not silently dropped.
    pub fn from_knative_map(map: &BTreeMap<String, String>) -> Result<Self, Error> {
        let mut c = AutoscalerConfig::default();
        for (key, raw) in map {
            let value = raw.trim();
            match key.as_str() {
                k if k.starts_with('_') => {}
                "tick-interval" => c.tick_interval = duration(key, value)?,
                "stable-window" => c.stable_window = duration(key, value)?,
                "panic-window-percentage" => c.panic_window_percentage = float(key, value)?,
                "panic-threshold-percentage" => c.panic_threshold_percentage = float(key, value)?,
                "max-scale-up-rate" => c.max_scale_up_rate = float(key, value)?,
                "max-scale-down-rate" => c.max_scale_down_rate = float(key, value)?,
                "scale-to-zero-grace-period" => {
                    c.scale_to_zero_grace_period = duration(key, value)?
                }
                "scale-to-zero-pod-retention-period" => {
                    c.scale_to_zero_pod_retention_period = duration(key, value)?
                }
                "container-concurrency-target-percentage" => {
                    let v = float(key, value)?;
                    // Knative still accepts the legacy fraction form: 0.7 means 70 %.
                    c.container_concurrency_target_percentage =
                        if v > 0.0 && v <= 1.0 { v * 100.0 } else { v };
                }
                "container-concurrency-target-default" => {
                    c.container_concurrency_target_default = float(key, value)?
                }
                "requests-per-second-target-default" => {
                    c.requests_per_second_target_default = float(key, value)?
                }
                "target-burst-capacity" => c.target_burst_capacity = float(key, value)?,
                "scale-down-delay" => c.scale_down_delay = duration(key, value)?,
                "enable-scale-to-zero" => c.enable_scale_to_zero = boolean(key, value)?,
                "activator-capacity" => c.activator_capacity = float(key, value)?,
                "initial-scale" => c.initial_scale = integer(key, value)?,
                "allow-zero-initial-scale" => c.allow_zero_initial_scale = boolean(key, value)?,
                "max-scale" => c.max_scale = integer(key, value)?,
                "max-replicas-cap" => c.max_replicas_cap = integer(key, value)?,
                other => {
                    return Err(match UNSUPPORTED.iter().find(|(k, _)| *k == other) {
                        Some((_, why)) => Error::UnsupportedKey {
                            key: other.to_string(),
                            why,
                        },
                        None => Error::UnknownKey {
                            key: other.to_string(),
                        },
                    });
                }
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every knob against the range Knative allows (and Zeroflow's own).
    pub fn validate(&self) -> Result<(), Error> {
        fn bad(key: &'static str, value: impl std::fmt::Display, allowed: &str) -> Error {
            Error::Invalid {
                key,
                value: value.to_string(),
                allowed: allowed.to_string(),
            }
        }
        let c = self;
        let floats = [
            ("panic-window-percentage", c.panic_window_percentage),
            ("panic-threshold-percentage", c.panic_threshold_percentage),
            ("max-scale-up-rate", c.max_scale_up_rate),
            ("max-scale-down-rate", c.max_scale_down_rate),
            (
                "container-concurrency-target-percentage",
                c.container_concurrency_target_percentage,
            ),
            (
                "container-concurrency-target-default",
                c.container_concurrency_target_default,
            ),
            (
                "requests-per-second-target-default",
                c.requests_per_second_target_default,
            ),
            ("target-burst-capacity", c.target_burst_capacity),
            ("activator-capacity", c.activator_capacity),
        ];
        // Checked first so that the range checks below can use plain comparisons.
        if let Some((key, v)) = floats.into_iter().find(|(_, v)| !v.is_finite()) {
            return Err(bad(key, v, "a finite number"));
        }
        if c.tick_interval.is_zero() {
            return Err(bad("tick-interval", dur(c.tick_interval), "> 0s"));
        }
        if c.stable_window < WINDOW_MIN || c.stable_window > WINDOW_MAX {
            return Err(bad("stable-window", dur(c.stable_window), "in [6s, 1h]"));
        }
        if c.stable_window.subsec_nanos() != 0 {
            return Err(bad("stable-window", dur(c.stable_window), "whole seconds"));
        }
        if !(1.0..=100.0).contains(&c.panic_window_percentage) {
            return Err(bad(
                "panic-window-percentage",
                c.panic_window_percentage,
                "in [1, 100]",
            ));
        }
        if !(110.0..=1000.0).contains(&c.panic_threshold_percentage) {
            return Err(bad(
                "panic-threshold-percentage",
                c.panic_threshold_percentage,
                "in [110, 1000]",
            ));
        }
        if c.max_scale_up_rate <= 1.0 {
            return Err(bad("max-scale-up-rate", c.max_scale_up_rate, "> 1.0"));
        }
        if c.max_scale_down_rate <= 1.0 {
            return Err(bad("max-scale-down-rate", c.max_scale_down_rate, "> 1.0"));
        }
        if c.scale_to_zero_grace_period.is_zero() {
            return Err(bad(
                "scale-to-zero-grace-period",
                dur(c.scale_to_zero_grace_period),
                "> 0s",
            ));
        }
        if c.scale_down_delay > WINDOW_MAX || c.scale_down_delay.subsec_nanos() != 0 {
            return Err(bad(
                "scale-down-delay",
                dur(c.scale_down_delay),
                "whole seconds in [0s, 1h]",
            ));
        }
        let pct = c.container_concurrency_target_percentage;
        if pct <= 0.0 || pct > 100.0 {
            return Err(bad(
                "container-concurrency-target-percentage",
                pct,
                "in (0, 100]",
            ));
        }
        let per_replica = c.utilization() * c.container_concurrency_target_default;
        if per_replica < TARGET_MIN {
            return Err(bad(
                "container-concurrency-target-default",
                c.container_concurrency_target_default,
                "such that it times container-concurrency-target-percentage is at least 0.01",
            ));
        }
        if c.requests_per_second_target_default < TARGET_MIN {
            return Err(bad(
                "requests-per-second-target-default",
                c.requests_per_second_target_default,
                ">= 0.01",
            ));
        }
        let tbc = c.target_burst_capacity;
        if tbc < 0.0 && tbc != -1.0 {
            return Err(bad(
                "target-burst-capacity",
                tbc,
                ">= 0, or -1 for unlimited",
            ));
        }
        if c.activator_capacity < 1.0 {
            return Err(bad("activator-capacity", c.activator_capacity, ">= 1"));
        }
        if c.initial_scale == 0 && !c.allow_zero_initial_scale {
            return Err(bad(
                "initial-scale",
                c.initial_scale,
                ">= 1 (0 needs allow-zero-initial-scale: true)",
            ));
        }
        Ok(())
    }
}

fn dur(d: Duration) -> String {
    format!("{d:?}")
}

fn float(key: &str, value: &str) -> Result<f64, Error> {
    value.parse::<f64>().map_err(|_| Error::Parse {
        key: key.to_string(),
        value: value.to_string(),
        expected: "a number",
    })
}

fn integer(key: &str, value: &str) -> Result<u32, Error> {
    value.parse::<u32>().map_err(|_| Error::Parse {
        key: key.to_string(),
        value: value.to_string(),
        expected: "a non-negative integer",
    })
}

fn boolean(key: &str, value: &str) -> Result<bool, Error> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::Parse {
            key: key.to_string(),
            value: value.to_string(),
            expected: "true or false",
        }),
    }
}

/// A Go duration as Knative writes them: `60s`, `1m30s`, `500ms`, `1h`, or a bare `0`.
fn duration(key: &str, value: &str) -> Result<Duration, Error> {
    let err = || Error::Parse {
        key: key.to_string(),
        value: value.to_string(),
        expected: "a duration such as 30s, 1m30s or 500ms",
    };
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = value;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
            .ok_or_else(err)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|ch: char| ch.is_ascii_digit() || ch == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += n * secs;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| err())
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests build their Instants from one `now`
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Knative keys whose documented example value Zeroflow's default matches.
    const AGREE: &[&str] = &[
        "container-concurrency-target-percentage",
        "container-concurrency-target-default",
        "requests-per-second-target-default",
        "target-burst-capacity",
        "stable-window",
        "panic-window-percentage",
        "panic-threshold-percentage",
        "max-scale-up-rate",
        "max-scale-down-rate",
        "enable-scale-to-zero",
        "scale-to-zero-grace-period",
        "scale-to-zero-pod-retention-period",
        "activator-capacity",
        "initial-scale",
        "allow-zero-initial-scale",
        "max-scale",
        "scale-down-delay",
    ];

    /// Knative keys Zeroflow deliberately does not follow, and why.
    const DIFFER: &[(&str, &str)] = &[
        (
            "pod-autoscaler-class",
            "chosen per Executor from jcloud.autoscale.metric, not a server default",
        ),
        (
            "min-scale",
            "jcloud.autoscale.min always has a value (JCloud default 1), so no server default",
        ),
        (
            "max-scale-limit",
            "replaced by max_replicas_cap (JCloud caps at 5), which clamps instead of rejecting",
        ),
    ];

    fn knative_example() -> BTreeMap<String, String> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/data/knative/config-autoscaler.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("valid YAML");
        let example = docs[0]["data"]["_example"]
            .as_str()
            .expect("data._example is a string");
        example
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap_or_else(|| panic!("line {l:?}"));
                (k.trim().to_string(), v.trim().trim_matches('"').to_string())
            })
            .collect()
    }

    #[test]
    fn defaults_agree_with_knative() {
        let example = knative_example();
        assert!(example.len() >= AGREE.len(), "{example:?}");
        for key in example.keys() {
            let known = AGREE.contains(&key.as_str()) || DIFFER.iter().any(|(k, _)| k == key);
            assert!(
                known,
                "Knative key {key} is neither in AGREE nor in DIFFER: decide"
            );
        }
        for key in AGREE {
            let value = example
                .get(*key)
                .unwrap_or_else(|| panic!("{key} is no longer in Knative's example"));
            let parsed = AutoscalerConfig::from_knative_map(&map(&[(key, value)]))
                .unwrap_or_else(|e| panic!("{key}: {value}: {e}"));
            assert_eq!(
                parsed,
                AutoscalerConfig::default(),
                "Knative's {key}: {value:?} differs from our default"
            );
        }
        for (key, why) in DIFFER {
            let err = AutoscalerConfig::from_knative_map(&map(&[(key, "0")])).unwrap_err();
            assert!(
                matches!(err, Error::UnsupportedKey { .. }),
                "{key} ({why}): {err}"
            );
        }
        let d = AutoscalerConfig::default();
        assert_eq!(
            d.tick_interval,
            Duration::from_secs(2),
            "Knative's fixed tick"
        );
        assert_eq!(d.max_replicas_cap, 5, "JCloud's cap");
        assert!((d.utilization() - 0.7).abs() < 1e-12);
        d.validate().expect("defaults are valid");
    }

    #[test]
    fn errors_name_key_value_and_range() {
        let err = AutoscalerConfig::from_knative_map(&map(&[("panic-window-percentage", "0.5")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "panic-window-percentage = 0.5: must be in [1, 100]"
        );
        let err = AutoscalerConfig::from_knative_map(&map(&[("stable-window", "2s")])).unwrap_err();
        assert_eq!(err.to_string(), "stable-window = 2s: must be in [6s, 1h]");
        let err =
            AutoscalerConfig::from_knative_map(&map(&[("max-scale-down-rate", "1")])).unwrap_err();
        assert!(err.to_string().contains("max-scale-down-rate = 1"), "{err}");
        let err = AutoscalerConfig::from_knative_map(&map(&[("target-burst-capacity", "-2")]))
            .unwrap_err();
        assert!(err.to_string().contains("-1 for unlimited"), "{err}");
        let err = AutoscalerConfig::from_knative_map(&map(&[("initial-scale", "0")])).unwrap_err();
        assert!(err.to_string().starts_with("initial-scale = 0"), "{err}");
        let err = AutoscalerConfig::from_knative_map(&map(&[("panick-window", "1")])).unwrap_err();
        assert_eq!(
            err,
            Error::UnknownKey {
                key: "panick-window".into()
            }
        );
        let err =
            AutoscalerConfig::from_knative_map(&map(&[("stable-window", "sixty")])).unwrap_err();
        assert!(err.to_string().contains("stable-window"), "{err}");
        assert!(err.to_string().contains("sixty"), "{err}");
    }

    #[test]
    fn parses_knative_forms() {
        let c = AutoscalerConfig::from_knative_map(&map(&[
            ("_example", "ignored"),
            ("container-concurrency-target-percentage", "0.5"),
            ("stable-window", "1m30s"),
            ("tick-interval", "500ms"),
            ("enable-scale-to-zero", "False"),
            ("initial-scale", "0"),
            ("allow-zero-initial-scale", "true"),
            ("target-burst-capacity", "-1"),
            ("max-replicas-cap", "0"),
        ]))
        .unwrap();
        assert_eq!(c.container_concurrency_target_percentage, 50.0);
        assert_eq!(c.stable_window, Duration::from_secs(90));
        assert_eq!(c.tick_interval, Duration::from_millis(500));
        assert!(!c.enable_scale_to_zero);
        assert_eq!(c.initial_scale, 0);
        assert_eq!(c.target_burst_capacity, -1.0);
        assert_eq!(c.max_replicas_cap, 0);
    }
}
