//! End-to-end tests of the `ctl` binary: usage errors (exit 2), `ERROR` lines (exit 1), the
//! client store commands, and the network commands against a fake controller over real TLS.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use assert_cmd::Command;
use predicates::prelude::*;
use starling_proto::controller::controller_server::{Controller, ControllerServer};
use starling_proto::controller::*;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

mod support;
use support::World;

const TOKEN: &str = "tok-123";

/// `ctl` with a fresh store and no selection env vars leaking in from the caller.
fn ctl(data: &Path) -> Command {
    let mut cmd = Command::cargo_bin("ctl").unwrap();
    cmd.env("CTL_DATA", data)
        .env_remove("CTL_CONTROLLER")
        .env_remove("CTL_MODEL");
    cmd
}

fn registration(name: &str, endpoints: &[String], ca_cert: &str, token: &str) -> String {
    let endpoints: String = endpoints.iter().map(|e| format!("  - {e}\n")).collect();
    let ca: String = ca_cert.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "name: {name}\nuuid: uuid-{name}\napi-endpoints:\n{endpoints}ca-cert: |\n{ca}cloud: localhost\nregion: default\nversion: 0.1.0\nuser: admin\ntoken: {token}\n"
    )
}

fn register(data: &Path, name: &str, endpoints: &[String], ca_cert: &str, token: &str) {
    let file = data.join(format!("{name}.reg.yaml"));
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(&file, registration(name, endpoints, ca_cert, token)).unwrap();
    ctl(data)
        .arg("register")
        .arg(&file)
        .assert()
        .success()
        .stdout(format!("Controller \"{name}\" registered.\n"));
}

/// A CA and a node certificate for 127.0.0.1 and localhost, as PEM.
struct Pki {
    ca_cert: String,
    node_cert: String,
    node_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let node_key = KeyPair::generate().unwrap();
    let node = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&node_key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    Pki {
        ca_cert: ca.pem(),
        node_cert: node.pem(),
        node_key: node_key.serialize_pem(),
    }
}

/// A fake controller: checks the bearer token and answers from memory.
#[derive(Default, Clone)]
struct FakeController {
    config: Arc<Mutex<BTreeMap<String, String>>>,
    set_calls: Arc<Mutex<Vec<SetControllerConfigRequest>>>,
    last_local: Arc<Mutex<Option<bool>>>,
    /// Models and what is in them, for the model-scoped commands.
    world: Arc<Mutex<World>>,
}

fn check_auth<T>(request: &Request<T>) -> Result<(), Status> {
    let header = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if header != Some(&format!("Bearer {TOKEN}")) {
        return Err(Status::unauthenticated("invalid token"));
    }
    Ok(())
}

#[tonic::async_trait]
impl Controller for FakeController {
    // `..Default::default()` keeps these literals compiling when the proto gains fields.
    #[allow(clippy::needless_update)]
    async fn show_controller(
        &self,
        request: Request<ShowControllerRequest>,
    ) -> Result<Response<ControllerInfo>, Status> {
        check_auth(&request)?;
        let member = |id: u64, state: &str| Member {
            id,
            address: format!("127.0.0.1:{}", 17070 + id),
            role: "voter".into(),
            state: state.into(),
            term: 2,
            applied_index: 10,
            matched_index: None,
            version: "0.2.0".into(),
            ..Default::default()
        };
        Ok(Response::new(ControllerInfo {
            name: "alpha".into(),
            uuid: "uuid-alpha".into(),
            version: "0.2.0".into(),
            cloud: "localhost".into(),
            region: "default".into(),
            api_endpoints: vec!["127.0.0.1:17071".into(), "127.0.0.1:17072".into()],
            leader_id: Some(1),
            members: vec![member(1, "leader"), member(2, "follower")],
            term: 2,
            ca_cert: String::new(),
            ..Default::default()
        }))
    }

    async fn get_controller_config(
        &self,
        request: Request<GetControllerConfigRequest>,
    ) -> Result<Response<ControllerConfigResponse>, Status> {
        check_auth(&request)?;
        *self.last_local.lock().unwrap() = Some(request.get_ref().local);
        Ok(Response::new(ControllerConfigResponse {
            values: self.config.lock().unwrap().clone(),
            applied_index: 5,
        }))
    }

    async fn set_controller_config(
        &self,
        request: Request<SetControllerConfigRequest>,
    ) -> Result<Response<SetControllerConfigResponse>, Status> {
        check_auth(&request)?;
        let request = request.into_inner();
        self.config.lock().unwrap().extend(request.values.clone());
        self.set_calls.lock().unwrap().push(request);
        Ok(Response::new(SetControllerConfigResponse { log_index: 6 }))
    }

    async fn add_node(
        &self,
        request: Request<AddNodeRequest>,
    ) -> Result<Response<AddNodeResponse>, Status> {
        check_auth(&request)?;
        let request = request.into_inner();
        let files = BTreeMap::from([
            (
                "node.yaml".to_string(),
                format!("address: {}\n", request.address).into_bytes(),
            ),
            ("tls/node.key".to_string(), b"KEY".to_vec()),
        ]);
        Ok(Response::new(AddNodeResponse { node_id: 4, files }))
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        check_auth(&request)?;
        if request.get_ref().node_id == 9 {
            return Err(Status::not_found("node 9 is not a member"));
        }
        Ok(Response::new(RemoveNodeResponse {}))
    }

