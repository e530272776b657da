//! The client store: `controllers.yaml`, `accounts.yaml` and `models.yaml` under `$CTL_DATA`,
//! with Juju's kebab-case keys, each read-modify-write under an exclusive lock and every file
//! rewritten atomically (temp file in the same dir, fsync, rename) with mode 0600.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fs2::FileExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// File name of the controllers file.
pub const CONTROLLERS_FILE: &str = "controllers.yaml";
/// File name of the accounts file.
pub const ACCOUNTS_FILE: &str = "accounts.yaml";
/// File name of the models file.
pub const MODELS_FILE: &str = "models.yaml";
/// File name of the lock file every read-modify-write holds exclusively.
pub const LOCK_FILE: &str = ".lock";
/// The name of the model every controller has.
pub const CONTROLLER_MODEL: &str = "controller";

/// One controller as the client knows it (`controllers.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct ControllerDetails {
    /// The controller's UUID.
    pub uuid: String,
    /// Client endpoints (host:port), tried in order.
    pub api_endpoints: Vec<String>,
    /// The controller's CA certificate (PEM).
    pub ca_cert: String,
    /// The cloud the controller runs in.
    #[serde(default)]
    pub cloud: String,
    /// The cloud region.
    #[serde(default)]
    pub region: String,
    /// The version the controller last advertised.
    #[serde(default)]
    pub agent_version: String,
    /// How many nodes the controller had when last seen.
    #[serde(default)]
    pub node_count: usize,
}

/// `controllers.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct ControllersFile {
    /// Controllers by name.
    #[serde(default)]
    pub controllers: BTreeMap<String, ControllerDetails>,
    /// The current controller, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_controller: Option<String>,
}

/// The client's account on one controller (`accounts.yaml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct AccountDetails {
    /// The user name, e.g. `admin`.
    pub user: String,
    /// The bearer token sent with every call.
    pub token: String,
    /// The access level last reported, e.g. `superuser`.
    #[serde(default)]
    pub last_known_access: String,
}

/// `accounts.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct AccountsFile {
    /// Accounts by controller name.
    #[serde(default)]
    pub controllers: BTreeMap<String, AccountDetails>,
}

/// One model as the client knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct ModelDetails {
    /// The model's UUID.
    pub uuid: String,
    /// The model type; always `iaas` for now.
    #[serde(default)]
    pub model_type: String,
}

/// The models of one controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct ControllerModels {
    /// Models by qualified name (`owner/name`).
    #[serde(default)]
    pub models: BTreeMap<String, ModelDetails>,
    /// The current model (qualified), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_model: Option<String>,
}

/// `models.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub struct ModelsFile {
    /// Models by controller name.
    #[serde(default)]
    pub controllers: BTreeMap<String, ControllerModels>,
}

/// The three files together: what one locked read or read-modify-write sees.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StoreState {
    /// `controllers.yaml`.
    pub controllers: ControllersFile,
    /// `accounts.yaml`.
    pub accounts: AccountsFile,
    /// `models.yaml`.
    pub models: ModelsFile,
}

/// Qualifies a model name with `user/` unless it already has an owner.
pub fn qualify_model(user: &str, model: &str) -> String {
    if model.contains('/') {
        model.to_string()
    } else {
        format!("{user}/{model}")
    }
}

impl StoreState {
    /// The controller named `name`, or a "not found" error.
    pub fn controller(&self, name: &str) -> Result<&ControllerDetails> {
        self.controllers
            .controllers
            .get(name)
            .with_context(|| format!("controller \"{name}\" not found"))
    }

    /// The account on controller `name`, or an error.
    pub fn account(&self, name: &str) -> Result<&AccountDetails> {
        self.accounts
            .controllers
            .get(name)
            .with_context(|| format!("no account for controller \"{name}\""))
    }

