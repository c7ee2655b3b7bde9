//! The `tierkv.v1.AdminService` adapter: batch migrations and namespaces.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::auth::authorize_admin;
use super::convert::timestamp_from_millis;
use super::status::{engine_status, expected_keys_mismatch, ERROR_DOMAIN};
use crate::admin::backup::Backups;
use crate::admin::{AdminError, NamespaceAdmin};
use crate::auth::Permission;
use crate::metrics::{parse_samples, Metrics};
use crate::migrate::{MigrateError, MigrationProgress, MigrationRequest, MigrationState, Migrator};
use crate::proto::v1 as pb;
use pb::admin_service_server::AdminService as AdminServiceRpc;

/// Serves batch migrations and namespace administration over gRPC.
#[derive(Clone)]
pub struct AdminApi {
    migrator: Arc<Migrator>,
    namespaces: NamespaceAdmin,
    backups: Backups,
    metrics: Arc<std::sync::OnceLock<Metrics>>,
}

impl AdminApi {
    /// An adapter for `migrator`, `namespaces` and `backups`, serving the
    /// server's `metrics` once they are set.
    pub fn new(
        migrator: Arc<Migrator>,
        namespaces: NamespaceAdmin,
        backups: Backups,
        metrics: Arc<std::sync::OnceLock<Metrics>>,
    ) -> Self {
        Self {
            migrator,
            namespaces,
            backups,
            metrics,
        }
    }

    /// The tonic service to mount.
    pub fn into_server(self) -> pb::admin_service_server::AdminServiceServer<Self> {
        pb::admin_service_server::AdminServiceServer::new(self)
    }
}