    async fn add_model(
        &self,
        request: Request<AddModelRequest>,
    ) -> Result<Response<ModelInfo>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .add_model(request.into_inner())
            .map(Response::new)
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        check_auth(&request)?;
        let models = self.world.lock().unwrap().list_models();
        Ok(Response::new(ListModelsResponse { models }))
    }

    async fn show_model(&self, request: Request<ModelRef>) -> Result<Response<ModelInfo>, Status> {
        check_auth(&request)?;
        let world = self.world.lock().unwrap();
        let model = world.model(Some(request.get_ref()))?;
        Ok(Response::new(world.info(model)))
    }

    async fn destroy_model(
        &self,
        request: Request<DestroyModelRequest>,
    ) -> Result<Response<DestroyModelResponse>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .destroy_model(request.into_inner())?;
        Ok(Response::new(DestroyModelResponse {}))
    }

    async fn add_machine(
        &self,
        request: Request<AddMachineRequest>,
    ) -> Result<Response<AddMachineResponse>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .add_machine(request.into_inner())
            .map(Response::new)
    }

    async fn remove_machine(
        &self,
        request: Request<RemoveMachineRequest>,
    ) -> Result<Response<RemoveMachineResponse>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .remove_machine(request.into_inner())?;
        Ok(Response::new(RemoveMachineResponse {}))
    }

    async fn upload_charm(
        &self,
        request: Request<Streaming<CharmChunk>>,
    ) -> Result<Response<UploadCharmResponse>, Status> {
        check_auth(&request)?;
        let mut stream = request.into_inner();
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.message().await? {
            chunks.push(chunk);
        }
        self.world.lock().unwrap().upload(chunks).map(Response::new)
    }

    type DownloadCharmStream = tokio_stream::Iter<std::vec::IntoIter<Result<CharmChunk, Status>>>;

    async fn download_charm(
        &self,
        request: Request<DownloadCharmRequest>,
    ) -> Result<Response<Self::DownloadCharmStream>, Status> {
        check_auth(&request)?;
        let world = self.world.lock().unwrap();
        let digest = &request.get_ref().digest;
        let blob = world
            .blobs
            .get(digest)
            .ok_or_else(|| Status::not_found(format!("charm {digest} not found")))?;
        let chunk = CharmChunk {
            digest: digest.clone(),
            size: blob.len() as u64,
            offset: 0,
            data: blob.clone(),
        };
        Ok(Response::new(tokio_stream::iter(vec![Ok(chunk)])))
    }

    async fn deploy(
        &self,
        request: Request<DeployRequest>,
    ) -> Result<Response<DeployResponse>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .deploy(request.into_inner())
            .map(Response::new)
    }

    async fn add_unit(
        &self,
        request: Request<AddUnitRequest>,
    ) -> Result<Response<AddUnitResponse>, Status> {
        check_auth(&request)?;
        let r = request.into_inner();
        let units =
            self.world
                .lock()
                .unwrap()
                .add_units(r.model.as_ref(), &r.application, &r.to)?;
        Ok(Response::new(AddUnitResponse { units }))
    }

    async fn remove_unit(
        &self,
        request: Request<RemoveUnitRequest>,
    ) -> Result<Response<RemoveUnitResponse>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .remove_units(request.into_inner())?;
        Ok(Response::new(RemoveUnitResponse {}))
    }

    async fn remove_application(
        &self,
        request: Request<RemoveApplicationRequest>,
    ) -> Result<Response<RemoveApplicationResponse>, Status> {
        check_auth(&request)?;
        let units = self
            .world
            .lock()
            .unwrap()
            .remove_application(request.into_inner())?;
        Ok(Response::new(RemoveApplicationResponse { units }))
    }

    async fn integrate(
        &self,
        request: Request<IntegrateRequest>,
    ) -> Result<Response<IntegrateResponse>, Status> {
        check_auth(&request)?;
        let relation = self.world.lock().unwrap().integrate(request.into_inner())?;
        Ok(Response::new(IntegrateResponse {
            relation: Some(relation),
        }))
    }

    async fn remove_relation(
        &self,
        request: Request<RemoveRelationRequest>,
    ) -> Result<Response<RemoveRelationResponse>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .remove_relation(request.into_inner())?;
        Ok(Response::new(RemoveRelationResponse {}))
    }

    async fn get_application_config(
        &self,
        request: Request<GetApplicationConfigRequest>,
    ) -> Result<Response<ApplicationConfig>, Status> {
        check_auth(&request)?;
        let r = request.into_inner();
        self.world
            .lock()
            .unwrap()
            .app_config(r.model.as_ref(), &r.application)
            .map(Response::new)
    }

    async fn set_application_config(
        &self,
        request: Request<SetApplicationConfigRequest>,
    ) -> Result<Response<SetApplicationConfigResponse>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .set_app_config(request.into_inner())?;
        Ok(Response::new(SetApplicationConfigResponse {}))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<FullStatus>, Status> {
        check_auth(&request)?;
        let r = request.into_inner();
        self.world
            .lock()
            .unwrap()
            .status(r.model.as_ref())
            .map(Response::new)
    }

    async fn status_log(
        &self,
        request: Request<StatusLogRequest>,
    ) -> Result<Response<StatusLogResponse>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .status_log(request.into_inner())
            .map(Response::new)
    }

    type DebugLogStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<starling_proto::model::LogRecord, Status>>>;

    async fn debug_log(
        &self,
        request: Request<DebugLogRequest>,
    ) -> Result<Response<Self::DebugLogStream>, Status> {
        check_auth(&request)?;
        let records = self.world.lock().unwrap().debug_log(request.into_inner())?;
        let records: Vec<_> = records.into_iter().map(Ok).collect();
        Ok(Response::new(tokio_stream::iter(records)))
    }

    async fn add_user(
        &self,
        request: Request<AddUserRequest>,
    ) -> Result<Response<AddUserResponse>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .add_user(request.into_inner())
            .map(Response::new)
    }

    async fn set_model_access(
        &self,
        request: Request<SetModelAccessRequest>,
    ) -> Result<Response<SetModelAccessResponse>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .set_access(request.into_inner())?;
        Ok(Response::new(SetModelAccessResponse {}))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if header == TOKEN {
            return Ok(Response::new(WhoAmIResponse {
                user: "admin".into(),
                controller_access: "superuser".into(),
            }));
        }
        let world = self.world.lock().unwrap();
        match world.users.iter().find(|(_, u)| u.token == header) {
            Some((name, user)) => Ok(Response::new(WhoAmIResponse {
                user: name.clone(),
                controller_access: user.access.clone(),
            })),
            None => Err(Status::unauthenticated("invalid token")),
        }
    }

    async fn create_backup(
        &self,
        _request: Request<CreateBackupRequest>,
    ) -> Result<Response<BackupInfo>, Status> {
        Err(Status::unimplemented(
            "the fake controller keeps no backups",
        ))
    }

    async fn list_backups(
        &self,
        _request: Request<ListBackupsRequest>,
    ) -> Result<Response<ListBackupsResponse>, Status> {
        Ok(Response::new(ListBackupsResponse::default()))
    }

    type DownloadBackupStream = Self::DownloadCharmStream;

    async fn download_backup(
        &self,
        _request: Request<DownloadBackupRequest>,
    ) -> Result<Response<Self::DownloadBackupStream>, Status> {
        Err(Status::not_found("the fake controller keeps no backups"))
    }

    async fn restore_backup(
        &self,
        _request: Request<RestoreBackupRequest>,
    ) -> Result<Response<RestoreBackupResponse>, Status> {
        Err(Status::unimplemented("the fake controller cannot restore"))
    }

    async fn get_model_config(
        &self,
        request: Request<GetModelConfigRequest>,
    ) -> Result<Response<ModelConfig>, Status> {
        check_auth(&request)?;
        let r = request.into_inner();
        self.world
            .lock()
            .unwrap()
            .model_config(r.model.as_ref())
            .map(Response::new)
    }

    async fn set_model_config(
        &self,
        request: Request<SetModelConfigRequest>,
    ) -> Result<Response<SetModelConfigResponse>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .set_model_config(request.into_inner())?;
        Ok(Response::new(SetModelConfigResponse {}))
    }

    async fn migrate(
        &self,
        request: Request<MigrateRequest>,
    ) -> Result<Response<MigrateResponse>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .migrate(request.into_inner())
            .map(Response::new)
    }

    async fn abort_migration(
        &self,
        request: Request<AbortMigrationRequest>,
    ) -> Result<Response<AbortMigrationResponse>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .abort_migration(request.into_inner())
            .map(Response::new)
    }

    async fn migration_status(
        &self,
        request: Request<MigrationStatusRequest>,
    ) -> Result<Response<MigrationInfo>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .migration_status(request.into_inner())
            .map(Response::new)
    }

    async fn end_log_transfer(
        &self,
        request: Request<EndLogTransferRequest>,
    ) -> Result<Response<EndLogTransferResponse>, Status> {
        check_auth(&request)?;
        self.world
            .lock()
            .unwrap()
            .end_log_transfer(request.into_inner())
            .map(Response::new)
    }
}

/// A running fake controller; dropped with the runtime it runs on.
struct FakeServer {
    addr: SocketAddr,
    ca_cert: String,
    state: FakeController,
    _runtime: tokio::runtime::Runtime,
}

fn fake_server() -> FakeServer {
    let pki = pki();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let state = FakeController::default();
    *state.world.lock().unwrap() = World::new();
    let service = ControllerServer::new(state.clone());
    let identity = Identity::from_pem(&pki.node_cert, &pki.node_key);
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(service)
            .serve_with_incoming(incoming);
        tokio::spawn(server);
        addr
    });
    FakeServer {
        addr,
        ca_cert: pki.ca_cert,
        state,
        _runtime: runtime,
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    ctl(dir.path()).assert().code(2);
    ctl(dir.path()).arg("no-such-command").assert().code(2);
    ctl(dir.path())
        .args(["controllers", "--format", "xml"])
        .assert()
        .code(2);
    ctl(dir.path())
        .args(["remove-node", "not-a-number"])
        .assert()
        .code(2);
    ctl(dir.path())
        .args(["add-node", "--address", "h:1"])
        .assert()
        .code(2);
    // Forms that clap cannot see are still usage errors.
    ctl(dir.path())
        .args(["controller-config", "a", "b=1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot mix KEY and KEY=VALUE"));
    ctl(dir.path())
        .args(["controller-config", "a", "b"])
        .assert()
        .code(2);
}

#[test]
fn unknown_controller_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    ctl(dir.path())
        .args(["show-controller", "nope"])
        .assert()
        .code(1)
        .stdout("")
        .stderr("ERROR controller \"nope\" not found\n");
    ctl(dir.path())
        .args(["controller-config", "-c", "nope"])
        .assert()
        .code(1)
        .stderr("ERROR controller \"nope\" not found\n");
    ctl(dir.path())
        .args(["unregister", "nope"])
        .assert()
        .code(1)
        .stderr("ERROR controller \"nope\" not found\n");
    ctl(dir.path())
        .arg("show-controller")
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with("ERROR no controller selected"));
}

