//! Pure model rules: decisions about the controller's state with no I/O, no async and no
//! knowledge of sled, tokio or openraft. Callers read state, ask these rules, then write.
//! Time comes in as the command's `proposed_unix_ms`, never from a clock.

pub mod access;
pub mod agent;
pub mod charm;
pub mod controller_config;
pub mod deployment;
pub mod desired;
pub mod digest;
pub mod migration;
pub mod names;
pub mod relation;

/// What kind of refusal a `ModelError` is; the API layer maps it to a status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is malformed or names something impossible.
    InvalidArgument,
    /// Something the request names does not exist.
    NotFound,
    /// Something the request would create exists already.
    AlreadyExists,
    /// The state does not allow the change now (e.g. units still on a machine).
    FailedPrecondition,
    /// The caller lacks the access the change needs.
    PermissionDenied,
}

/// A rule a requested change breaks; the change is refused and nothing is written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A controller-config key is unknown or its value is invalid.
    #[error("{reason}")]
    InvalidConfig {
        /// The offending key.
        key: String,
        /// A sentence an operator can act on (it names the key).
        reason: String,
    },
    /// A name (model, application, unit, machine id, endpoint, user, uuid, digest, entity)
    /// is malformed.
    #[error("invalid {kind} {name:?}: {reason}")]
    InvalidName {
        /// What the name names ("model name", "unit name", ...).
        kind: &'static str,
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A request field is malformed or out of bounds.
    #[error("{reason}")]
    InvalidArgument {
        /// A sentence an operator can act on.
        reason: String,
    },
    /// The owner already has a model with that name.
    #[error("model \"{owner}/{name}\" already exists")]
    ModelExists {
        /// The model's owner.
        owner: String,
        /// The model's name.
        name: String,
    },
    /// A model with that uuid exists already.
    #[error("a model with uuid {uuid} already exists")]
    ModelUuidExists {
        /// The uuid.
        uuid: String,
    },
    /// No model with that uuid.
    #[error("model {model} not found")]
    ModelNotFound {
        /// The uuid asked for.
        model: String,
    },
    /// The controller model cannot be destroyed.
    #[error("the controller model cannot be destroyed")]
    ControllerModel,
    /// The model is locked by a migration: read-only until the migration completes or aborts.
    #[error(
        "model \"{model}\" is locked by migration {migration_id} and is read-only until it \
         completes or aborts"
    )]
    ModelLocked {
        /// The model's name.
        model: String,
        /// The migration holding the lock.
        migration_id: String,
    },
    /// The model is an import of a migration here: invisible and read-only until activated.
    #[error("model {model} is being imported by a migration and is not active yet")]
    ModelImporting {
        /// The model's uuid.
        model: String,
    },
    /// The model has migrated to another controller; this one only holds a redirect.
    #[error(
        "model \"{model}\" has been migrated to controller \"{controller}\". To access it run \
         'ctl switch {controller}:{model}'."
    )]
    ModelMigrated {
        /// The model's uuid.
        uuid: String,
        /// The model's name.
        model: String,
        /// The controller it lives on now.
        controller: String,
    },
    /// A migration rule refused the change.
    #[error(transparent)]
    Migration(#[from] migration::MigrationError),
    /// Machines remain in a model being destroyed without force.
    #[error(
        "model {model:?} still has {} machine(s) ({}); remove them first or destroy with --force",
        machines.len(),
        machines.join(", ")
    )]
    ModelHasMachines {
        /// The model's name.
        model: String,
        /// Ids of the remaining machines.
        machines: Vec<String>,
    },
    /// No machine with that id in the model.
    #[error("machine {machine} not found")]
    MachineNotFound {
        /// The machine id.
        machine: String,
    },
    /// The machine is not alive, so nothing can be placed on it.
    #[error("machine {machine} is not alive (it is {life}); units cannot be placed on it")]
    MachineNotAlive {
        /// The machine id.
        machine: String,
        /// Its life, lowercase.
        life: String,
    },
    /// Units remain on a machine being removed without force.
    #[error(
        "machine {machine} still hosts unit(s) {}; remove them first or remove the machine with --force",
        units.join(", ")
    )]
    MachineHasUnits {
        /// The machine id.
        machine: String,
        /// The units on it.
        units: Vec<String>,
    },
    /// The model already has an application with that name.
    #[error("application {application:?} already exists")]
    ApplicationExists {
        /// The application's name.
        application: String,
    },
    /// No application with that name in the model.
    #[error("application {application:?} not found")]
    ApplicationNotFound {
        /// The application's name.
        application: String,
    },
    /// No unit with that name in the model.
    #[error("unit {unit:?} not found")]
    UnitNotFound {
        /// The unit's name.
        unit: String,
    },
    /// An application has no endpoint with that name.
    #[error("application {application:?} has no endpoint {endpoint:?} (it has: {})", known.join(", "))]
    EndpointNotFound {
        /// The application.
        application: String,
        /// The endpoint asked for.
        endpoint: String,
        /// The endpoints it has.
        known: Vec<String>,
    },
    /// No pair of endpoints can be related.
    #[error("no relation can be made between {endpoint_a:?} and {endpoint_b:?}: {reason}")]
    NoMatchingRelation {
        /// The first endpoint as given.
        endpoint_a: String,
        /// The second endpoint as given.
        endpoint_b: String,
        /// Why (what each side offers).
        reason: String,
    },
    /// More than one pair of endpoints could be related.
    #[error(
        "ambiguous relation: more than one pair of endpoints matches ({}); name the endpoints explicitly",
        candidates.join("; ")
    )]
    AmbiguousRelation {
        /// The matching pairs, each as `"a:x b:y"`.
        candidates: Vec<String>,
    },
    /// The relation exists already.
    #[error("relation {relation:?} already exists")]
    RelationExists {
        /// The relation, as `"a:x b:y"`.
        relation: String,
    },
    /// No relation between those endpoints.
    #[error("no relation between {endpoint_a:?} and {endpoint_b:?}")]
    RelationNotFound {
        /// The first endpoint as given.
        endpoint_a: String,
        /// The second endpoint as given.
        endpoint_b: String,
    },
    /// A charm's metadata is missing something or malformed.
    #[error("invalid charm metadata: {reason}")]
    InvalidCharm {
        /// What is wrong, naming the key.
        reason: String,
    },
    /// A config key the application's charm does not declare.
    #[error(
        "application {application:?} has no config option {key:?} (its charm declares: {})",
        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
    )]
    UnknownConfigKey {
        /// The application.
        application: String,
        /// The key given.
        key: String,
        /// The keys the charm declares.
        known: Vec<String>,
    },
    /// No complete blob with that digest.
    #[error("blob {digest} not found; upload it first")]
    BlobNotFound {
        /// The digest.
        digest: String,
    },
    /// A chunk does not start where the staged bytes end.
    #[error(
        "blob {digest}: chunk at offset {offset} does not follow the {staged} byte(s) staged so far (chunks go in order; offset 0 restarts the upload)"
    )]
    BlobChunkOutOfOrder {
        /// The digest.
        digest: String,
        /// The chunk's offset.
        offset: u64,
        /// Bytes staged so far.
        staged: u64,
    },
    /// Nothing was staged for a blob being committed.
    #[error("blob {digest}: nothing was uploaded to commit")]
    BlobNotStaged {
        /// The digest.
        digest: String,
    },
    /// The staged bytes are not as long as the commit says.
    #[error("blob {digest}: {staged} byte(s) uploaded but the commit says {size}; upload again")]
    BlobSizeMismatch {
        /// The digest.
        digest: String,
        /// Size in the commit.
        size: u64,
        /// Bytes staged.
        staged: u64,
    },
    /// The staged bytes do not hash to the digest; the upload was discarded.
    #[error(
        "blob {expected}: uploaded bytes hash to {actual}; the upload was discarded, upload again"
    )]
    BlobDigestMismatch {
        /// The digest the upload claimed.
        expected: String,
        /// The sha256 of what was uploaded.
        actual: String,
    },
    /// A user with that name exists already.
    #[error("user {user:?} already exists")]
    UserExists {
        /// The user.
        user: String,
    },
    /// No user with that name.
    #[error("user {user:?} not found")]
    UserNotFound {
        /// The user.
        user: String,
    },
    /// The model owner's admin access is implied and cannot be changed.
    #[error("user {user:?} owns model {model:?}; the owner's admin access cannot be changed")]
    OwnerAccess {
        /// The model's name.
        model: String,
        /// The owner.
        user: String,
    },
    /// `revoke` named a user with no access to the model.
    #[error("user {user:?} has no access to model {model:?}")]
    NoModelAccess {
        /// The model's name.
        model: String,
        /// The user.
        user: String,
    },
    /// A machine agent reported about something that is not its machine or a unit on it.
    #[error("the agent of machine {machine} may not report about {entity}")]
    NotAgentEntity {
        /// The reporting machine.
        machine: String,
        /// The entity it named.
        entity: String,
    },
    /// The caller's authority was taken away (a user removed or no longer superuser, a
    /// machine removed) before its command applied.
    #[error("{caller} may no longer {what}: {reason}")]
    AuthorityRevoked {
        /// The caller ("user \"bob\"", "the agent of machine 2").
        caller: String,
        /// What it asked to do.
        what: String,
        /// What changed.
        reason: String,
    },
    /// The caller's access to the model is too low for what it asked.
    #[error("user {user:?} has {has} access to model {model:?} and may not {what} ({needed} access needed)")]
    PermissionDenied {
        /// The caller.
        user: String,
        /// The model's name.
        model: String,
        /// The access the caller has ("no" for none), lowercase.
        has: &'static str,
        /// The access needed, lowercase.
        needed: &'static str,
        /// What the caller asked to do ("deploy", "read its log").
        what: String,
    },
}