    /// The user name on controller `name` (`admin` when the account is missing).
    pub fn user(&self, name: &str) -> String {
        self.accounts
            .controllers
            .get(name)
            .map(|a| a.user.clone())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "admin".to_string())
    }

    /// The current (qualified) model on controller `name`, if any.
    pub fn current_model(&self, name: &str) -> Option<&str> {
        self.models
            .controllers
            .get(name)
            .and_then(|m| m.current_model.as_deref())
    }

    /// Qualifies `model` with the user of controller `name`.
    pub fn qualified_model_name(&self, name: &str, model: &str) -> String {
        qualify_model(&self.user(name), model)
    }

    /// Whether controller `name` has the qualified model `model` in the local cache.
    pub fn has_model(&self, name: &str, model: &str) -> bool {
        self.models
            .controllers
            .get(name)
            .is_some_and(|m| m.models.contains_key(model))
    }

    /// Sets the current model of controller `name`; the model must be known locally.
    pub fn set_current_model(&mut self, name: &str, model: &str) -> Result<()> {
        let entry = self
            .models
            .controllers
            .get_mut(name)
            .filter(|m| m.models.contains_key(model))
            .with_context(|| format!("model \"{name}:{model}\" not found"))?;
        entry.current_model = Some(model.to_string());
        Ok(())
    }

    /// Records model `model` (qualified) of controller `name` with `uuid` in the local cache.
    pub fn add_model(&mut self, name: &str, model: &str, uuid: &str) -> Result<()> {
        self.controller(name)?;
        let entry = self.models.controllers.entry(name.to_string()).or_default();
        entry.models.insert(
            model.to_string(),
            ModelDetails {
                uuid: uuid.to_string(),
                model_type: "iaas".to_string(),
            },
        );
        Ok(())
    }

    /// Forgets model `model` (qualified) of controller `name`; clears the current model if it
    /// was it.
    pub fn remove_model(&mut self, name: &str, model: &str) {
        if let Some(entry) = self.models.controllers.get_mut(name) {
            entry.models.remove(model);
            if entry.current_model.as_deref() == Some(model) {
                entry.current_model = None;
            }
        }
    }

    /// Replaces the cached models of controller `name` with `models` (qualified name → uuid),
    /// as the controller listed them. The current model stays selected while it still exists.
    pub fn replace_models(&mut self, name: &str, models: BTreeMap<String, String>) -> Result<()> {
        self.controller(name)?;
        let entry = self.models.controllers.entry(name.to_string()).or_default();
        entry.models = models
            .into_iter()
            .map(|(model, uuid)| {
                let details = ModelDetails {
                    uuid,
                    model_type: "iaas".to_string(),
                };
                (model, details)
            })
            .collect();
        if let Some(current) = &entry.current_model {
            if !entry.models.contains_key(current) {
                entry.current_model = None;
            }
        }
        Ok(())
    }

    /// Sets the current controller; it must exist.
    pub fn set_current_controller(&mut self, name: &str) -> Result<()> {
        self.controller(name)?;
        self.controllers.current_controller = Some(name.to_string());
        Ok(())
    }

    /// Adds a controller, its account and its `controller` model, and makes it current.
    /// Refuses an existing name unless `replace`.
    pub fn add_controller(
        &mut self,
        name: &str,
        details: ControllerDetails,
        account: AccountDetails,
        replace: bool,
    ) -> Result<()> {
        validate_controller_name(name)?;
        if !replace && self.controllers.controllers.contains_key(name) {
            bail!("controller \"{name}\" already exists; use --replace to overwrite it");
        }
        let model_name = qualify_model(&account.user, CONTROLLER_MODEL);
        let models = ControllerModels {
            models: BTreeMap::from([(
                model_name.clone(),
                ModelDetails {
                    // Placeholder until models are listed from the controller.
                    uuid: details.uuid.clone(),
                    model_type: "iaas".to_string(),
                },
            )]),
            current_model: Some(model_name),
        };
        self.controllers
            .controllers
            .insert(name.to_string(), details);
        self.accounts.controllers.insert(name.to_string(), account);
        self.models.controllers.insert(name.to_string(), models);
        self.controllers.current_controller = Some(name.to_string());
        Ok(())
    }

    /// Removes a controller from all three files; clears the current controller if it was it.
    pub fn remove_controller(&mut self, name: &str) -> Result<()> {
        if self.controllers.controllers.remove(name).is_none() {
            bail!("controller \"{name}\" not found");
        }
        self.accounts.controllers.remove(name);
        self.models.controllers.remove(name);
        if self.controllers.current_controller.as_deref() == Some(name) {
            self.controllers.current_controller = None;
        }
        Ok(())
    }
}

