//! The service registry: which gRPC services the server mounts, their
//! names (for health and reflection) and their method paths (for metrics).

use std::convert::Infallible;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

/// Whether a call path is a health check or reflection: probes and tooling,
/// which authentication never refuses (load shedding counts all but
/// `Health/Check`; see `load_shed`).
pub(super) fn probe_or_tooling(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// The services this server exposes (each also has a health status).
pub const SERVICE_NAMES: &[&str] = &[
    "tierkv.v1.KvService",
    "tierkv.v1.SessionService",
    "tierkv.v1.AdminService",
    "tierkv.v1.CacheService",
];

/// The gRPC services of a server, collected with their names so that
/// registering a service is one line and health reporting follows it.
#[derive(Default)]
pub struct ServiceSet {
    pub(super) routes: RoutesBuilder,
    pub(super) names: Vec<&'static str>,
}

impl ServiceSet {
    /// Mounts a generated tonic server and reports its health by name.
    pub fn add<S>(&mut self, service: S) -> &mut Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// The names of the services added so far.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }
}

/// Every gRPC method path this server serves (`/package.Service/Method`), for
/// the RPC metrics' label set.
pub(super) fn known_method_paths() -> Vec<String> {
    use prost::Message;
    let mut paths = vec![
        "/grpc.health.v1.Health/Check".to_string(),
        "/grpc.health.v1.Health/Watch".to_string(),
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_string(),
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".to_string(),
    ];
    if let Ok(set) = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET) {
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    paths.push(format!(
                        "/{package}.{service_name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    paths
}
