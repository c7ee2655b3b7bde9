//! Authorization in the adapters: each handler asks whether the call's
//! token may touch the keys or prefix it names, before doing anything. With
//! authentication off every call may do everything.

use std::collections::HashMap;

use tonic::{Code, Request, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::status::ERROR_DOMAIN;
use crate::auth::{Access, Principal};
use crate::server::auth_layer::CallIdentity;

fn principal<T>(request: &Request<T>) -> Result<Option<&Principal>, Status> {
    match request.extensions().get::<CallIdentity>() {
        Some(CallIdentity::Anyone) => Ok(None),
        Some(CallIdentity::Token(principal)) => Ok(Some(principal)),
        // Every call passes the authentication layer; a call that did not is
        // refused rather than trusted.
        None => Err(Status::permission_denied("the call was not authenticated")),
    }
}

fn denied(principal: &Principal, access: Access, what: String, index: Option<usize>) -> Status {
    let mut metadata = HashMap::new();
    metadata.insert("token".to_string(), principal.name.clone());
    metadata.insert("access".to_string(), access.verb().to_string());
    if let Some(index) = index {
        metadata.insert("index".to_string(), index.to_string());
    }
    let granted = principal
        .prefixes()
        .iter()
        .map(|prefix| format!("{prefix:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    Status::with_error_details(
        Code::PermissionDenied,
        format!(
            "token {:?} may not {} {what} (its prefixes: {})",
            principal.name,
            access.verb(),
            if granted.is_empty() {
                "none".to_string()
            } else {
                granted
            }
        ),
        ErrorDetails::with_error_info("NOT_GRANTED", ERROR_DOMAIN, metadata),
    )
}

/// `key` must be granted for `access`.
pub fn authorize_key<T>(request: &Request<T>, access: Access, key: &str) -> Result<(), Status> {
    match principal(request)? {
        Some(principal) if !principal.may(access, key) => {
            Err(denied(principal, access, format!("key {key:?}"), None))
        }
        _ => Ok(()),
    }
}

/// Every key of a batch must be granted for `access`; the first that is not
/// fails the whole call (nothing is read or written), naming its index.
pub fn authorize_keys<'a, T>(
    request: &Request<T>,
    access: Access,
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<(), Status> {
    let Some(principal) = principal(request)? else {
        return Ok(());
    };
    for (index, key) in keys.into_iter().enumerate() {
        if !principal.may(access, key) {
            return Err(denied(
                principal,
                access,
                format!("key {key:?}"),
                Some(index),
            ));
        }
    }
    Ok(())
}

/// Every key under `prefix` must be granted for `access` (a listing or a
/// purge), so no key outside the grant is ever returned or touched.
pub fn authorize_prefix<T>(
    request: &Request<T>,
    access: Access,
    prefix: &str,
) -> Result<(), Status> {
    let Some(principal) = principal(request)? else {
        return Ok(());
    };
    if principal.may_all_under(access, prefix) {
        return Ok(());
    }
    Err(denied(
        principal,
        access,
        format!("every key under the prefix {prefix:?}"),
        None,
    ))
}

/// The call's token must hold the admin permission.
pub fn authorize_admin<T>(request: &Request<T>) -> Result<(), Status> {
    let Some(principal) = principal(request)? else {
        return Ok(());
    };
    if principal.is_admin() {
        return Ok(());
    }
    let mut metadata = HashMap::new();
    metadata.insert("token".to_string(), principal.name.clone());
    Err(Status::with_error_details(
        Code::PermissionDenied,
        format!(
            "token {:?} may not call AdminService (it lacks the admin permission)",
            principal.name
        ),
        ErrorDetails::with_error_info("NOT_GRANTED", ERROR_DOMAIN, metadata),
    ))
}