#[test]
fn register_list_switch_unregister() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ctl");
    let ca = pki().ca_cert;
    register(&data, "alpha", &["127.0.0.1:17071".into()], &ca, TOKEN);
    register(
        &data,
        "beta",
        &["127.0.0.1:17081".into(), "127.0.0.1:17082".into()],
        &ca,
        TOKEN,
    );

    // Registering again needs --replace.
    let file = data.join("beta.reg.yaml");
    ctl(&data)
        .arg("register")
        .arg(&file)
        .assert()
        .code(1)
        .stderr("ERROR controller \"beta\" already exists; use --replace to overwrite it\n");
    ctl(&data)
        .arg("register")
        .arg(&file)
        .arg("--replace")
        .assert()
        .success();

    ctl(&data).arg("controllers").assert().success().stdout(
        "Controller  Model       User   Access     Cloud/Region       Nodes  Version\n\
         alpha       controller  admin  superuser  localhost/default      1  0.1.0\n\
         beta*       controller  admin  superuser  localhost/default      2  0.1.0\n",
    );
    let out = ctl(&data)
        .args(["controllers", "--format", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["current-controller"], "beta");
    assert_eq!(
        v["controllers"]["alpha"]["api-endpoints"][0],
        "127.0.0.1:17071"
    );
    assert_eq!(
        v["controllers"]["alpha"]["current-model"],
        "admin/controller"
    );

    ctl(&data)
        .arg("switch")
        .assert()
        .success()
        .stdout("beta:admin/controller\n");
    ctl(&data)
        .args(["switch", "alpha"])
        .assert()
        .success()
        .stdout("")
        .stderr("beta:admin/controller -> alpha:admin/controller\n");
    ctl(&data)
        .args(["switch", "nope"])
        .assert()
        .code(1)
        .stderr("ERROR \"nope\" is not the name of a model or controller\n");

    // -o writes the output to a file.
    let out_file = dir.path().join("out.yaml");
    ctl(&data)
        .args(["controllers", "--format", "yaml", "-o"])
        .arg(&out_file)
        .assert()
        .success()
        .stdout("");
    assert!(std::fs::read_to_string(&out_file)
        .unwrap()
        .contains("current-controller: alpha"));

    ctl(&data).args(["unregister", "alpha"]).assert().success();
    ctl(&data)
        .arg("switch")
        .assert()
        .code(1)
        .stderr("ERROR no currently specified model\n");
    ctl(&data).args(["switch", "beta:"]).assert().success();
    ctl(&data)
        .arg("switch")
        .assert()
        .success()
        .stdout("beta:admin/controller\n");

    for file in ["controllers.yaml", "accounts.yaml", "models.yaml"] {
        let text = std::fs::read_to_string(data.join(file)).unwrap();
        assert!(!text.contains("alpha"), "{file}: {text}");
    }
}

#[test]
fn unreachable_endpoints_name_every_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let endpoints = [closed_port(), closed_port()];
    register(dir.path(), "alpha", &endpoints, &pki().ca_cert, TOKEN);
    let want = format!(
        "ERROR cannot connect to controller \"alpha\": tried {}, {}: ",
        endpoints[0], endpoints[1]
    );
    ctl(dir.path())
        .arg("show-controller")
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::starts_with(want))
        .stderr(predicate::function(|s: &str| s.lines().count() == 1));
}

