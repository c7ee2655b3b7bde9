//! What a token may do: the access a call needs, the permissions a token
//! holds, and the principal that checks a key against its grants.

use serde::Deserialize;

/// What a call does to a key or prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Get, BatchGet, List, CacheService Get...
    Read,
    /// Put, Delete, BatchWrite, cache Put/Invalidate/Purge... (Patch needs
    /// both read and write: it returns the whole value).
    Write,
}

impl Access {
    /// The verb, for messages.
    pub fn verb(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// A permission a token may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Read keys under the token's prefixes.
    Read,
    /// Write keys under the token's prefixes.
    Write,
    /// Read-only figures: AdminService `Stats`, `ListNamespaces`,
    /// `GetMigration`.
    Stats,
    /// Run batch migrations: AdminService `Migrate` (and `GetMigration`).
    Migrate,
    /// Take backups: AdminService `Backup`.
    Backup,
    /// Destroy data: AdminService `DropNamespace`.
    Drop,
    /// Deprecated: `stats`, `migrate`, `backup` and `drop` together, as the
    /// single AdminService permission of earlier versions meant; accepted
    /// so existing configurations keep working, with a warning at start.
    Admin,
}

impl Permission {
    /// The permission as configured, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Stats => "stats",
            Permission::Migrate => "migrate",
            Permission::Backup => "backup",
            Permission::Drop => "drop",
            Permission::Admin => "admin",
        }
    }

    /// What `admin` stands for.
    pub const ADMIN_PARTS: [Permission; 4] = [
        Permission::Stats,
        Permission::Migrate,
        Permission::Backup,
        Permission::Drop,
    ];
}

/// Who a call is: the name of its token and what the token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's configured name.
    pub name: String,
    pub(super) prefixes: Vec<String>,
    /// The permissions held, `admin` expanded into its parts.
    pub(super) permissions: Vec<Permission>,
}

impl Principal {
    /// Whether the token may `access` `key`.
    pub fn may(&self, access: Access, key: &str) -> bool {
        self.holds(access)
            && self
                .prefixes
                .iter()
                .any(|prefix| key.starts_with(prefix.as_str()))
    }

    /// Whether the token may `access` every key that starts with `prefix`
    /// (a listing or purge of `prefix` touches only keys it was granted).
    pub fn may_all_under(&self, access: Access, prefix: &str) -> bool {
        self.may(access, prefix)
    }

    /// Whether the token holds `permission` (`admin`: all of its parts).
    pub fn has(&self, permission: Permission) -> bool {
        match permission {
            Permission::Admin => Permission::ADMIN_PARTS
                .iter()
                .all(|part| self.permissions.contains(part)),
            other => self.permissions.contains(&other),
        }
    }

    fn holds(&self, access: Access) -> bool {
        self.has(match access {
            Access::Read => Permission::Read,
            Access::Write => Permission::Write,
        })
    }
}