/// Maps a migration error to a status, logging it once.
pub fn migrate_status(method: &'static str, error: MigrateError) -> Status {
    let message = error.to_string();
    let status = match error {
        MigrateError::InvalidArgument { field, description } => {
            let mut details = ErrorDetails::new();
            details.add_bad_request_violation(field, description);
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        MigrateError::AlreadyRunning { prefix } => {
            let mut info = std::collections::HashMap::new();
            info.insert("prefix".to_string(), prefix);
            let details = ErrorDetails::with_error_info("MIGRATION_RUNNING", ERROR_DOMAIN, info);
            Status::with_error_details(Code::Aborted, message, details)
        }
        MigrateError::NotFound { .. } => Status::not_found(message),
        MigrateError::ShuttingDown { .. } => Status::unavailable(message),
        MigrateError::InvalidStep { .. } | MigrateError::CorruptState { .. } => {
            tracing::error!(method, error = %message, "migration state failure");
            return Status::internal(message);
        }
        MigrateError::Engine(engine) => return engine_status(method, engine),
    };
    tracing::debug!(method, code = ?status.code(), "request rejected");
    status
}

/// Maps a namespace administration error to a status, logging it once.
pub fn admin_status(method: &'static str, error: AdminError) -> Status {
    let message = error.to_string();
    let status = match error {
        AdminError::UnknownNamespace { .. } => Status::not_found(message),
        AdminError::ExpectedKeysMismatch { prefix, actual, .. } => expected_keys_mismatch(
            message,
            &prefix,
            actual,
            &format!("the namespace holds {actual} live keys"),
        ),
        AdminError::ForceRequired { prefix, owner } => {
            let mut info = std::collections::HashMap::new();
            info.insert("prefix".to_string(), prefix.clone());
            if let Some(owner) = owner {
                info.insert("owner".to_string(), owner);
            }
            let mut details = ErrorDetails::with_error_info("FORCE_REQUIRED", ERROR_DOMAIN, info);
            details.add_precondition_failure_violation(
                "FORCE",
                prefix,
                "the default namespace and owned namespaces are dropped only with force = true",
            );
            Status::with_error_details(Code::FailedPrecondition, message, details)
        }
        AdminError::BackupsOff => Status::failed_precondition(message),
        AdminError::InvalidBackupName { .. } => {
            let mut details = ErrorDetails::new();
            details.add_bad_request_violation("name", message.clone());
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        AdminError::BackupExists { .. } => Status::already_exists(message),
        AdminError::Engine(engine) => return engine_status(method, engine),
    };
    tracing::debug!(method, code = ?status.code(), "request rejected");
    status
}

fn state_to_proto(state: MigrationState) -> pb::MigrationState {
    pb::MigrationState {
        prefix: state.prefix,
        dry_run: state.dry_run,
        scanned: state.scanned,
        migrated: state.migrated,
        already_current: state.already_current,
        failed: state.failed,
        newer_than_known: state.newer_than_known,
        skipped: state.skipped,
        checkpoint: state.checkpoint.unwrap_or_default(),
        start_time: Some(timestamp_from_millis(state.started_at_millis)),
        finish_time: state.finished_at_millis.map(timestamp_from_millis),
        done: state.done,
        running: state.running,
    }
}

fn progress_to_proto(progress: MigrationProgress) -> pb::MigrateProgress {
    pb::MigrateProgress {
        state: Some(state_to_proto(progress.state)),
        failures: progress
            .failures
            .into_iter()
            .map(|(key, reason)| pb::MigrationFailure { key, reason })
            .collect(),
        failures_not_listed: progress.failures_not_listed,
    }
}

/// The stream of a `Migrate` call.
pub type MigrateStream = Pin<Box<dyn Stream<Item = Result<pb::MigrateProgress, Status>> + Send>>;

#[tonic::async_trait]
impl AdminServiceRpc for AdminApi {
    type MigrateStream = MigrateStream;

    async fn migrate(
        &self,
        request: Request<pb::MigrateRequest>,
    ) -> Result<Response<Self::MigrateStream>, Status> {
        authorize_admin(&request, "Migrate", &[Permission::Migrate])?;
        let request = request.into_inner();
        let receiver = self
            .migrator
            .start(MigrationRequest {
                prefix: request.prefix,
                dry_run: request.dry_run,
                batch_size: request.batch_size,
                max_records_per_second: request.max_records_per_second,
            })
            .await
            .map_err(|error| migrate_status("Migrate", error))?;
        let stream = ReceiverStream::new(receiver).map(|item| {
            item.map(progress_to_proto)
                .map_err(|error| migrate_status("Migrate", error))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_migration(
        &self,
        request: Request<pb::GetMigrationRequest>,
    ) -> Result<Response<pb::MigrationState>, Status> {
        authorize_admin(
            &request,
            "GetMigration",
            &[Permission::Stats, Permission::Migrate],
        )?;
        let state = self
            .migrator
            .state(&request.into_inner().prefix)
            .await
            .map_err(|error| migrate_status("GetMigration", error))?;
        Ok(Response::new(state_to_proto(state)))
    }

    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        authorize_admin(&request, "ListNamespaces", &[Permission::Stats])?;
        let namespaces = self
            .namespaces
            .list()
            .await
            .map_err(|error| admin_status("ListNamespaces", error))?;
        Ok(Response::new(pb::ListNamespacesResponse {
            namespaces: namespaces
                .into_iter()
                .map(|namespace| pb::Namespace {
                    prefix: namespace.prefix,
                    column_family: namespace.column_family,
                    estimated_keys: namespace.estimated_keys,
                    estimated_live_bytes: namespace.estimated_live_bytes,
                    owner: namespace.owner.unwrap_or_default(),
                })
                .collect(),
        }))
    }

    async fn drop_namespace(
        &self,
        request: Request<pb::DropNamespaceRequest>,
    ) -> Result<Response<pb::DropNamespaceResponse>, Status> {
        authorize_admin(&request, "DropNamespace", &[Permission::Drop])?;
        let request = request.into_inner();
        let deleted_keys = self
            .namespaces
            .drop_namespace(&request.prefix, request.expected_keys, request.force)
            .await
            .map_err(|error| admin_status("DropNamespace", error))?;
        Ok(Response::new(pb::DropNamespaceResponse { deleted_keys }))
    }

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<pb::BackupResponse>, Status> {
        authorize_admin(&request, "Backup", &[Permission::Backup])?;
        let done = self
            .backups
            .backup(&request.into_inner().name)
            .await
            .map_err(|error| admin_status("Backup", error))?;
        Ok(Response::new(pb::BackupResponse {
            name: done.name,
            files: done.files,
            bytes: done.bytes,
            took: prost_types::Duration::try_from(done.took).ok(),
        }))
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        authorize_admin(&request, "Stats", &[Permission::Stats])?;
        let Some(metrics) = self.metrics.get() else {
            return Err(Status::unavailable("the server is still starting"));
        };
        let prefix = request.into_inner().name_prefix;
        let text = metrics.scrape().await;
        let samples = parse_samples(&text)
            .into_iter()
            .filter(|sample| sample.name.starts_with(&prefix))
            .map(|sample| pb::Sample {
                name: sample.name,
                labels: sample.labels.into_iter().collect(),
                value: sample.value,
            })
            .collect();
        Ok(Response::new(pb::StatsResponse { samples, text }))
    }
}
