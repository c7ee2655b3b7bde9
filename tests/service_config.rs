//! `deploy/grpc-service-config.json`, the gRPC service config published for
//! clients in other languages, names only methods that exist, retries only
//! reads and only on UNAVAILABLE, and covers every read RPC of this build, so
//! a renamed or added RPC cannot silently fall out of it.

use std::collections::{BTreeSet, HashMap};

use prost::Message;
use serde_json::Value;

const CONFIG: &str = include_str!("../deploy/grpc-service-config.json");

/// The read RPCs a client may retry on UNAVAILABLE, whichever of their
/// services this build has.
const READ_RPCS: &[(&str, &str)] = &[
    ("tierkv.v1.KvService", "Get"),
    ("tierkv.v1.KvService", "BatchGet"),
    ("tierkv.v1.KvService", "List"),
    ("tierkv.v1.SessionService", "Get"),
    ("tierkv.v1.CacheService", "Get"),
];

/// Every service of the descriptor set the server serves by reflection, with
/// its methods.
fn services() -> HashMap<String, BTreeSet<String>> {
    let set = prost_types::FileDescriptorSet::decode(tierkv::proto::FILE_DESCRIPTOR_SET)
        .expect("descriptor set decodes");
    let mut services = HashMap::new();
    for file in set.file {
        let package = file.package().to_string();
        for service in file.service {
            let methods = service
                .method
                .iter()
                .map(|method| method.name().to_string())
                .collect();
            services.insert(format!("{package}.{}", service.name()), methods);
        }
    }
    services
}

#[test]
fn service_config_names_existing_read_methods_only() {
    let config: Value = serde_json::from_str(CONFIG).expect("the service config is JSON");
    let services = services();
    assert!(services.contains_key("tierkv.v1.KvService"), "{services:?}");

    let mut retried = BTreeSet::new();
    let method_configs = config["methodConfig"].as_array().expect("methodConfig");
    for method_config in method_configs {
        assert!(
            method_config.get("hedgingPolicy").is_none(),
            "hedging is not enabled by default"
        );
        let names = method_config["name"].as_array().expect("name list");
        for name in names {
            let service = name["service"].as_str().expect("service");
            let methods = services
                .get(service)
                .unwrap_or_else(|| panic!("service {service} is not in the protos"));
            if let Some(method) = name.get("method").and_then(Value::as_str) {
                assert!(
                    methods.contains(method),
                    "{service}/{method} is not in the protos (renamed?)"
                );
                if method_config.get("retryPolicy").is_some() {
                    retried.insert((service.to_string(), method.to_string()));
                }
            } else {
                assert!(
                    method_config.get("retryPolicy").is_none(),
                    "a retry policy for every method of {service} would retry writes"
                );
            }
        }
        if let Some(policy) = method_config.get("retryPolicy") {
            let attempts = policy["maxAttempts"].as_u64().expect("maxAttempts");
            assert!((2..=5).contains(&attempts), "gRPC caps maxAttempts at 5");
            assert_eq!(
                policy["retryableStatusCodes"],
                serde_json::json!(["UNAVAILABLE"]),
                "only UNAVAILABLE: the request never reached storage"
            );
            for field in ["initialBackoff", "maxBackoff"] {
                let backoff = policy[field].as_str().expect(field);
                let seconds: f64 = backoff
                    .strip_suffix('s')
                    .and_then(|number| number.parse().ok())
                    .unwrap_or_else(|| panic!("{field} {backoff:?} is not a proto3 duration"));
                assert!(seconds > 0.0, "{field}");
            }
        }
    }

    let expected: BTreeSet<(String, String)> = READ_RPCS
        .iter()
        .filter(|(service, _)| services.contains_key(*service))
        .map(|(service, method)| (service.to_string(), method.to_string()))
        .collect();
    assert_eq!(
        retried, expected,
        "the retry policy covers exactly the read RPCs this build serves"
    );
}