/// Checks that `name` can be used as a controller name (no `:` or `/`, not empty).
pub fn validate_controller_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.contains([':', '/'])
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        bail!("invalid controller name \"{name}\"");
    }
    Ok(())
}

/// The client store in one directory.
#[derive(Debug, Clone)]
pub struct ClientStore {
    dir: PathBuf,
}

impl ClientStore {
    /// The store in `dir` (created on the first write).
    pub fn open(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The store at `$CTL_DATA`, else `$XDG_DATA_HOME/ctl`, else `~/.local/share/ctl`.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let dir = if let Some(dir) = var("CTL_DATA") {
            PathBuf::from(dir)
        } else if let Some(xdg) = var("XDG_DATA_HOME") {
            PathBuf::from(xdg).join("ctl")
        } else if let Some(home) = var("HOME") {
            PathBuf::from(home).join(".local/share/ctl")
        } else {
            bail!("cannot find the client store: set CTL_DATA or HOME");
        };
        Ok(Self::open(dir))
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads all three files under a shared lock (absent files read as empty).
    pub fn read(&self) -> Result<StoreState> {
        if !self.dir.exists() {
            return Ok(StoreState::default());
        }
        let lock = self.lock_file()?;
        lock.lock_shared()
            .with_context(|| format!("cannot lock {}", self.dir.display()))?;
        let state = self.read_unlocked();
        // Unlocking is also done by close; an explicit unlock error is not interesting.
        let _ = FileExt::unlock(&lock);
        state
    }

    /// Reads, applies `f` and writes back the files `f` changed, all under an exclusive lock.
    /// Nothing is written when `f` fails.
    pub fn update<T>(&self, f: impl FnOnce(&mut StoreState) -> Result<T>) -> Result<T> {
        self.ensure_dir()?;
        let lock = self.lock_file()?;
        lock.lock_exclusive()
            .with_context(|| format!("cannot lock {}", self.dir.display()))?;
        let before = self.read_unlocked()?;
        let mut after = before.clone();
        let out = f(&mut after)?;
        if after.controllers != before.controllers {
            self.write_file(CONTROLLERS_FILE, &after.controllers)?;
        }
        if after.accounts != before.accounts {
            self.write_file(ACCOUNTS_FILE, &after.accounts)?;
        }
        if after.models != before.models {
            self.write_file(MODELS_FILE, &after.models)?;
        }
        let _ = FileExt::unlock(&lock);
        Ok(out)
    }

    fn ensure_dir(&self) -> Result<()> {
        if !self.dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .with_context(|| format!("cannot create {}", self.dir.display()))?;
        }
        Ok(())
    }

    fn lock_file(&self) -> Result<File> {
        let path = self.dir.join(LOCK_FILE);
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    fn read_unlocked(&self) -> Result<StoreState> {
        Ok(StoreState {
            controllers: self.read_file(CONTROLLERS_FILE)?,
            accounts: self.read_file(ACCOUNTS_FILE)?,
            models: self.read_file(MODELS_FILE)?,
        })
    }

    fn read_file<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        let path = self.dir.join(name);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(T::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if text.trim().is_empty() {
            return Ok(T::default());
        }
        serde_saphyr::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))
    }

    fn write_file<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let path = self.dir.join(name);
        let text = serde_saphyr::to_string(value)
            .with_context(|| format!("cannot encode {}", path.display()))?;
        write_atomically(&path, text.as_bytes(), 0o600)
    }
}