#[test]
fn show_controller_fails_over_to_a_live_endpoint() {
    let server = fake_server();
    let dir = tempfile::tempdir().unwrap();
    register(
        dir.path(),
        "alpha",
        &[closed_port(), server.addr.to_string()],
        &server.ca_cert,
        TOKEN,
    );
    let out = ctl(dir.path())
        .args(["show-controller", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["alpha"]["leader"], 1);
    assert_eq!(v["alpha"]["members"][1]["state"], "follower");
    assert_eq!(v["alpha"]["members"][0]["applied-index"], 10);
    // The default format is YAML.
    ctl(dir.path())
        .arg("show-controller")
        .assert()
        .success()
        .stdout(predicate::str::starts_with("alpha:\n"));
    // What the controller reported is kept for `ctl controllers`.
    ctl(dir.path())
        .args(["controllers", "--format", "json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"agent-version\": \"0.2.0\""));
}

#[test]
fn wrong_token_is_an_authentication_error() {
    let server = fake_server();
    let dir = tempfile::tempdir().unwrap();
    register(
        dir.path(),
        "alpha",
        &[server.addr.to_string()],
        &server.ca_cert,
        "wrong",
    );
    ctl(dir.path())
        .arg("show-controller")
        .assert()
        .code(1)
        .stderr("ERROR authentication failed for controller \"alpha\": invalid token\n");
}

#[test]
fn wrong_ca_fails_to_connect() {
    let server = fake_server();
    let dir = tempfile::tempdir().unwrap();
    register(
        dir.path(),
        "alpha",
        &[server.addr.to_string()],
        &pki().ca_cert,
        TOKEN,
    );
    ctl(dir.path())
        .arg("show-controller")
        .assert()
        .code(1)
        .stderr(predicate::str::starts_with(
            "ERROR cannot connect to controller \"alpha\"",
        ));
}

#[test]
fn controller_config_get_set_and_local() {
    let server = fake_server();
    let dir = tempfile::tempdir().unwrap();
    register(
        dir.path(),
        "alpha",
        &[server.addr.to_string()],
        &server.ca_cert,
        TOKEN,
    );
    ctl(dir.path())
        .args(["controller-config", "b=2", "a=x=y"])
        .assert()
        .success()
        .stdout("");
    {
        let calls = server.state.set_calls.lock().unwrap();
        assert_eq!(calls.len(), 1, "all values in one call");
        assert_eq!(calls[0].values.len(), 2);
        assert!(uuid::Uuid::parse_str(&calls[0].request_id).is_ok());
    }
    ctl(dir.path())
        .args(["controller-config", "a"])
        .assert()
        .success()
        .stdout("x=y\n");
    ctl(dir.path())
        .args(["controller-config", "nope"])
        .assert()
        .code(1)
        .stderr("ERROR key \"nope\" not found in the config of controller \"alpha\"\n");
    ctl(dir.path())
        .args(["controller-config"])
        .assert()
        .success()
        .stdout("Attribute  Value\na          x=y\nb          2\n");
    assert_eq!(*server.state.last_local.lock().unwrap(), Some(false));
    ctl(dir.path())
        .args([
            "controller-config",
            "--local",
            "--format",
            "json",
            "--endpoint",
        ])
        .arg(server.addr.to_string())
        .assert()
        .success()
        .stdout("{\n  \"a\": \"x=y\",\n  \"b\": \"2\"\n}\n");
    assert_eq!(*server.state.last_local.lock().unwrap(), Some(true));
}

#[test]
fn add_and_remove_node() {
    let server = fake_server();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ctl");
    register(
        &data,
        "alpha",
        &[server.addr.to_string()],
        &server.ca_cert,
        TOKEN,
    );
    let node_dir = dir.path().join("node4");
    ctl(&data)
        .args([
            "add-node",
            "-c",
            "alpha",
            "--address",
            "127.0.0.1:17074",
            "--http-address",
            "127.0.0.1:18074",
            "--data-dir",
        ])
        .arg(&node_dir)
        .assert()
        .success()
        .stdout(format!(
            "Node 4 added to controller \"alpha\".\nstart it with: ctld run --data-dir {}\n",
            node_dir.display()
        ));
    assert_eq!(
        std::fs::read_to_string(node_dir.join("node.yaml")).unwrap(),
        "address: 127.0.0.1:17074\n"
    );
    // Not into a dir that has files.
    ctl(&data)
        .args([
            "add-node",
            "--address",
            "h:1",
            "--http-address",
            "h:2",
            "--data-dir",
        ])
        .arg(&node_dir)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not empty"));

    ctl(&data).args(["remove-node", "2"]).assert().success();
    ctl(&data)
        .args(["remove-node", "9"])
        .assert()
        .code(1)
        .stderr("ERROR node 9 is not a member\n");
}

#[test]
fn ctl_controller_env_selects_like_c() {
    let server = fake_server();
    let dir = tempfile::tempdir().unwrap();
    register(
        dir.path(),
        "alpha",
        &[server.addr.to_string()],
        &server.ca_cert,
        TOKEN,
    );
    register(dir.path(), "beta", &[closed_port()], &server.ca_cert, TOKEN);
    // beta is current and unreachable; CTL_CONTROLLER picks alpha.
    ctl(dir.path())
        .env("CTL_CONTROLLER", "alpha")
        .args(["controller-config"])
        .assert()
        .success();
    ctl(dir.path())
        .env("CTL_CONTROLLER", "gamma")
        .args(["controller-config"])
        .assert()
        .code(1)
        .stderr("ERROR controller \"gamma\" not found\n");
    // -c beats the env var.
    ctl(dir.path())
        .env("CTL_CONTROLLER", "beta")
        .args(["controller-config", "-c", "alpha"])
        .assert()
        .success();
    // CTL_MODEL forbids switching, as JUJU_MODEL does.
    ctl(dir.path())
        .env("CTL_MODEL", "controller")
        .args(["switch", "alpha"])
        .assert()
        .code(1)
        .stderr(
            "ERROR cannot switch when CTL_MODEL is overriding the model (set to \"controller\")\n",
        );
}

// --- Models and what is in them -----------------------------------------------------------------

/// A fake controller registered as `alpha` in a fresh store; the store dir is `dir/ctl`.
fn registered() -> (FakeServer, tempfile::TempDir, std::path::PathBuf) {
    let server = fake_server();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ctl");
    register(
        &data,
        "alpha",
        &[server.addr.to_string()],
        &server.ca_cert,
        TOKEN,
    );
    (server, dir, data)
}

/// Runs `ctl ARGS` and returns stdout, failing the test with stderr if it failed.
fn ok(data: &Path, args: &[&str]) -> String {
    let out = ctl(data).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(data: &Path, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.extend(["--format", "json"]);
    serde_json::from_str(&ok(data, &args)).unwrap()
}

fn charm_dir(name: &str) -> String {
    format!("{}/../scripts/charms/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn add_model_models_show_model_destroy_model() {
    let (server, _dir, data) = registered();
    // `models` lists what the controller has and refreshes models.yaml.
    insta::assert_snapshot!("models_before", ok(&data, &["models"]));
    let models = std::fs::read_to_string(data.join("models.yaml")).unwrap();
    assert!(models.contains("uuid-model-controller"), "{models}");

    ctl(&data)
        .args(["add-model", "web", "--config", "a=b", "--region", "east"])
        .assert()
        .success()
        .stdout("")
        .stderr("Added 'web' model on localhost/east for user 'admin'\n");
    assert_eq!(
        server.state.world.lock().unwrap().models["web"]
            .model
            .config["a"],
        "b"
    );
    assert_eq!(ok(&data, &["switch"]), "alpha:admin/web\n");
    ctl(&data)
        .args(["add-model", "web"])
        .assert()
        .code(1)
        .stderr("ERROR model \"admin/web\" already exists\n");
    ctl(&data).args(["add-model", "a/b"]).assert().code(2);
    ctl(&data)
        .args(["add-model", "x", "--config", "novalue"])
        .assert()
        .code(2);

    insta::assert_snapshot!("models_after", ok(&data, &["models"]));
    insta::assert_snapshot!("models_yaml", ok(&data, &["models", "--format", "yaml"]));
    let v = json(&data, &["models"]);
    assert_eq!(v["current-model"], "web");
    let web = &v["models"][1];
    assert_eq!(web["name"], "admin/web");
    assert_eq!(web["short-name"], "web");
    assert_eq!(web["model-uuid"], "uuid-model-web");
    assert_eq!(web["controller-name"], "alpha");
    assert_eq!(web["life"], "alive");
    assert_eq!(web["status"]["current"], "available");
    for key in ["migration", "migration-start", "migration-end"] {
        assert!(
            web["status"].as_object().unwrap().contains_key(key),
            "{key}"
        );
    }

    // show-model: the current model by default, YAML by default.
    insta::assert_snapshot!("show_model_yaml", ok(&data, &["show-model"]));
    let v = json(&data, &["show-model", "controller"]);
    assert_eq!(v["controller"]["name"], "admin/controller");
    assert_eq!(v["controller"]["ownership-epoch"], 1);
    assert_eq!(v["controller"]["users"]["admin"]["access"], "admin");
    ctl(&data)
        .args(["show-model", "web", "-m", "controller"])
        .assert()
        .code(2);
    ctl(&data)
        .args(["show-model", "nope"])
        .assert()
        .code(1)
        .stderr("ERROR model \"admin/nope\" not found\n");

    // destroy-model asks first; without a terminal it needs -y.
    ctl(&data)
        .args(["destroy-model", "web"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("pass -y"));
    assert!(server
        .state
        .world
        .lock()
        .unwrap()
        .models
        .contains_key("web"));
    ok(&data, &["destroy-model", "web", "-y"]);
    assert!(!server
        .state
        .world
        .lock()
        .unwrap()
        .models
        .contains_key("web"));
    let models = std::fs::read_to_string(data.join("models.yaml")).unwrap();
    assert!(!models.contains("admin/web"), "{models}");
    ctl(&data)
        .args(["destroy-model", "web", "--no-prompt"])
        .assert()
        .code(1)
        .stderr("ERROR model \"admin/web\" not found\n");
}

#[test]
fn machines_deploy_config_relations_and_status() {
    let (server, dir, data) = registered();
    ok(&data, &["add-model", "web"]);
    let out = ctl(&data).arg("add-machine").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "0\n");
    let path = data.join("agents/alpha/uuid-model-web/machine-0.yaml");
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!("agent config written to {}\n", path.display())
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("credential: secret-0"));
    let file = dir.path().join("m1.yaml");
    ctl(&data)
        .args(["add-machine", "--agent-config"])
        .arg(&file)
        .assert()
        .success()
        .stdout("1\n");
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("machine-id: \"1\""));
    ok(&data, &["add-machine"]);

    // --to pins one unit per machine and must match -n; a missing charm directory is reported
    // before the placement is looked at.
    let counter = charm_dir("counter");
    ctl(&data)
        .args(["deploy", &counter, "-n", "3", "--to", "0,1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "-n 3 needs 3 machines in --to, got 2",
        ));
    ctl(&data)
        .args(["deploy", "/nonexistent/charm", "-n", "3", "--to", "0,1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not a directory"));

    ctl(&data)
        .args([
            "deploy",
            &counter,
            "-n",
            "2",
            "--to",
            "0,1",
            "--config",
            "interval=3",
        ])
        .assert()
        .success()
        .stdout("")
        .stderr("");
    ok(&data, &["deploy", &charm_dir("db"), "--to", "2"]);
    ok(&data, &["deploy", &charm_dir("web"), "front", "--to", "2"]);
    // Without --to, the controller spreads -n units (default 1) over the machines.
    ok(&data, &["deploy", &counter, "spread", "-n", "2"]);
    {
        let world = server.state.world.lock().unwrap();
        let deploy = &world.deploys[0];
        assert_eq!(deploy.application, "counter");
        assert_eq!(deploy.to, ["0", "1"]);
        assert_eq!(deploy.num_units, 0);
        assert_eq!(deploy.config["interval"], "3");
        assert!(uuid::Uuid::parse_str(&deploy.request_id).is_ok());
        assert_eq!(world.deploys[2].application, "front");
        let spread = &world.deploys[3];
        assert_eq!(spread.application, "spread");
        assert!(spread.to.is_empty());
        assert_eq!(spread.num_units, 2);
    }
    ok(&data, &["remove-application", "spread", "-y"]);
    ok(&data, &["add-unit", "counter", "--to", "2,2"]);
    ctl(&data)
        .args(["add-unit", "counter", "-n", "0"])
        .assert()
        .code(2);
    ctl(&data)
        .args(["add-unit", "counter", "--to", "9"])
        .assert()
        .code(1)
        .stderr("ERROR machine 9 not found\n");
    ok(&data, &["integrate", "front", "db"]);
    ok(&data, &["integrate", "front:db", "db:db"]);
    ok(&data, &["remove-relation", "front:db", "db"]);
    ok(&data, &["integrate", "front", "db:db"]);
    ctl(&data)
        .args(["integrate", "front:", "db"])
        .assert()
        .code(2);

    insta::assert_snapshot!("status_tabular", ok(&data, &["status"]));
    insta::assert_snapshot!("status_yaml", ok(&data, &["status", "--format", "yaml"]));
    let v = json(&data, &["status"]);
    assert_eq!(v["model"]["name"], "web");
    assert_eq!(v["model"]["controller"], "alpha");
    assert_eq!(v["model"]["model-status"]["current"], "available");
    assert_eq!(v["machines"]["0"]["agent-status"]["current"], "started");
    let app = &v["applications"]["counter"];
    assert_eq!(app["scale"], 4);
    assert_eq!(app["charm"], "counter");
    assert_eq!(app["units"]["counter/0"]["leader"], true);
    assert_eq!(app["units"]["counter/3"]["machine"], "2");
    assert_eq!(
        app["units"]["counter/1"]["workload-status"]["current"],
        "waiting"
    );
    assert_eq!(v["relations"][0]["provider"], "db:db");

    // config: all, one value alone, set.
    insta::assert_snapshot!("config_tabular", ok(&data, &["config", "counter"]));
    insta::assert_snapshot!(
        "config_yaml",
        ok(&data, &["config", "front", "--format", "yaml"])
    );
    assert_eq!(ok(&data, &["config", "counter", "interval"]), "3\n");
    assert_eq!(ok(&data, &["config", "front", "port"]), "0\n");
    assert_eq!(ok(&data, &["config", "front", "port=8080", "x=y=z"]), "");
    assert_eq!(ok(&data, &["config", "front", "port"]), "8080\n");
    let v = json(&data, &["config", "front"]);
    assert_eq!(v["settings"]["port"]["source"], "user");
    assert_eq!(v["settings"]["x"]["value"], "y=z");
    ctl(&data)
        .args(["config", "front", "nope"])
        .assert()
        .code(1)
        .stderr("ERROR key \"nope\" not found in the config of application \"front\"\n");
    ctl(&data)
        .args(["config", "front", "a", "b=1"])
        .assert()
        .code(2);

    // A unit's status log: its agent and workload entries in a table, or a list of
    // {time, type, status, message}.
    let text = ok(&data, &["show-status-log", "counter/0"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].starts_with("Time") && lines[0].contains("Type"),
        "{text}"
    );
    assert!(
        lines[1].contains("juju-unit") && lines[1].contains("idle"),
        "{text}"
    );
    assert!(
        lines[2].contains("workload") && lines[2].contains("active"),
        "{text}"
    );
    let v = json(&data, &["show-status-log", "counter/0"]);
    assert_eq!(v[1]["type"], "workload");
    assert_eq!(v[1]["status"], "active");
    assert_eq!(v[1]["message"], "");
    assert!(v[1]["time"].as_str().unwrap().ends_with('Z'), "{v}");
    ctl(&data)
        .args(["show-status-log", "counter/9"])
        .assert()
        .code(1)
        .stderr("ERROR counter/9 not found\n");

    // Removal.
    ok(&data, &["remove-unit", "counter/3", "counter/2"]);
    ctl(&data).args(["remove-unit", "counter"]).assert().code(2);
    ctl(&data)
        .args(["remove-machine", "1"])
        .assert()
        .code(1)
        .stderr("ERROR machine 1 has units; use --force\n");
    ok(&data, &["remove-machine", "1", "--force"]);
    let v = json(&data, &["status"]);
    assert_eq!(v["applications"]["counter"]["scale"], 1);
    assert!(v["machines"]["1"].is_null());

    // remove-application asks first; without a terminal it needs -y and changes nothing.
    ctl(&data)
        .args(["remove-application", "counter"])
        .assert()
        .code(1)
        .stderr(
            "ERROR removing application \"counter\" needs confirmation: pass -y (--no-prompt) \
             when stdin is not a terminal\n",
        );
    assert_eq!(
        json(&data, &["status"])["applications"]["counter"]["scale"],
        1
    );
    ok(&data, &["remove-application", "counter", "-y"]);
    let v = json(&data, &["status"]);
    assert!(v["applications"]["counter"].is_null(), "{v}");
    ctl(&data)
        .args(["remove-application", "counter", "--no-prompt"])
        .assert()
        .code(1)
        .stderr("ERROR application \"counter\" not found\n");
}

#[test]
fn deploy_packs_deterministically_and_uploads_big_charms_in_chunks() {
    let (server, dir, data) = registered();
    ok(&data, &["add-model", "big"]);
    let charm = dir.path().join("big");
    std::fs::create_dir_all(&charm).unwrap();
    std::fs::write(charm.join("metadata.yaml"), "name: big\ncommand: true\n").unwrap();
    // 1.5 MiB that gzip cannot shrink (xorshift).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..3 * 512 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(charm.join("blob.bin"), &noise).unwrap();
    let charm = charm.to_str().unwrap();
    ok(&data, &["deploy", charm, "-n", "0"]);
    ok(&data, &["deploy", charm, "again", "-n", "0"]);
    let world = server.state.world.lock().unwrap();
    assert_eq!(world.uploads.len(), 2);
    let sizes = &world.uploads[0];
    assert!(sizes.len() >= 2, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 1024 * 1024), "{sizes:?}");
    assert_eq!(sizes[0], 1024 * 1024);
    // The same directory packs to the same blob.
    assert_eq!(world.uploads[0], world.uploads[1]);
    assert_eq!(world.deploys[0].charm_digest, world.deploys[1].charm_digest);
    assert_eq!(world.blobs.len(), 1);
    assert!(world.deploys[0].to.is_empty());
}