impl ModelError {
    /// The kind of refusal, for mapping to a status code.
    pub fn kind(&self) -> ErrorKind {
        use ModelError::*;
        match self {
            InvalidConfig { .. }
            | InvalidName { .. }
            | InvalidArgument { .. }
            | NoMatchingRelation { .. }
            | AmbiguousRelation { .. }
            | InvalidCharm { .. }
            | UnknownConfigKey { .. }
            | BlobSizeMismatch { .. }
            | BlobDigestMismatch { .. } => ErrorKind::InvalidArgument,
            ModelNotFound { .. }
            | ModelImporting { .. }
            | MachineNotFound { .. }
            | ApplicationNotFound { .. }
            | UnitNotFound { .. }
            | EndpointNotFound { .. }
            | RelationNotFound { .. }
            | BlobNotFound { .. }
            | UserNotFound { .. }
            | NoModelAccess { .. } => ErrorKind::NotFound,
            ModelExists { .. }
            | ModelUuidExists { .. }
            | ApplicationExists { .. }
            | RelationExists { .. }
            | UserExists { .. } => ErrorKind::AlreadyExists,
            Migration(e) => e.kind(),
            ControllerModel
            | ModelLocked { .. }
            | ModelMigrated { .. }
            | ModelHasMachines { .. }
            | MachineNotAlive { .. }
            | MachineHasUnits { .. }
            | BlobChunkOutOfOrder { .. }
            | BlobNotStaged { .. }
            | OwnerAccess { .. } => ErrorKind::FailedPrecondition,
            PermissionDenied { .. } | NotAgentEntity { .. } | AuthorityRevoked { .. } => {
                ErrorKind::PermissionDenied
            }
        }
    }

    /// An `InvalidArgument` with `reason`.
    pub fn invalid(reason: impl Into<String>) -> Self {
        ModelError::InvalidArgument {
            reason: reason.into(),
        }
    }
}