/// Writes `bytes` to `path` through a temp file in the same directory, fsyncs it, sets `mode`,
/// renames it over `path` and fsyncs the directory.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let ctx = || format!("cannot write {}", path.display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(ctx)?;
    tmp.write_all(bytes).with_context(ctx)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .with_context(ctx)?;
    tmp.as_file().sync_all().with_context(ctx)?;
    tmp.persist(path).map_err(|e| e.error).with_context(ctx)?;
    // The rename is only durable once the directory is synced.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(ctx)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::{Arc, Barrier};

    pub(crate) fn details(uuid: &str, endpoints: &[&str]) -> ControllerDetails {
        ControllerDetails {
            uuid: uuid.to_string(),
            api_endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            ca_cert: "-----BEGIN CERTIFICATE-----\nMIIB\nabc=\n-----END CERTIFICATE-----\n"
                .to_string(),
            cloud: "localhost".to_string(),
            region: "default".to_string(),
            agent_version: "0.1.0".to_string(),
            node_count: endpoints.len(),
        }
    }

    pub(crate) fn account() -> AccountDetails {
        AccountDetails {
            user: "admin".to_string(),
            token: "s3cret".to_string(),
            last_known_access: "superuser".to_string(),
        }
    }

    #[test]
    fn empty_store_reads_as_default() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClientStore::open(dir.path().join("absent"));
        assert_eq!(store.read().unwrap(), StoreState::default());
        assert!(!dir.path().join("absent").exists(), "reads create nothing");
    }

    #[test]
    fn register_writes_three_files_0600_in_a_0700_dir() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClientStore::open(dir.path().join("ctl"));
        store
            .update(|s| {
                s.add_controller("alpha", details("u-1", &["127.0.0.1:1"]), account(), false)
            })
            .unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(store.dir()), 0o700);
        for f in [CONTROLLERS_FILE, ACCOUNTS_FILE, MODELS_FILE, LOCK_FILE] {
            assert_eq!(mode(&store.dir().join(f)), 0o600, "{f}");
        }
        let state = store.read().unwrap();
        assert_eq!(
            state.controllers.current_controller.as_deref(),
            Some("alpha")
        );
        assert_eq!(state.controller("alpha").unwrap().uuid, "u-1");
        assert_eq!(state.account("alpha").unwrap().token, "s3cret");
        assert_eq!(state.current_model("alpha"), Some("admin/controller"));
        assert!(state.has_model("alpha", "admin/controller"));
    }

    #[test]
    fn files_use_kebab_case_keys_and_round_trip_pem() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClientStore::open(dir.path());
        let d = details("u-1", &["127.0.0.1:1", "127.0.0.1:2"]);
        store
            .update(|s| s.add_controller("alpha", d.clone(), account(), false))
            .unwrap();
        let text = fs::read_to_string(dir.path().join(CONTROLLERS_FILE)).unwrap();
        for key in [
            "api-endpoints",
            "ca-cert",
            "agent-version",
            "node-count",
            "current-controller",
        ] {
            assert!(text.contains(key), "{key} missing in {text}");
        }
        let text = fs::read_to_string(dir.path().join(ACCOUNTS_FILE)).unwrap();
        assert!(text.contains("last-known-access"), "{text}");
        let text = fs::read_to_string(dir.path().join(MODELS_FILE)).unwrap();
        assert!(
            text.contains("model-type") && text.contains("current-model"),
            "{text}"
        );
        assert_eq!(store.read().unwrap().controller("alpha").unwrap(), &d);
    }

    #[test]
    fn register_refuses_existing_name_unless_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClientStore::open(dir.path());
        let add = |uuid: &str, replace| {
            store.update(|s| s.add_controller("alpha", details(uuid, &["h:1"]), account(), replace))
        };
        add("u-1", false).unwrap();
        let err = add("u-2", false).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(
            store.read().unwrap().controller("alpha").unwrap().uuid,
            "u-1"
        );
        add("u-2", true).unwrap();
        assert_eq!(
            store.read().unwrap().controller("alpha").unwrap().uuid,
            "u-2"
        );
    }

    #[test]
    fn invalid_names_are_refused() {
        let mut s = StoreState::default();
        for name in ["", "a:b", "a/b", "a b"] {
            assert!(s
                .add_controller(name, details("u", &["h:1"]), account(), false)
                .is_err());
        }
    }

    #[test]
    fn unregister_removes_from_all_files_and_clears_current() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClientStore::open(dir.path());
        store
            .update(|s| {
                s.add_controller("alpha", details("u-1", &["h:1"]), account(), false)?;
                s.add_controller("beta", details("u-2", &["h:2"]), account(), false)
            })
            .unwrap();
        store.update(|s| s.remove_controller("alpha")).unwrap();
        let state = store.read().unwrap();
        assert_eq!(
            state.controllers.current_controller.as_deref(),
            Some("beta")
        );
        assert!(state.controller("alpha").is_err());
        assert!(!state.accounts.controllers.contains_key("alpha"));
        assert!(!state.models.controllers.contains_key("alpha"));

        store.update(|s| s.remove_controller("beta")).unwrap();
        let state = store.read().unwrap();
        assert_eq!(state.controllers.current_controller, None);
        let err = store.update(|s| s.remove_controller("beta")).unwrap_err();
        assert_eq!(err.to_string(), "controller \"beta\" not found");
    }

    #[test]
    fn failed_update_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClientStore::open(dir.path());
        store
            .update(|s| s.add_controller("alpha", details("u-1", &["h:1"]), account(), false))
            .unwrap();
        let before = fs::read(dir.path().join(CONTROLLERS_FILE)).unwrap();
        let r: Result<()> = store.update(|s| {
            s.controllers.current_controller = None;
            bail!("no")
        });
        assert!(r.is_err());
        assert_eq!(fs::read(dir.path().join(CONTROLLERS_FILE)).unwrap(), before);
    }

    #[test]
    fn rewrite_is_atomic_rename_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClientStore::open(dir.path());
        store
            .update(|s| s.add_controller("alpha", details("u-1", &["h:1"]), account(), false))
            .unwrap();
        let inode = |f| fs::metadata(dir.path().join(f)).unwrap().ino();
        let before = inode(CONTROLLERS_FILE);
        store
            .update(|s| s.add_controller("beta", details("u-2", &["h:2"]), account(), false))
            .unwrap();
        assert_ne!(
            inode(CONTROLLERS_FILE),
            before,
            "rewritten by rename, not in place"
        );
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [LOCK_FILE, ACCOUNTS_FILE, CONTROLLERS_FILE, MODELS_FILE]
        );
    }

    #[test]
    fn unchanged_files_are_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClientStore::open(dir.path());
        store
            .update(|s| {
                s.add_controller("alpha", details("u-1", &["h:1"]), account(), false)?;
                s.add_controller("beta", details("u-2", &["h:2"]), account(), false)
            })
            .unwrap();
        let inode = |f| fs::metadata(dir.path().join(f)).unwrap().ino();
        let accounts = inode(ACCOUNTS_FILE);
        store.update(|s| s.set_current_controller("alpha")).unwrap();
        assert_eq!(inode(ACCOUNTS_FILE), accounts);
    }

    #[test]
    fn update_holds_an_exclusive_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = ClientStore::open(dir.path());
        store.update(|_| Ok(())).unwrap();
        // While an update runs, another open file description cannot take the lock.
        store
            .update(|_| {
                let other = File::open(dir.path().join(LOCK_FILE)).unwrap();
                assert!(other.try_lock_shared().is_err(), "lock must be exclusive");
                Ok(())
            })
            .unwrap();
        let other = File::open(dir.path().join(LOCK_FILE)).unwrap();
        other.try_lock_exclusive().expect("released after update");
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let n_threads = 8;
        let barrier = Arc::new(Barrier::new(n_threads));
        let handles: Vec<_> = (0..n_threads)
            .map(|idx| {
                let store = ClientStore::open(dir.path());
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let name = format!("c{idx}");
                    store
                        .update(|s| {
                            s.add_controller(&name, details("u", &["h:1"]), account(), false)
                        })
                        .unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let state = ClientStore::open(dir.path()).read().unwrap();
        assert_eq!(state.controllers.controllers.len(), n_threads);
        assert_eq!(state.accounts.controllers.len(), n_threads);
        assert_eq!(state.models.controllers.len(), n_threads);
    }

    #[test]
    fn set_current_model_requires_known_model() {
        let mut s = StoreState::default();
        s.add_controller("alpha", details("u", &["h:1"]), account(), false)
            .unwrap();
        assert!(s.set_current_model("alpha", "admin/nope").is_err());
        assert!(s.set_current_model("beta", "admin/controller").is_err());
        s.set_current_model("alpha", "admin/controller").unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// YAML-significant values (`null`, `yes`, `0.1`, `#`, `: `, quotes, newlines) survive
        /// a write and a read unchanged.
        #[test]
        fn store_round_trips_any_strings(
            name in "[a-z][a-z0-9-]{0,12}",
            token in "\\PC{0,40}",
            version in "(null|yes|no|~|0\\.1|1e3|[ -~]{0,12})",
            cert in "[ -~\\n]{0,200}",
            endpoints in proptest::collection::vec("[ -~]{1,20}", 1..4),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = ClientStore::open(dir.path());
            let details = ControllerDetails {
                uuid: name.clone(),
                api_endpoints: endpoints,
                ca_cert: cert,
                cloud: "null".to_string(),
                region: String::new(),
                agent_version: version,
                node_count: 3,
            };
            let account = AccountDetails { token, ..account() };
            store
                .update(|s| s.add_controller(&name, details.clone(), account.clone(), false))
                .unwrap();
            let state = store.read().unwrap();
            proptest::prop_assert_eq!(state.controller(&name).unwrap(), &details);
            proptest::prop_assert_eq!(state.account(&name).unwrap(), &account);
        }
    }

    #[test]
    fn model_cache_add_replace_remove() {
        let mut s = StoreState::default();
        s.add_controller("alpha", details("u", &["h:1"]), account(), false)
            .unwrap();
        s.add_model("alpha", "admin/web", "uuid-web").unwrap();
        s.set_current_model("alpha", "admin/web").unwrap();
        assert!(s.add_model("beta", "admin/web", "x").is_err());
        let listed = BTreeMap::from([
            ("admin/controller".to_string(), "uuid-c".to_string()),
            ("admin/web".to_string(), "uuid-web".to_string()),
        ]);
        s.replace_models("alpha", listed.clone()).unwrap();
        assert_eq!(s.current_model("alpha"), Some("admin/web"));
        assert_eq!(
            s.models.controllers["alpha"].models["admin/controller"].uuid,
            "uuid-c"
        );
        s.remove_model("alpha", "admin/web");
        assert_eq!(s.current_model("alpha"), None);
        s.add_model("alpha", "admin/gone", "g").unwrap();
        s.set_current_model("alpha", "admin/gone").unwrap();
        s.replace_models("alpha", listed).unwrap();
        assert_eq!(
            s.current_model("alpha"),
            None,
            "a model the controller no longer lists"
        );
    }

    #[test]
    fn qualify_keeps_existing_owner() {
        assert_eq!(qualify_model("admin", "m"), "admin/m");
        assert_eq!(qualify_model("admin", "bob/m"), "bob/m");
    }
}