#[test]
fn model_flag_and_env_select_controller_and_model() {
    let (alpha, _dir, data) = registered();
    let beta = fake_server();
    register(
        &data,
        "beta",
        &[beta.addr.to_string()],
        &beta.ca_cert,
        TOKEN,
    );
    // beta is current now. A model only alpha has:
    ok(&data, &["add-model", "-c", "alpha", "only-alpha"]);
    ok(&data, &["switch", "beta:controller"]);
    let name = |v: serde_json::Value| v["model"]["name"].as_str().unwrap().to_string();
    assert_eq!(
        name(json(&data, &["status", "-m", "alpha:only-alpha"])),
        "only-alpha"
    );
    assert_eq!(name(json(&data, &["status"])), "controller");
    ctl(&data)
        .args(["status", "-m", "only-alpha"])
        .assert()
        .code(1)
        .stderr("ERROR model \"admin/only-alpha\" not found\n");
    ctl(&data)
        .env("CTL_MODEL", "alpha:only-alpha")
        .args(["status", "--format", "json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"only-alpha\""));
    ctl(&data)
        .env("CTL_CONTROLLER", "alpha")
        .args(["show-model", "only-alpha"])
        .assert()
        .success();
    ctl(&data)
        .args(["status", "-m", "gamma:x"])
        .assert()
        .code(1)
        .stderr("ERROR controller \"gamma\" not found\n");
    drop(alpha);
}

