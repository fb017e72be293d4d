//! The standard `OTEL_*` environment variables, parsed into a [`TelemetryConfig`].
//!
//! Parsing never fails: a value that cannot be used is replaced by its default and a
//! warning is kept in [`TelemetryConfig::warnings`] (printed once, after logging is set
//! up).

use std::fmt;

/// How spans are sent to the collector (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (`grpc`, the default; port 4317 by convention).
    Grpc,
    /// OTLP protobuf over HTTP (`http/protobuf`; port 4318, path `/v1/traces`).
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// Which spans are recorded (`OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SamplerConfig {
    AlwaysOn,
    AlwaysOff,
    /// Root spans are sampled with this probability.
    TraceIdRatio(f64),
    /// Follow the parent's decision; roots as `root` says (the default is
    /// `parentbased_always_on`).
    ParentBased(RootSampler),
}

/// The root sampler of [`SamplerConfig::ParentBased`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RootSampler {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

impl fmt::Display for SamplerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SamplerConfig::AlwaysOn => f.write_str("always_on"),
            SamplerConfig::AlwaysOff => f.write_str("always_off"),
            SamplerConfig::TraceIdRatio(r) => write!(f, "traceidratio({r})"),
            SamplerConfig::ParentBased(RootSampler::AlwaysOn) => f.write_str("parentbased_always_on"),
            SamplerConfig::ParentBased(RootSampler::AlwaysOff) => f.write_str("parentbased_always_off"),
            SamplerConfig::ParentBased(RootSampler::TraceIdRatio(r)) => write!(f, "parentbased_traceidratio({r})"),
        }
    }
}

/// Everything the exporter setup reads from the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryConfig {
    /// The URL spans are sent to; `None` disables exporting (nothing is sent, nothing
    /// is started). For `http/protobuf` it already ends in `/v1/traces`.
    pub endpoint: Option<String>,
    pub protocol: Protocol,
    /// `OTEL_SERVICE_NAME`, else `service.name` of `OTEL_RESOURCE_ATTRIBUTES`, else the
    /// program's default.
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES` as `(key, value)`, `service.name` excluded, in order.
    pub resource_attributes: Vec<(String, String)>,
    pub sampler: SamplerConfig,
    /// Problems found while parsing; each is printed once by [`crate::init`].
    pub warnings: Vec<String>,
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT`: the base URL of the collector.
pub const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the full URL for traces (used as is).
pub const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
pub const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
pub const SAMPLER: &str = "OTEL_TRACES_SAMPLER";
pub const SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";
/// `OTEL_TRACES_EXPORTER=none` disables exporting even with an endpoint.
pub const TRACES_EXPORTER: &str = "OTEL_TRACES_EXPORTER";
/// `OTEL_SDK_DISABLED=true` disables exporting even with an endpoint.
pub const SDK_DISABLED: &str = "OTEL_SDK_DISABLED";

impl TelemetryConfig {
    /// Reads the process environment.
    pub fn from_env(default_service_name: &str) -> TelemetryConfig {
        TelemetryConfig::from_lookup(default_service_name, |k| std::env::var(k).ok())
    }

    /// Reads variables through `get` (tests pass a map). Empty values count as unset.
    pub fn from_lookup(default_service_name: &str, get: impl Fn(&str) -> Option<String>) -> TelemetryConfig {
        let get = |k: &str| get(k).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let mut warnings = Vec::new();
        let protocol = protocol_of(get(TRACES_PROTOCOL).or_else(|| get(PROTOCOL)), &mut warnings);
        let endpoint = match (get(TRACES_ENDPOINT), get(ENDPOINT)) {
            (Some(traces), _) => Some(with_scheme(&traces, TRACES_ENDPOINT, &mut warnings)),
            (None, Some(base)) => {
                let base = with_scheme(&base, ENDPOINT, &mut warnings);
                Some(match protocol {
                    Protocol::Grpc => base,
                    Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
                })
            }
            (None, None) => None,
        };
        let disabled = get(SDK_DISABLED).is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || get(TRACES_EXPORTER).is_some_and(|v| v.eq_ignore_ascii_case("none"));
        if let Some(exporter) = get(TRACES_EXPORTER).filter(|v| !v.eq_ignore_ascii_case("none"))
            && !exporter.eq_ignore_ascii_case("otlp")
        {
            warnings.push(format!("{TRACES_EXPORTER}={exporter} is not supported; using otlp"));
        }
        let endpoint = endpoint.filter(|_| !disabled);
        let (resource_attributes, resource_service_name) =
            resource_attributes_of(get(RESOURCE_ATTRIBUTES).as_deref(), &mut warnings);
        let service_name = get(SERVICE_NAME).or(resource_service_name).unwrap_or_else(|| default_service_name.into());
        let sampler = sampler_of(get(SAMPLER), get(SAMPLER_ARG), &mut warnings);
        TelemetryConfig { endpoint, protocol, service_name, resource_attributes, sampler, warnings }
    }

