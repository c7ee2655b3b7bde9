//! Authorization in the adapters: each handler asks whether the call's
//! token may touch the keys or prefix it names, before doing anything. With
//! authentication off every call may do everything. A refusal says what was
//! refused and nothing about the token: not its name, not its grant (a
//! leaked or guessed token should not learn from its failures what else it
//! could reach).

use std::collections::HashMap;

use tonic::{Request, Status};

use super::call::CallIdentity;
use super::status::not_granted;
use crate::auth::{Access, Permission, Principal};

fn principal<T>(request: &Request<T>) -> Result<Option<&Principal>, Status> {
    match request.extensions().get::<CallIdentity>() {
        Some(CallIdentity::Anyone) => Ok(None),
        Some(CallIdentity::Token(principal)) => Ok(Some(principal)),
        // Every call passes the authentication layer; a call that did not is
        // refused rather than trusted.
        None => Err(Status::permission_denied("the call was not authenticated")),
    }
}

fn denied(access: Access, what: String, index: Option<usize>) -> Status {
    let mut metadata = HashMap::new();
    metadata.insert("access".to_string(), access.verb().to_string());
    if let Some(index) = index {
        metadata.insert("index".to_string(), index.to_string());
    }
    not_granted(
        format!("this token may not {} {what}", access.verb()),
        metadata,
    )
}

/// `key` must be granted for `access`.
pub fn authorize_key<T>(request: &Request<T>, access: Access, key: &str) -> Result<(), Status> {
    match principal(request)? {
        Some(principal) if !principal.may(access, key) => {
            Err(denied(access, format!("key {key:?}"), None))
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
            return Err(denied(access, format!("key {key:?}"), Some(index)));
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
        access,
        format!("every key under the prefix {prefix:?}"),
        None,
    ))
}

/// The call's token must hold one of `permissions` to call AdminService's
/// `method`.
pub fn authorize_admin<T>(
    request: &Request<T>,
    method: &'static str,
    permissions: &[Permission],
) -> Result<(), Status> {
    let Some(principal) = principal(request)? else {
        return Ok(());
    };
    if permissions
        .iter()
        .any(|permission| principal.has(*permission))
    {
        return Ok(());
    }
    let needed = permissions
        .iter()
        .map(|permission| permission.name())
        .collect::<Vec<_>>()
        .join(" or ");
    let mut metadata = HashMap::new();
    metadata.insert("method".to_string(), method.to_string());
    metadata.insert("permission".to_string(), needed.clone());
    Err(not_granted(
        format!("this token may not call AdminService.{method}: it needs the {needed} permission"),
        metadata,
    ))
}