#[test]
fn status_watch_is_bounded_without_a_terminal() {
    let (_server, _dir, data) = registered();
    ctl(&data)
        .args(["status", "--watch", "1s"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--watch needs --watch-count N"));
    ctl(&data)
        .args(["status", "--watch-count", "2"])
        .assert()
        .code(2);
    ctl(&data)
        .args(["status", "--watch", "0s", "--watch-count", "1"])
        .assert()
        .code(2);
    let frames = ok(&data, &["status", "--watch", "1s", "--watch-count", "2"]);
    assert_eq!(frames.matches("Model \"controller\" is empty.").count(), 2);
    insta::assert_snapshot!("status_empty_watch_frames", frames);
}

#[test]
fn debug_log_formats_and_filters() {
    let (server, _dir, data) = registered();
    insta::assert_snapshot!("debug_log_default", ok(&data, &["debug-log", "--no-tail"]));
    let last = |w: &FakeController| {
        w.world
            .lock()
            .unwrap()
            .debug_log_requests
            .last()
            .cloned()
            .unwrap()
    };
    let r = last(&server.state);
    assert!(!r.follow);
    assert_eq!(r.model.unwrap().name, "admin/controller");
    assert_eq!(
        ok(&data, &["debug-log", "--no-tail", "--level", "warning"]),
        "unit-web-0: 2023-11-14T22:13:23.000Z WARNING starling.workload restarting\n\
         unit-db-0: 2023-11-14T22:13:24.000Z ERROR starling.workload exited with 1\n"
    );
    let out = ok(
        &data,
        &[
            "debug-log",
            "--no-tail",
            "--level",
            "debug",
            "--include",
            "web/0",
        ],
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.lines().all(|l| l.starts_with("unit-web-0: ")), "{out}");
    assert_eq!(last(&server.state).include, ["unit-web-0"]);
    let out = ok(
        &data,
        &[
            "debug-log",
            "--no-tail",
            "--exclude",
            "0",
            "--exclude",
            "controller",
        ],
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(last(&server.state).exclude, ["machine-0", "controller"]);
    let out = ok(&data, &["debug-log", "--no-tail", "--tail", "1"]);
    assert_eq!(
        out,
        "controller: 2023-11-14T22:13:25.000Z INFO starling.model unit web/0 added\n"
    );
    ok(&data, &["debug-log", "--no-tail", "--replay", "-n", "1"]);
    let r = last(&server.state);
    assert!(r.replay);
    assert_eq!(r.tail, 1);
    // Following prints as records come; the fake ends the stream after the backlog.
    let out = ok(&data, &["debug-log", "--level", "ERROR"]);
    assert_eq!(
        out,
        "unit-db-0: 2023-11-14T22:13:24.000Z ERROR starling.workload exited with 1\n"
    );
    assert!(last(&server.state).follow);
    ctl(&data)
        .args(["debug-log", "--level", "loud"])
        .assert()
        .code(2);
}

#[test]
fn users_grant_revoke_login_whoami() {
    let (server, _dir, data) = registered();
    ok(&data, &["add-model", "web"]);
    insta::assert_snapshot!("whoami_admin", ok(&data, &["whoami"]));
    let v = json(&data, &["whoami"]);
    assert_eq!(v["user"], "admin");
    assert_eq!(v["controller-access"], "superuser");

    let out = ok(&data, &["add-user", "bob"]);
    assert_eq!(
        out,
        "User \"bob\" added.\nIts token is shown only this once: tok-bob\n\
         With controller \"alpha\" registered, bob logs in with:\n    \
         ctl login -c alpha --user bob --token tok-bob\n"
    );
    ok(&data, &["add-user", "carol", "--superuser"]);
    assert_eq!(
        server.state.world.lock().unwrap().users["carol"].access,
        "superuser"
    );

    ok(&data, &["grant", "bob", "write", "web"]);
    let v = json(&data, &["show-model", "web"]);
    assert_eq!(v["web"]["users"]["bob"]["access"], "write");
    // As `juju revoke`: revoking write leaves read, revoking read leaves nothing.
    ok(&data, &["revoke", "bob", "write", "alpha:web"]);
    let v = json(&data, &["show-model", "web"]);
    assert_eq!(v["web"]["users"]["bob"]["access"], "read");
    ok(&data, &["revoke", "bob", "read", "alpha:web"]);
    let v = json(&data, &["show-model", "web"]);
    assert!(v["web"]["users"]["bob"].is_null());
    {
        let world = server.state.world.lock().unwrap();
        assert_eq!(world.access_calls.len(), 3);
        let revoke = &world.access_calls[1];
        assert!(revoke.revoke);
        assert_eq!(revoke.access, starling_proto::model::Access::Write as i32);
        assert_eq!(revoke.model.as_ref().unwrap().name, "admin/web");
    }
    ctl(&data)
        .args(["revoke", "bob", "read", "web"])
        .assert()
        .code(1)
        .stderr("ERROR user \"bob\" has no access to model \"web\"\n");
    ctl(&data)
        .args(["grant", "bob", "superuser", "web"])
        .assert()
        .code(2);
    ctl(&data)
        .args(["grant", "nobody", "read", "web"])
        .assert()
        .code(1)
        .stderr("ERROR user \"nobody\" not found\n");

    // A wrong token is refused and nothing is stored.
    ctl(&data)
        .args(["login", "-c", "alpha", "--user", "bob", "--token", "nope"])
        .assert()
        .code(1)
        .stderr("ERROR authentication failed for controller \"alpha\": invalid token\n");
    ctl(&data)
        .args(["login", "--user", "carol", "--token", "tok-bob"])
        .assert()
        .code(1)
        .stderr("ERROR the token belongs to user \"bob\", not \"carol\"\n");
    assert!(std::fs::read_to_string(data.join("accounts.yaml"))
        .unwrap()
        .contains(TOKEN));
    ctl(&data)
        .args(["login", "-c", "alpha", "--user", "bob"])
        .env("CTL_TOKEN", "tok-bob")
        .assert()
        .success()
        .stdout("Logged in to controller \"alpha\" as \"bob\".\n");
    let accounts = std::fs::read_to_string(data.join("accounts.yaml")).unwrap();
    assert!(
        accounts.contains("tok-bob") && accounts.contains("user: bob"),
        "{accounts}"
    );
    let v = json(&data, &["whoami"]);
    assert_eq!(v["user"], "bob");
    assert_eq!(v["controller-access"], "login");
}

// --- Model config -----------------------------------------------------------------------------

#[test]
fn model_config_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    // Found before any store or controller is read, so no controller is needed.
    for (args, message) in [
        (
            &["model-config", "owner", "a=1"][..],
            "cannot mix KEY and KEY=VALUE",
        ),
        (
            &["model-config", "a=1", "owner"],
            "cannot mix KEY and KEY=VALUE",
        ),
        (
            &["model-config", "owner", "note"],
            "give a single KEY to print",
        ),
        (&["model-config", "=1"], "missing key in \"=1\""),
        (
            &["model-config", "a=1", "a=2"],
            "key \"a\" given more than once",
        ),
        (
            &["model-config", "owner", "--reset", "note"],
            "cannot print key \"owner\" and --reset keys in one command",
        ),
        (
            &["model-config", "a=1", "--reset", "a"],
            "key \"a\" is both set and reset",
        ),
        (&["model-config", "--reset", "a,,b"], "empty key in --reset"),
    ] {
        ctl(dir.path())
            .args(args)
            .assert()
            .code(2)
            .stdout("")
            .stderr(predicate::str::contains(message));
    }
}

#[test]
fn model_config_help_explains_free_form_keys() {
    let dir = tempfile::tempdir().unwrap();
    let help = ok(dir.path(), &["model-config", "--help"]);
    for text in [
        "free-form settings",
        "travel with it when it migrates",
        "-m, --model <[CONTROLLER:]MODEL>",
        "--reset <KEY[,KEY...]>",
        "KEY= removes KEY",
        "the value alone, for scripts",
    ] {
        assert!(help.contains(text), "{text}: {help}");
    }
    let overview = ok(dir.path(), &["--help"]);
    assert!(overview.contains("model-config"), "{overview}");
}

#[test]
fn model_config_lists_gets_and_sets() {
    let (server, _dir, data) = registered();
    ok(&data, &["add-model", "web"]);
    assert_eq!(
        ok(&data, &["model-config"]),
        "Model \"admin/web\" has no config.\n"
    );
    assert_eq!(ok(&data, &["model-config", "--format", "json"]), "{}\n");
    ctl(&data)
        .args([
            "model-config",
            "owner=ops-team",
            "note=a=b c",
            "backup.window=02:00-04:00",
        ])
        .assert()
        .success()
        .stdout("")
        .stderr("");
    {
        let world = server.state.world.lock().unwrap();
        let calls = &world.model_config_calls;
        assert_eq!(calls.len(), 1, "all values in one call");
        assert_eq!(calls[0].model.as_ref().unwrap().name, "admin/web");
        assert_eq!(calls[0].values.len(), 3);
        assert!(uuid::Uuid::parse_str(&calls[0].request_id).is_ok());
    }
    assert_eq!(
        ok(&data, &["model-config"]),
        "Key            Value\n\
         backup.window  02:00-04:00\n\
         note           a=b c\n\
         owner          ops-team\n"
    );
    assert_eq!(ok(&data, &["model-config", "owner"]), "ops-team\n");
    assert_eq!(ok(&data, &["model-config", "note"]), "a=b c\n");
    // --format does not change the value printed alone.
    assert_eq!(
        ok(&data, &["model-config", "note", "--format", "json"]),
        "a=b c\n"
    );
    let v = json(&data, &["model-config"]);
    assert_eq!(
        v,
        serde_json::json!({
            "backup.window": "02:00-04:00",
            "note": "a=b c",
            "owner": "ops-team",
        })
    );
    let yaml: BTreeMap<String, String> =
        serde_saphyr::from_str(&ok(&data, &["model-config", "--format", "yaml"])).unwrap();
    assert_eq!(yaml["note"], "a=b c");
    assert_eq!(yaml.len(), 3);
    // Setting again replaces the value, in a new call with a new request id.
    ok(&data, &["model-config", "owner=dev-team"]);
    assert_eq!(ok(&data, &["model-config", "owner"]), "dev-team\n");
    {
        let world = server.state.world.lock().unwrap();
        let calls = &world.model_config_calls;
        assert_eq!(calls.len(), 2);
        assert_ne!(calls[0].request_id, calls[1].request_id);
    }

    // -m [controller:]model and CTL_MODEL pick another model; each model has its own keys.
    ok(
        &data,
        &["model-config", "-m", "alpha:controller", "tier=infra"],
    );
    assert_eq!(
        ok(&data, &["model-config", "-m", "controller"]),
        "Key   Value\ntier  infra\n"
    );
    ctl(&data)
        .env("CTL_MODEL", "alpha:admin/controller")
        .args(["model-config", "tier"])
        .assert()
        .success()
        .stdout("infra\n");
    ctl(&data)
        .args(["model-config", "tier"])
        .assert()
        .code(1)
        .stderr("ERROR model config key \"tier\" is not set\n");
    ctl(&data)
        .args(["model-config", "-m", "nope"])
        .assert()
        .code(1)
        .stderr("ERROR model \"admin/nope\" not found\n");
}

#[test]
fn model_config_removes_with_empty_value_and_reset() {
    let (server, _dir, data) = registered();
    ok(&data, &["add-model", "web"]);
    ok(&data, &["model-config", "a=1", "b=2", "c=3", "d=4"]);
    // KEY= removes KEY; it can go with settings in the same call.
    ok(&data, &["model-config", "a=", "e=5"]);
    assert_eq!(
        ok(&data, &["model-config"]),
        "Key  Value\nb    2\nc    3\nd    4\ne    5\n"
    );
    // --reset takes a comma-separated list, may be repeated and may go with KEY=VALUE.
    ctl(&data)
        .args(["model-config", "--reset", "b,c", "--reset", "d", "f=6"])
        .assert()
        .success()
        .stdout("")
        .stderr("");
    {
        let world = server.state.world.lock().unwrap();
        let last = world.model_config_calls.last().unwrap();
        let want: BTreeMap<String, String> = [("b", ""), ("c", ""), ("d", ""), ("f", "6")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(last.values, want);
    }
    assert_eq!(ok(&data, &["model-config"]), "Key  Value\ne    5\nf    6\n");
    // Removing a key that is not set is not an error (the key is not set afterwards).
    ok(&data, &["model-config", "--reset", "e,zzz"]);
    assert_eq!(
        json(&data, &["model-config"]),
        serde_json::json!({"f": "6"})
    );
}

#[test]
fn model_config_missing_key_is_one_error_line() {
    let (_server, _dir, data) = registered();
    ok(&data, &["add-model", "web"]);
    ctl(&data)
        .args(["model-config", "owner"])
        .assert()
        .code(1)
        .stdout("")
        .stderr("ERROR model config key \"owner\" is not set\n");
    ok(&data, &["model-config", "owner=ops"]);
    ok(&data, &["model-config", "owner="]);
    ctl(&data)
        .args(["model-config", "-m", "alpha:web", "owner"])
        .assert()
        .code(1)
        .stdout("")
        .stderr("ERROR model config key \"owner\" is not set\n");
}

#[test]
fn model_config_refusals_are_printed_as_the_controller_words_them() {
    let (server, _dir, data) = registered();
    ok(&data, &["add-model", "web"]);
    ok(&data, &["model-config", "owner=ops"]);
    // The controller checks keys and values; a refused call changes nothing.
    ctl(&data)
        .args(["model-config", "note=x", "Bad_Key=1"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(
            "ERROR invalid model config key \"Bad_Key\": use 1 to 128 lowercase letters, \
             digits, '-', '.' or '_', starting with a letter or digit\n",
        );
    let big = format!("note={}", "x".repeat(4097));
    ctl(&data)
        .args(["model-config", &big])
        .assert()
        .code(1)
        .stderr(
            "ERROR the value of model config key \"note\" is 4097 bytes, at most 4096 allowed\n",
        );
    // A model locked by a migration is read-only: reads work, writes are refused.
    server
        .state
        .world
        .lock()
        .unwrap()
        .locked
        .insert("web".into(), "uuid-model-web:1".into());
    let locked = "ERROR model \"admin/web\" is locked by migration uuid-model-web:1 and is \
                  read-only until it completes or aborts\n";
    for args in [
        &["model-config", "owner=dev"][..],
        &["model-config", "--reset", "owner"],
    ] {
        ctl(&data)
            .args(args)
            .assert()
            .code(1)
            .stdout("")
            .stderr(locked);
    }
    assert_eq!(ok(&data, &["model-config"]), "Key    Value\nowner  ops\n");
}

#[test]
fn model_config_retry_after_failover_reuses_the_request_id() {
    let server = fake_server();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ctl");
    // Two endpoints of the same fake: the first answer is UNAVAILABLE, the client moves on.
    let endpoint = server.addr.to_string();
    register(
        &data,
        "alpha",
        &[endpoint.clone(), endpoint],
        &server.ca_cert,
        TOKEN,
    );
    ok(&data, &["add-model", "web"]);
    server.state.world.lock().unwrap().model_config_unavailable = 1;
    ok(&data, &["model-config", "owner=ops"]);
    {
        let world = server.state.world.lock().unwrap();
        let calls = &world.model_config_calls;
        assert_eq!(calls.len(), 2, "one refused attempt, one retry");
        assert_eq!(calls[0], calls[1], "the retry is the same request");
        assert!(uuid::Uuid::parse_str(&calls[0].request_id).is_ok());
    }
    assert_eq!(ok(&data, &["model-config", "owner"]), "ops\n");
}

// --- Migration --------------------------------------------------------------------------------

#[test]
fn migrate_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["migrate", "web"][..],
        &["migrate", "web", "beta", "--timeout", "10m"],
        &["migrate", "web", "beta", "--wait", "--timeout", "soon"],
        &["migrate", "web", "beta", "--wait", "--timeout", "0s"],
        &["migrate", "web", "beta", "--dry-run", "--wait"],
        &["migrate", "alpha:web", "beta", "-c", "beta"],
        &["migrate", "alpha:", "beta"],
        &["abort-migration"],
        &["abort-migration", "alpha:web", "-c", "beta"],
    ] {
        ctl(dir.path()).args(args).assert().code(2).stdout("");
    }
    ctl(dir.path())
        .args(["migrate", "web", "beta", "--wait", "--timeout", "soon"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid duration \"soon\""));
}

#[test]
fn migrate_help_explains_phases_and_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let help = ok(dir.path(), &["migrate", "--help"]);
    for text in [
        "--dry-run",
        "--wait",
        "--timeout <DURATION>",
        "QUIESCE",
        "ABORTDONE",
        "REAPFAILED",
        "Fix the cause and run 'ctl migrate' again",
    ] {
        assert!(help.contains(text), "{text}: {help}");
    }
    let help = ok(dir.path(), &["abort-migration", "--help"]);
    assert!(help.contains("--reason <TEXT>"), "{help}");
    assert!(help.contains("until it reaches SUCCESS"), "{help}");
}

#[test]
fn migrate_targets_must_be_usable_controllers_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    register(dir.path(), "alpha", &[closed_port()], &pki().ca_cert, TOKEN);
    ctl(dir.path())
        .args(["migrate", "web", "gamma"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(
            "ERROR target controller \"gamma\" is not in the client store: register it with \
             'ctl register FILE' first\n",
        );
    ctl(dir.path())
        .args(["migrate", "web", "alpha"])
        .assert()
        .code(1)
        .stderr(
            "ERROR the model is already on controller \"alpha\": name another controller as \
             TARGET\n",
        );
    ctl(dir.path())
        .args(["migrate", "gamma:web", "alpha"])
        .assert()
        .code(1)
        .stderr("ERROR controller \"gamma\" not found\n");
}

/// A fake `alpha` with model `web` (current), and `beta` registered but never called.
fn alpha_with_web_and_beta() -> (FakeServer, tempfile::TempDir, std::path::PathBuf) {
    let (server, dir, data) = registered();
    ok(&data, &["add-model", "web"]);
    register(&data, "beta", &[closed_port()], &pki().ca_cert, TOKEN);
    ctl(&data).args(["switch", "alpha"]).assert().success();
    (server, dir, data)
}

fn migration_info(history: &[(&str, &str, &str)]) -> MigrationInfo {
    use starling_proto::migration::PhaseChange;
    let history: Vec<PhaseChange> = history
        .iter()
        .map(|(from, to, reason)| PhaseChange {
            from: from.to_string(),
            to: to.to_string(),
            at_unix_ms: support::T0,
            reason: reason.to_string(),
        })
        .collect();
    MigrationInfo {
        migration_id: "uuid-model-web:1".into(),
        model_uuid: "uuid-model-web".into(),
        model_name: "admin/web".into(),
        target_name: "beta".into(),
        phase: history.last().unwrap().to.clone(),
        started_unix_ms: support::T0,
        history,
        initiated_by: "admin".into(),
        ..Default::default()
    }
}

const TO_DONE: [(&str, &str, &str); 7] = [
    ("PRECHECK", "QUIESCE", "prechecks passed; model locked"),
    (
        "QUIESCE",
        "IMPORT",
        "all 1 agent(s) quiesced; prechecks passed again",
    ),
    (
        "IMPORT",
        "VALIDATION",
        "controller \"beta\" imported the model (9f2c)",
    ),
    (
        "VALIDATION",
        "SUCCESS",
        "digests match and every agent validated against the target",
    ),
    (
        "SUCCESS",
        "LOGTRANSFER",
        "controller \"beta\" activated the model at epoch 2",
    ),
    ("LOGTRANSFER", "REAP", "log transferred through 12"),
    (
        "REAP",
        "DONE",
        "the source's copy of the model was deleted; the redirect remains",
    ),
];

#[test]
fn migrate_dry_run_lists_every_failed_precheck() {
    let (server, _dir, data) = alpha_with_web_and_beta();
    ctl(&data)
        .args(["migrate", "web", "beta", "--dry-run"])
        .assert()
        .success()
        .stdout(
            "Prechecks passed: model \"alpha:admin/web\" can migrate to controller \"beta\" now. \
             Nothing was changed.\n",
        );
    server.state.world.lock().unwrap().precheck_failures = vec![
        "controller \"beta\" runs 0.1.0, older than 0.2.0".into(),
        "user \"bob\" does not exist on controller \"beta\"".into(),
    ];
    ctl(&data)
        .args(["migrate", "web", "beta", "--dry-run"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(
            "ERROR migration prechecks failed:\n  \
             - controller \"beta\" runs 0.1.0, older than 0.2.0\n  \
             - user \"bob\" does not exist on controller \"beta\"\n",
        );
    // A real run is refused by the controller, whose message is printed as it is.
    ctl(&data)
        .args(["migrate", "web", "beta"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(
            "ERROR migration prechecks failed: controller \"beta\" runs 0.1.0, older than \
             0.2.0; user \"bob\" does not exist on controller \"beta\"\n",
        );
    let world = server.state.world.lock().unwrap();
    assert_eq!(world.migrate_calls.len(), 3);
    assert!(world.migrate_calls[0].dry_run);
    assert!(!world.migrate_calls[2].dry_run);
}

#[test]
fn migrate_hands_the_target_from_the_store_to_the_source() {
    let (server, _dir, data) = alpha_with_web_and_beta();
    ctl(&data)
        .args(["migrate", "web", "beta"])
        .assert()
        .success()
        .stdout("Migration started with ID \"uuid-model-web:1\"\n")
        .stderr("");
    // The same with the source named either way.
    ok(&data, &["migrate", "alpha:web", "beta"]);
    ok(&data, &["migrate", "web", "beta", "-c", "alpha"]);
    let world = server.state.world.lock().unwrap();
    assert_eq!(world.migrate_calls.len(), 3);
    let store = std::fs::read_to_string(data.join("controllers.yaml")).unwrap();
    for call in &world.migrate_calls {
        assert_eq!(call.model.as_ref().unwrap().name, "admin/web");
        let target = call.target.as_ref().unwrap();
        assert_eq!(target.name, "beta");
        assert_eq!(target.controller_uuid, "uuid-beta");
        assert_eq!(target.token, TOKEN);
        assert_eq!(target.endpoints.len(), 1);
        assert!(store.contains(&target.endpoints[0]));
        assert!(target.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(
            target.ca_fingerprint,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                target.ca_cert.as_bytes()
            ))
        );
    }
}

#[test]
fn migrate_wait_follows_the_migration_to_done() {
    let (server, _dir, data) = alpha_with_web_and_beta();
    let mut importing = migration_info(&TO_DONE[..2]);
    importing.activity = "importing model".into();
    importing.bytes_sent = 1_200_000;
    importing.bytes_total = 3_400_000;
    importing.records_total = 10;
    importing.agents_total = 1;
    importing.agents_acked = 1;
    let mut done = migration_info(&TO_DONE);
    done.ended_unix_ms = Some(support::NOW);
    server.state.world.lock().unwrap().migration_script = vec![importing, done];
    ctl(&data)
        .args(["migrate", "web", "beta", "--wait"])
        .assert()
        .success()
        .stdout(
            "Migration started with ID \"uuid-model-web:1\"\n\
             QUIESCE      prechecks passed; model locked\n\
             IMPORT       all 1 agent(s) quiesced; prechecks passed again\n  \
             importing model: 1.2 MB of 3.4 MB, 10 records; agents 1/1 acked\n\
             VALIDATION   controller \"beta\" imported the model (9f2c)\n\
             SUCCESS      digests match and every agent validated against the target\n\
             LOGTRANSFER  controller \"beta\" activated the model at epoch 2\n\
             REAP         log transferred through 12\n\
             DONE         the source's copy of the model was deleted; the redirect remains\n",
        )
        .stderr(
            "Model \"admin/web\" is on controller \"beta\" now: to use it run 'ctl switch \
             beta:web'.\n",
        );
    // The store knows where the model is now, so the hint works.
    ctl(&data)
        .args(["switch", "beta:web"])
        .assert()
        .success()
        .stderr("alpha:admin/web -> beta:admin/web\n");
    let models = std::fs::read_to_string(data.join("models.yaml")).unwrap();
    assert!(models.contains("uuid-model-web"), "{models}");
}

#[test]
fn migrate_wait_fails_when_the_migration_aborts() {
    let (server, _dir, data) = alpha_with_web_and_beta();
    let mut aborted = migration_info(&[
        ("PRECHECK", "QUIESCE", "prechecks passed; model locked"),
        (
            "QUIESCE",
            "ABORT",
            "machine(s) 0 did not acknowledge the quiesce within 60s",
        ),
        ("ABORT", "ABORTDONE", "model unlocked"),
    ]);
    aborted.abort_reason = Some("machine(s) 0 did not acknowledge the quiesce within 60s".into());
    server.state.world.lock().unwrap().migration_script = vec![aborted];
    ctl(&data)
        .args(["migrate", "web", "beta", "--wait"])
        .assert()
        .code(1)
        .stdout(
            "Migration started with ID \"uuid-model-web:1\"\n\
             QUIESCE      prechecks passed; model locked\n\
             ABORT        machine(s) 0 did not acknowledge the quiesce within 60s\n\
             ABORTDONE    model unlocked\n",
        )
        .stderr(
            "ERROR migration uuid-model-web:1 aborted: machine(s) 0 did not acknowledge the \
             quiesce within 60s\n",
        );
    // Nothing was recorded under the target.
    ctl(&data)
        .args(["switch", "beta:web"])
        .assert()
        .code(1)
        .stderr("ERROR model \"beta:admin/web\" not found\n");
}

#[test]
fn migrate_wait_gives_up_after_its_timeout_and_says_what_to_do() {
    let (server, _dir, data) = alpha_with_web_and_beta();
    server.state.world.lock().unwrap().migration_script = vec![migration_info(&TO_DONE[..2])];
    let started = std::time::Instant::now();
    ctl(&data)
        .args(["migrate", "web", "beta", "--wait", "--timeout", "1s"])
        .assert()
        .code(1)
        .stdout(
            "Migration started with ID \"uuid-model-web:1\"\n\
             QUIESCE      prechecks passed; model locked\n\
             IMPORT       all 1 agent(s) quiesced; prechecks passed again\n",
        )
        .stderr(
            "ERROR migration uuid-model-web:1 is still in IMPORT after 1s; it continues on the \
             controller: follow it with 'ctl show-model alpha:admin/web' or stop it with 'ctl \
             abort-migration alpha:admin/web'\n",
        );
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_secs(1), "{took:?}");
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
}

#[test]
fn abort_migration_reports_the_request_or_the_refusal() {
    let (server, _dir, data) = alpha_with_web_and_beta();
    ctl(&data)
        .args(["abort-migration", "web", "--reason", "wrong target"])
        .assert()
        .success()
        .stdout(
            "Abort of migration \"uuid-model-web:1\" requested (it was in IMPORT).\n\
             The model stays on controller \"alpha\"; the migration ends once the target has \
             dropped its copy (a model locked by the fence is unlocked then).\nFollow it with \
             'ctl show-model alpha:admin/web'.\n",
        );
    {
        let world = server.state.world.lock().unwrap();
        let call = &world.abort_calls[0];
        assert_eq!(call.model.as_ref().unwrap().name, "admin/web");
        assert_eq!(call.reason, "wrong target");
    }
    let refusal = "migration uuid-model-web:1 is in SUCCESS, past its point of no return: the \
                   model is active on controller \"beta\"; migrate it back from there";
    server.state.world.lock().unwrap().abort_refusal = Some(refusal.into());
    ctl(&data)
        .args(["abort-migration", "-c", "alpha", "web"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(format!("ERROR {refusal}\n"));
}

#[test]
fn end_log_transfer_sends_force_and_reason_and_prints_what_the_source_said() {
    let (server, _dir, data) = alpha_with_web_and_beta();
    ctl(&data)
        .args(["end-log-transfer", "web"])
        .assert()
        .code(1)
        .stdout("")
        .stderr("ERROR controller \"gamma\" says the migration is in LOGTRANSFER: add --force\n");
    ctl(&data)
        .args([
            "end-log-transfer",
            "alpha:web",
            "--force",
            "--reason",
            "gamma is gone",
        ])
        .assert()
        .success()
        .stdout(
            "Ended the log transfer of model \"alpha:admin/web\" from controller \"gamma\" \
             (migration \"uuid-model-web:1\"): controller \"gamma\" says the migration is in \
             LOGTRANSFER.\nRecords it had not sent are not kept; the model may migrate on.\n",
        );
    let world = server.state.world.lock().unwrap();
    let calls = &world.end_log_transfer_calls;
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].model.as_ref().unwrap().name, "admin/web");
    assert!(!calls[0].force && calls[1].force);
    assert_eq!(calls[1].reason, "gamma is gone");
}

#[test]
fn a_migrated_model_is_answered_with_the_controllers_redirect_as_is() {
    let (server, _dir, data) = alpha_with_web_and_beta();
    server
        .state
        .world
        .lock()
        .unwrap()
        .migrated
        .insert("web".into(), "beta".into());
    let redirect =
        "ERROR model \"web\" has been migrated to controller \"beta\". To access it run \
                    'ctl switch beta:web'.\n";
    for args in [
        &["show-model", "web"][..],
        &["status"],
        &["status", "--format", "json"],
    ] {
        ctl(&data)
            .args(args)
            .assert()
            .code(1)
            .stdout("")
            .stderr(redirect);
    }
}

#[test]
fn migrate_wait_rides_out_a_controller_without_a_leader() {
    let (server, _dir, data) = alpha_with_web_and_beta();
    {
        let mut world = server.state.world.lock().unwrap();
        world.migration_status_unavailable = 2;
        world.migration_script = vec![migration_info(&TO_DONE)];
    }
    let out = ctl(&data)
        .args(["migrate", "web", "beta", "--wait"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    // One line for the outage (the second failure repeats it), then the phases.
    let outage: Vec<&str> = stdout
        .lines()
        .filter(|l| l.ends_with("no leader; trying again"))
        .collect();
    assert_eq!(outage.len(), 1, "{stdout}");
    assert!(
        outage[0].starts_with("  cannot connect to controller \"alpha\": tried 127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.ends_with(
        "DONE         the source's copy of the model was deleted; the redirect remains\n"
    ));
}

#[test]
fn switch_looks_for_an_unlisted_model_on_its_controller() {
    let (_alpha, _dir, data) = registered();
    let beta = fake_server();
    register(
        &data,
        "beta",
        &[beta.addr.to_string()],
        &beta.ca_cert,
        TOKEN,
    );
    // A model that arrived on beta after the store last listed beta's models.
    beta.state
        .world
        .lock()
        .unwrap()
        .add_model(AddModelRequest {
            name: "arrived".into(),
            ..Default::default()
        })
        .unwrap();
    ctl(&data)
        .args(["switch", "beta:arrived"])
        .assert()
        .success()
        .stderr("beta:admin/controller -> beta:admin/arrived\n");
    ctl(&data)
        .args(["switch", "beta:never"])
        .assert()
        .code(1)
        .stderr("ERROR model \"beta:admin/never\" not found\n");
}