    /// The value of resource attribute `key` from `OTEL_RESOURCE_ATTRIBUTES`.
    pub fn resource_attribute(&self, key: &str) -> Option<&str> {
        self.resource_attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// `host:port` without a scheme is taken as `http://host:port` (this build has no TLS:
/// an `https://` endpoint fails when the exporter is built, with a warning).
fn with_scheme(endpoint: &str, var: &str, warnings: &mut Vec<String>) -> String {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        endpoint.to_string()
    } else {
        warnings.push(format!("{var}={endpoint} has no scheme; using http://{endpoint}"));
        format!("http://{endpoint}")
    }
}

/// Decodes `%XX` escapes (the W3C baggage encoding `OTEL_RESOURCE_ATTRIBUTES` uses);
/// a malformed escape is kept as is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`: grpc (the default) or http/protobuf.
fn protocol_of(value: Option<String>, warnings: &mut Vec<String>) -> Protocol {
    let Some(p) = value else { return Protocol::Grpc };
    match p.to_ascii_lowercase().as_str() {
        "grpc" => Protocol::Grpc,
        "http/protobuf" => Protocol::HttpProtobuf,
        "http/json" => {
            warnings.push(format!("{PROTOCOL}=http/json is not supported; sending http/protobuf to the same endpoint"));
            Protocol::HttpProtobuf
        }
        other => {
            warnings.push(format!("{PROTOCOL}={other} is not one of grpc, http/protobuf; using grpc"));
            Protocol::Grpc
        }
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES` (`k=v,...`, percent-decoded): the attributes other than
/// `service.name`, and that one.
fn resource_attributes_of(value: Option<&str>, warnings: &mut Vec<String>) -> (Vec<(String, String)>, Option<String>) {
    let mut attributes: Vec<(String, String)> = Vec::new();
    let mut service_name = None;
    for pair in value.unwrap_or_default().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            warnings.push(format!("{RESOURCE_ATTRIBUTES}: '{pair}' is not key=value; ignored"));
            continue;
        };
        let (k, v) = (percent_decode(k.trim()), percent_decode(v.trim()));
        if k.is_empty() {
            warnings.push(format!("{RESOURCE_ATTRIBUTES}: '{pair}' has an empty key; ignored"));
        } else if k == "service.name" {
            service_name = Some(v);
        } else if let Some(existing) = attributes.iter_mut().find(|(key, _)| *key == k) {
            existing.1 = v;
        } else {
            attributes.push((k, v));
        }
    }
    (attributes, service_name)
}

/// `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
fn sampler_of(sampler: Option<String>, arg: Option<String>, warnings: &mut Vec<String>) -> SamplerConfig {
    let ratio = |warnings: &mut Vec<String>| -> f64 {
        match &arg {
            None => 1.0,
            Some(a) => match a.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => r,
                _ => {
                    warnings.push(format!("{SAMPLER_ARG}={a} is not a probability from 0 to 1; using 1.0"));
                    1.0
                }
            },
        }
    };
    let Some(s) = sampler.map(|s| s.to_ascii_lowercase()) else {
        return SamplerConfig::ParentBased(RootSampler::AlwaysOn);
    };
    match s.as_str() {
        "always_on" => SamplerConfig::AlwaysOn,
        "always_off" => SamplerConfig::AlwaysOff,
        "traceidratio" => SamplerConfig::TraceIdRatio(ratio(warnings)),
        "parentbased_always_on" => SamplerConfig::ParentBased(RootSampler::AlwaysOn),
        "parentbased_always_off" => SamplerConfig::ParentBased(RootSampler::AlwaysOff),
        "parentbased_traceidratio" => SamplerConfig::ParentBased(RootSampler::TraceIdRatio(ratio(warnings))),
        other => {
            warnings.push(format!("{SAMPLER}={other} is not supported; using parentbased_always_on"));
            SamplerConfig::ParentBased(RootSampler::AlwaysOn)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(vars: &[(&str, &str)]) -> TelemetryConfig {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        TelemetryConfig::from_lookup("raftkv-server", |k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_means_no_endpoint_and_defaults() {
        let c = parse(&[]);
        assert_eq!(c.endpoint, None);
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.service_name, "raftkv-server");
        assert!(c.resource_attributes.is_empty());
        assert_eq!(c.sampler, SamplerConfig::ParentBased(RootSampler::AlwaysOn));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn empty_values_count_as_unset() {
        let c = parse(&[(ENDPOINT, ""), (SERVICE_NAME, " "), (PROTOCOL, "")]);
        assert_eq!(c.endpoint, None);
        assert_eq!(c.service_name, "raftkv-server");
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn grpc_endpoint_is_used_as_is() {
        let c = parse(&[(ENDPOINT, "http://jaeger:4317")]);
        assert_eq!(c.endpoint.as_deref(), Some("http://jaeger:4317"));
        assert_eq!(c.protocol, Protocol::Grpc);
        let c = parse(&[(ENDPOINT, "http://jaeger:4317"), (PROTOCOL, "grpc")]);
        assert_eq!(c.endpoint.as_deref(), Some("http://jaeger:4317"));
    }

    #[test]
    fn http_protobuf_appends_the_traces_path() {
        let c = parse(&[(ENDPOINT, "http://jaeger:4318/"), (PROTOCOL, "http/protobuf")]);
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint.as_deref(), Some("http://jaeger:4318/v1/traces"));
        // The signal-specific variables win and are used as they are.
        let c = parse(&[
            (ENDPOINT, "http://ignored:4317"),
            (TRACES_ENDPOINT, "http://collector:4318/custom"),
            (PROTOCOL, "grpc"),
            (TRACES_PROTOCOL, "http/protobuf"),
        ]);
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.endpoint.as_deref(), Some("http://collector:4318/custom"));
    }

    #[test]
    fn bad_protocol_and_missing_scheme_warn() {
        let c = parse(&[(ENDPOINT, "jaeger:4317"), (PROTOCOL, "carrier-pigeon")]);
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoint.as_deref(), Some("http://jaeger:4317"));
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        let c = parse(&[(ENDPOINT, "http://c:4318"), (PROTOCOL, "http/json")]);
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.warnings.len(), 1);
    }

    #[test]
    fn exporter_can_be_disabled() {
        assert_eq!(parse(&[(ENDPOINT, "http://c:4317"), (TRACES_EXPORTER, "none")]).endpoint, None);
        assert_eq!(parse(&[(ENDPOINT, "http://c:4317"), (SDK_DISABLED, "TRUE")]).endpoint, None);
        assert!(parse(&[(ENDPOINT, "http://c:4317"), (TRACES_EXPORTER, "otlp")]).endpoint.is_some());
    }

    #[test]
    fn service_name_and_resource_attributes() {
        let c = parse(&[(
            RESOURCE_ATTRIBUTES,
            "service.name=from-attrs, service.instance.id=raftkv-1,k8s.namespace.name=db,bad,team=a%2Cb",
        )]);
        assert_eq!(c.service_name, "from-attrs");
        assert_eq!(c.resource_attribute("service.instance.id"), Some("raftkv-1"));
        assert_eq!(c.resource_attribute("k8s.namespace.name"), Some("db"));
        assert_eq!(c.resource_attribute("team"), Some("a,b"));
        assert_eq!(c.resource_attributes.len(), 3);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        // OTEL_SERVICE_NAME wins over the attribute.
        let c = parse(&[(SERVICE_NAME, "raftkv-cli"), (RESOURCE_ATTRIBUTES, "service.name=x")]);
        assert_eq!(c.service_name, "raftkv-cli");
    }

    #[test]
    fn samplers_and_their_argument() {
        let s = |name: &str, arg: Option<&str>| {
            let mut vars = vec![(SAMPLER, name)];
            if let Some(a) = arg {
                vars.push((SAMPLER_ARG, a));
            }
            parse(&vars)
        };
        assert_eq!(s("always_on", None).sampler, SamplerConfig::AlwaysOn);
        assert_eq!(s("always_off", None).sampler, SamplerConfig::AlwaysOff);
        assert_eq!(s("traceidratio", Some("0.25")).sampler, SamplerConfig::TraceIdRatio(0.25));
        assert_eq!(s("traceidratio", None).sampler, SamplerConfig::TraceIdRatio(1.0));
        assert_eq!(s("parentbased_always_on", None).sampler, SamplerConfig::ParentBased(RootSampler::AlwaysOn));
        assert_eq!(s("PARENTBASED_ALWAYS_OFF", None).sampler, SamplerConfig::ParentBased(RootSampler::AlwaysOff));
        assert_eq!(
            s("parentbased_traceidratio", Some("0.5")).sampler,
            SamplerConfig::ParentBased(RootSampler::TraceIdRatio(0.5))
        );
        let bad = s("traceidratio", Some("1.5"));
        assert_eq!(bad.sampler, SamplerConfig::TraceIdRatio(1.0));
        assert_eq!(bad.warnings.len(), 1);
        let unknown = s("jaeger_remote", None);
        assert_eq!(unknown.sampler, SamplerConfig::ParentBased(RootSampler::AlwaysOn));
        assert_eq!(unknown.warnings.len(), 1);
    }
}
